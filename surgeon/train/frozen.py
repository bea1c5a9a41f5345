"""A frozen embedding and LM head held in the checkpoint's narrower dtype and computed in a wider one.

The NF4 base quantizes the decoder's linear layers only; the embedding and the LM head stay float, and
peft's k-bit preparation (``prepare_model_for_kbit_training``) casts every float parameter that is not
4-bit to fp32 (as the CPU compute dtype is anyway). For a bf16 checkpoint that held both matrices at
twice their stored size: on a 128k-vocabulary model, where they are 40% of the parameters, more than
the whole NF4 base. :func:`hold_frozen` keeps them narrow (:func:`held_dtype`: the stored dtype when
its values are exactly compute-dtype values, else the compute dtype: bf16 for a bf16 checkpoint on
any device, and for any checkpoint on a GPU computing in bf16), as buffers (peft's cast passes over
buffers; neither matrix trains), and computes with them what the wide copies compute:

- the embedding gathers the rows of the batch's ids, casts only those, and runs the module's own
  forward over them with the ids renumbered (Gemma's scale included): bitwise the wide lookup;
- the head (:class:`HeldLinear`) multiplies in slices of output rows (vocabulary), each cast when it is
  used, in the forward pass and in the backward pass (the gradient with respect to its input): at
  most :data:`HEAD_SLICE_ELEMENTS` wide elements exist at once. Each logit is the wide product; the
  input gradient sums the slices' products, so it equals the wide one up to the order of the additions.

Imported only where a model is loaded (torch at the top is fine here).
"""

from __future__ import annotations

import torch

# Wide elements of one head slice cast at a time: 64 MiB of float32, the budget of a chunk of logits.
HEAD_SLICE_ELEMENTS = 16 * 2**20


def narrower(dtype: torch.dtype, wide: torch.dtype) -> bool:
    """True when every ``dtype`` value is exactly a ``wide`` value and takes fewer bytes (bf16/fp16 in fp32)."""
    return dtype != wide and torch.promote_types(dtype, wide) == wide


def held_dtype(stored: torch.dtype, compute: torch.dtype, wide: torch.dtype) -> torch.dtype | None:
    """The dtype to hold a frozen matrix stored in ``stored`` whose values are those of a cast to ``compute``
    and which computes in ``wide``: the stored dtype when the cast is exact, else ``compute``; None when
    that is not narrower than ``wide`` (then it is a plain parameter in ``compute``)."""
    dtype = stored if torch.promote_types(stored, compute) == compute else compute
    return dtype if narrower(dtype, wide) else None


def _as_buffer(module, name: str, tensor) -> None:
    module._parameters.pop(name, None)
    module.register_buffer(name, tensor)


def hold_embedding(embed, weight, dtype: torch.dtype) -> None:
    """``embed`` keeps ``weight`` as a buffer in its own dtype; its forward looks up the batch's rows, casts
    them to ``dtype`` and runs the module's own forward over them (module doc)."""
    _as_buffer(embed, "weight", weight)
    own = type(embed).forward

    def forward(input_ids):
        held, pad = embed.weight, embed.padding_idx  # padding_idx only shapes gradients, and indexes the whole matrix
        ids, local = torch.unique(input_ids, sorted=True, return_inverse=True)
        embed._buffers["weight"], embed.padding_idx = held.index_select(0, ids).to(dtype), None
        try:
            return own(embed, local)
        finally:
            embed._buffers["weight"], embed.padding_idx = held, pad

    embed.forward = forward


class _SlicedLinear(torch.autograd.Function):
    """``x @ weight.T + bias`` in ``dtype`` with ``weight`` cast ``rows`` output rows at a time (forward and
    backward); ``weight`` and ``bias`` are frozen: only ``x`` gets a gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, dtype, rows):
        ctx.save_for_backward(weight)  # the held tensor itself: no copy
        ctx.dtype, ctx.rows, ctx.x_dtype = dtype, rows, x.dtype
        x = x.to(dtype)
        out = x.new_empty((*x.shape[:-1], weight.shape[0]))
        for s in range(0, weight.shape[0], rows):
            b = bias[s:s + rows].to(dtype) if bias is not None else None
            out[..., s:s + rows] = torch.nn.functional.linear(x, weight[s:s + rows].to(dtype), b)
        return out

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        grad = grad.to(ctx.dtype)
        gx = None
        for s in range(0, weight.shape[0], ctx.rows):
            part = grad[..., s:s + ctx.rows] @ weight[s:s + ctx.rows].to(ctx.dtype)
            gx = part if gx is None else gx.add_(part)
        return gx.to(ctx.x_dtype), None, None, None, None


class HeldLinear(torch.nn.Module):
    """A frozen linear layer (the LM head) whose weight (and bias) are buffers in a narrow dtype, multiplied
    in ``dtype`` one slice of output rows at a time (module doc)."""

    def __init__(self, weight, bias, dtype: torch.dtype):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.compute_dtype = dtype
        self.rows = max(1, HEAD_SLICE_ELEMENTS // self.in_features)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x):
        return _SlicedLinear.apply(x, self.weight, self.bias, self.compute_dtype, self.rows)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, held={self.weight.dtype}, "
                f"computed in {self.compute_dtype}")


def hold_frozen(model, family, held: dict, dtype: torch.dtype) -> None:
    """Hold the embedding and/or LM head weights ``held`` (``{checkpoint name: tensor in its stored dtype}``;
    a tied head maps to the embedding's tensor) as narrow buffers computed in ``dtype`` (module doc)."""
    embed = held.get(family.embed + ".weight")
    if embed is not None:
        hold_embedding(model.get_submodule(family.embed), embed, dtype)
    weight = held.get(family.lm_head + ".weight")
    if weight is not None:
        old = model.get_submodule(family.lm_head)
        bias = old.bias.detach() if getattr(old, "bias", None) is not None else None
        model.set_submodule(family.lm_head, HeldLinear(weight, bias, dtype))
