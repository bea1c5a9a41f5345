"""``--offload layer``: run a checkpoint with one decoder layer in memory at a time.

It lives with the metrics engine that runs it most (:func:`~surgeon.eval.metrics.measure_exits`);
the similarity analysis and width importance (:mod:`surgeon.analyze`) stream through it too.

:class:`StreamedModel` builds the model's skeleton with empty (meta) parameters and reads weights
from the lazy checkpoint reader only when they are needed: for a first pass, only the embedding rows
of the batch's token ids (:meth:`~surgeon.io.checkpoint.Checkpoint.get_rows`: the embedding matrix
is never whole in memory), then one decoder layer at a time, then the final norm and the LM head, one
slice of its vocabulary at a time (:mod:`surgeon.eval.logits`: online log-sum-exp, so the head is never
whole either), which a model built with ``logits=False`` (residual streams only: analyze, sort-width)
never reads. The first pass runs the base model with every decoder layer and the final norm replaced
by recorders that pass the hidden states through unchanged and keep the arguments the model hands each layer
(attention masks, rotary embeddings, position ids), so the model's own mask and position logic
(sliding windows, per-layer attention types) is reused as is; the embedding module runs its own
forward (Gemma's scale included) over the gathered rows with the ids renumbered to them, so its
output is bitwise the same. :meth:`StreamedModel.run` then goes layer-major: read layer l, run it
over every batch of every *stream* (a stream is one hidden state per batch: the full stack, a layer
subset, or a narrower width under :func:`~surgeon.width.masking.width_mask`), hand each output to a
callback, drop the weights. Forward hooks registered on the skeleton's modules fire as usual, so
activation statistics (width importance) work unchanged.

Peak memory: the activations of all batches (x streams) + the largest of (one batch's embedding
rows, one layer, norm + one head slice and its blocks of logits; no head with ``logits=False``).
``transforms`` (checkpoint tensor name -> function of the source tensor) let the stream run *modified*
weights without materializing them: healing's "after" evaluation adds each layer's LoRA delta to the
original float weights as the layer is read, cast to the dtype the output is written in, so it
measures exactly the written weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from ..arch.skeleton import checked_tensor, checked_tensor_info, meta_model
from .logits import VocabHead

log = logging.getLogger(__name__)


def _set_param(root, name: str, tensor) -> None:
    import torch

    mod_name, _, pname = name.rpartition(".")
    mod = root.get_submodule(mod_name) if mod_name else root
    mod._parameters[pname] = torch.nn.Parameter(tensor, requires_grad=False)


@dataclass
class Stream:
    """One hidden state per batch through the stack: ``layers`` (None: all) under ``widths`` (None: full)."""

    layers: frozenset[int] | None = None
    widths: dict | None = None


class StreamedModel:
    """A causal LM whose weights are read from ``path`` only while they are used (see module doc)."""

    def __init__(self, path: str | Path, *, device="cpu", dtype=None, transforms: dict[str, Callable] | None = None,
                 out_dtype=None, logits: bool = True, vocab_chunk: int | None = None):
        """``logits=False``: the passes need the residual streams only; :meth:`head` refuses, so the
        final norm and LM head are never read. ``vocab_chunk``: LM head rows per slice read (default
        :func:`~surgeon.eval.logits.default_vocab_chunk`: 64 MiB of float32)."""
        import torch

        from ..io.checkpoint import Checkpoint

        self.device = torch.device(device)
        if dtype == "auto":  # the stored dtype (the one most parameters have), as transformers' dtype="auto"
            from ..units import FLOAT_CODES, torch_dtype

            counts = {k: v for k, v in Checkpoint.open(path).dtypes.items() if k in FLOAT_CODES}
            dtype = torch_dtype(max(counts, key=counts.get)) if counts else torch.float32
        self.dtype = dtype or torch.float32
        self.transforms = transforms or {}
        self.out_dtype = out_dtype  # the dtype transformed tensors are written in (None: the source's)
        self.logits = logits
        self.vocab_chunk = vocab_chunk
        self.ckpt, self.family, self.model = meta_model(path, self.dtype, self.device)
        self.layers = self.model.get_submodule(self.family.layers)
        self.num_layers = len(self.layers)
        self.config = self.model.config
        tied = self.family.lm_head + ".weight" not in self.ckpt.tensors
        self._names = {n: (self.family.embed + ".weight" if tied and n == self.family.lm_head + ".weight" else n)
                       for n, _ in self.model.named_parameters(remove_duplicate=False)}

    # -- weights ----------------------------------------------------------------------------------
    def read(self, model_name: str, rows=None):
        """The tensor of parameter ``model_name`` as the stream runs it (transformed, on the device);
        ``rows`` (ascending distinct indices): only those rows of it, read alone unless a transform needs
        the whole tensor."""
        ckpt_name = self._names[model_name]
        shape = self.model.get_parameter(model_name).shape
        fn = self.transforms.get(ckpt_name)
        if rows is not None and fn is None:
            checked_tensor_info(self.ckpt, ckpt_name, shape)
            t = self.ckpt.get_rows(ckpt_name, rows)
        else:
            t = checked_tensor(self.ckpt, ckpt_name, shape)
        stored = t.dtype
        if fn is not None:
            t = fn(t)
            if rows is not None:
                t = t[rows]
        if t.is_floating_point():  # what the output holds: its dtype, else the source's
            t = t.to(self.out_dtype or stored)
        return t.to(device=self.device, dtype=self.dtype)

    @contextmanager
    def loaded(self, prefix: str):
        """Inside the block, every parameter under module ``prefix`` holds its weights."""
        import torch

        names = [n for n in self._names if n.startswith(prefix + ".")]
        try:
            for n in names:
                _set_param(self.model, n, self.read(n))
            yield
        finally:
            for n in names:
                p = self.model.get_parameter(n)
                _set_param(self.model, n, torch.empty(p.shape, dtype=p.dtype, device="meta"))

    # -- passes -----------------------------------------------------------------------------------
    @contextmanager
    def _embedding_rows(self, input_ids):
        """Inside the block the embedding module holds only the rows of ``input_ids`` and looks them up
        by their rank among the distinct ids: its own forward, bitwise the whole matrix's lookup."""
        import torch

        name = self.family.embed + ".weight"
        embed = self.model.get_submodule(self.family.embed)
        meta = self.model.get_parameter(name)
        ids, local = torch.unique(input_ids, sorted=True, return_inverse=True)
        _set_param(self.model, name, self.read(name, rows=ids.tolist()))
        pad = embed.padding_idx  # only gradients use it, and it indexes the whole matrix
        local = local.to(self.device)

        def forward(x):
            if tuple(x.shape) != tuple(local.shape):
                raise RuntimeError("the embedding was called with other ids than the batch's")
            return type(embed).forward(embed, local)

        embed.padding_idx, embed.forward = None, forward
        try:
            yield
        finally:
            del embed.forward
            embed.padding_idx = pad
            _set_param(self.model, name, meta.data)

    def prepare(self, batches: Sequence[dict]) -> list[tuple[object, list]]:
        """Per batch (``{"input_ids", "attention_mask"[, "position_ids"]}``): the first layer's input and
        every layer's ``(args, kwargs)``, from one pass with pass-through layers (the batch's embedding rows
        loaded; the final norm passes through too, its output is not used)."""
        import torch

        base = self.model.base_model
        L = self.num_layers
        record: dict = {}

        def recorder(l: int):
            def forward(*args, **kwargs):
                hs = args[0] if args else kwargs.pop("hidden_states")
                record["calls"][l] = (args[1:], kwargs)
                if l == 0:
                    record["hidden"] = hs
                return hs
            return forward

        out = []
        for l, layer in enumerate(self.layers):
            layer.forward = recorder(l)
        norm = self.model.get_submodule(self.family.final_norm)
        norm.forward = lambda hs, *a, **k: hs
        skip = (self.family.layers + ".", self.family.lm_head + ".", self.family.final_norm + ".",
                self.family.embed + ".")
        outside = sorted({n.rsplit(".", 1)[0] for n in self._names if not n.startswith(skip)})
        try:
            with ExitStack() as stack, torch.inference_mode():
                for prefix in outside:  # anything else the base model runs outside its layers (none in most)
                    stack.enter_context(self.loaded(prefix))
                for batch in batches:
                    record.clear()
                    record["calls"] = [None] * L
                    with self._embedding_rows(batch["input_ids"]):
                        base(**{k: v.to(self.device) for k, v in batch.items()}, use_cache=False)
                    if any(c is None for c in record["calls"]):
                        raise RuntimeError("not every decoder layer was called by the model's forward")
                    out.append((record["hidden"], record["calls"]))
        finally:
            for layer in self.layers:
                del layer.forward  # back to the class's forward
            del norm.forward
        return out

    def run(self, prepared: list[tuple[object, list]], streams: Sequence[Stream],
            on_output: Callable[[int, int, int, object, object], None], depth: int | None = None,
            on_batch: Callable[[int], None] | None = None, progress=None) -> None:
        """Layer-major pass over the first ``depth`` layers (default: all): for each layer a stream keeps,
        ``on_output(stream, layer, batch, x_in, x_out)``; ``on_batch(b)`` runs before each batch's call."""
        import torch

        from ..width.masking import width_mask

        depth = self.num_layers if depth is None else depth
        hidden = [[h for h, _ in prepared] for _ in streams]
        with torch.inference_mode():
            for l in range(depth):
                users = [s for s, st in enumerate(streams) if st.layers is None or l in st.layers]
                if not users:
                    continue
                with self.loaded(f"{self.family.layers}.{l}"):
                    layer = self.layers[l]
                    for s in users:
                        widths = streams[s].widths or {}
                        with width_mask(self.model, ffn=widths.get("ffn"), kv_heads=widths.get("kv_heads"),
                                        family=self.family) if widths else nullcontext():
                            for b, (_, calls) in enumerate(prepared):
                                if on_batch:
                                    on_batch(b)
                                args, kwargs = calls[l]
                                x_in = hidden[s][b]
                                out = layer(x_in, *args, **kwargs)
                                x_out = out[0] if isinstance(out, (tuple, list)) else out
                                on_output(s, l, b, x_in, x_out)
                                hidden[s][b] = x_out
                if progress:
                    progress(l + 1, depth, "layers")

    @contextmanager
    def head(self):
        """The final norm loaded; yields a :class:`~surgeon.eval.logits.VocabHead` that reads the LM head in
        slices of ``vocab_chunk`` rows, each in its stored dtype and cast to the compute dtype only while
        it is used, so the head is never whole in memory."""
        if not self.logits:
            raise RuntimeError("this StreamedModel was built with logits=False: it never reads the final norm "
                               "or LM head; build it with logits=True to score exits")
        with self.loaded(self.family.final_norm):
            yield _StreamedHead(self)


class _StreamedHead(VocabHead):
    """The LM head of a :class:`StreamedModel`, read from the checkpoint one vocabulary slice at a time."""

    def __init__(self, sm: StreamedModel):
        from .capture import exit_modules

        super().__init__(exit_modules(sm.model), sm.vocab_chunk)  # the norm is loaded; the head stays empty
        self.sm, self.sliced = sm, True
        head = sm.family.lm_head
        self.weight = f"{head}.weight"
        self.bias = f"{head}.bias" if getattr(self.mods.head, "bias", None) is not None else None

    def weights(self, start: int, stop: int) -> tuple:
        rows = list(range(start, stop))
        return self.sm.read(self.weight, rows=rows), self.sm.read(self.bias, rows=rows) if self.bias else None
