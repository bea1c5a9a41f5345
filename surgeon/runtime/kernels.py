"""Optional CPU kernels for the runtime: every ``nn.Linear`` through oneDNN with prepacked weights.

PyTorch runs an fp32 ``nn.Linear`` on CPU through MKL's ``sgemm``, which re-packs the weight on every
call once more than one row comes in. At batch size 1 that makes checking ``g + 1`` drafted positions
cost about twice one position (SmolLM2-135M, one thread: a full-model pass over 5 positions takes
1.82x the time of one), which is exactly what speculative decoding cannot afford. oneDNN with the
weight reordered once into its blocked layout (``torch.ops.mkldnn._reorder_linear_weight``, what
``torch.compile``'s CPU freezing pass uses) streams the weight once per call whatever the row count:
both one-token decoding and multi-token verification get faster (measured: one-token steps 1.48x
faster, 5 positions for 1.21x the time of one; ``benchmarks/spec_decode.py --kernels onednn``).

:func:`pack_linears` swaps the kernel only; the model, its modules and its parameters stay as they
are (the packed weights are an extra copy of every linear weight: 538 MB for SmolLM2-135M in fp32,
its layers' 425 MB plus the 113 MB LM head, which is tied to the embedding), and
:func:`unpack_linears` puts the stock kernels back. Results differ from the stock kernels only by
floating-point summation order (about 1e-4 on SmolLM2's logits in fp32).
"""

from __future__ import annotations

import logging
import types
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import UsageError

log = logging.getLogger(__name__)

KERNELS = ("stock", "onednn")
_PACKABLE = (torch.float32, torch.bfloat16)


def _packed_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != self._surgeon_packed_dtype or x.requires_grad:  # not what was packed for: the stock kernel
        return nn.functional.linear(x, self.weight, self.bias)
    return torch.ops.mkldnn._linear_pointwise(x, self._surgeon_packed, self.bias, "none", [], "")


def is_packed(mod: nn.Module) -> bool:
    """Whether :func:`pack_linears` gave ``mod`` a prepacked weight."""
    return "_surgeon_packed" in mod.__dict__


def _packed_modules(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear) and is_packed(m)]


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def pack_linears(model: nn.Module, batch_hint: int = 8) -> int:
    """Run every fp32/bf16 ``nn.Linear`` of ``model`` (on CPU) through oneDNN with a prepacked weight.

    ``batch_hint``: the row count the packed layout is tuned for (a verification pass has up to
    ``draft length + 1`` rows). Returns how many layers were packed. Inference only: a call that needs
    gradients, or an input of another dtype, falls back to the stock kernel.
    """
    if not onednn_available():
        raise UsageError("this PyTorch build has no oneDNN (mkldnn) CPU kernels", "use --kernels stock")
    n = 0
    with torch.no_grad():
        for mod in model.modules():
            if not isinstance(mod, nn.Linear) or is_packed(mod):
                continue
            w = mod.weight
            if w.device.type != "cpu" or w.dtype not in _PACKABLE:
                continue
            mod._surgeon_packed = torch.ops.mkldnn._reorder_linear_weight(w.detach().contiguous(), batch_hint)
            mod._surgeon_packed_dtype = w.dtype
            mod.forward = types.MethodType(_packed_forward, mod)
            n += 1
    log.debug("packed %d linear layers for oneDNN", n)
    return n


def unpack_linears(model: nn.Module) -> int:
    """Undo :func:`pack_linears`: stock kernels, packed copies freed. Returns how many layers were restored."""
    mods = _packed_modules(model)
    for mod in mods:
        for attr in ("_surgeon_packed", "_surgeon_packed_dtype", "forward"):
            mod.__dict__.pop(attr, None)
    return len(mods)


@contextmanager
def stock_kernels(model: nn.Module):
    """Inside the block, packed layers run PyTorch's own kernel again (the packed copies are kept)."""
    swapped = _packed_modules(model)
    for m in swapped:
        del m.__dict__["forward"]
    try:
        yield model
    finally:
        for m in swapped:
            m.forward = types.MethodType(_packed_forward, m)
