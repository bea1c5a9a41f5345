"""``--offload layer``: the similarity analysis with one decoder layer in memory at a time.

The model skeleton is built with empty (meta) parameters; only the embedding and the final norm
are read from the checkpoint. A first pass over the batches runs the base model with every
decoder layer replaced by a recorder that passes the hidden states through unchanged and keeps
the arguments the model hands each layer (attention masks, rotary embeddings, position ids), so
the model's own mask and position logic (sliding windows, per-layer types) is reused as is.
Then, layer by layer: read layer l's tensors from the lazy checkpoint reader, run it over every
batch (the activations of all samples stay resident), feed the same hook-side accumulator as the
in-memory path, and drop the weights again. Peak memory: activations + one layer + embeddings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..errors import CheckpointError
from ..io.checkpoint import Checkpoint
from ..progress import Progress
from .similarity import Batch, SimilarityAccumulator, SimilarityTable

log = logging.getLogger(__name__)


def _set_param(root, name: str, tensor) -> None:
    import torch

    mod_name, _, pname = name.rpartition(".")
    mod = root.get_submodule(mod_name) if mod_name else root
    mod._parameters[pname] = torch.nn.Parameter(tensor, requires_grad=False)


def _load(ckpt: Checkpoint, root, names: dict[str, str], dtype, device="cpu") -> None:
    """Assign ``root``'s parameters (model name -> checkpoint tensor name) from ``ckpt``."""
    for model_name, ckpt_name in names.items():
        if ckpt_name not in ckpt.tensors:
            raise CheckpointError(f"{ckpt.path} has no tensor {ckpt_name}",
                                  "the checkpoint does not match its config; re-export it, or run without --offload")
        t = ckpt.get_tensor(ckpt_name)
        want = tuple(root.get_parameter(model_name).shape)
        if tuple(t.shape) != want:
            raise CheckpointError(f"tensor {ckpt_name} has shape {tuple(t.shape)}, the config implies {want}",
                                  "the checkpoint does not match its config.json")
        _set_param(root, model_name, t.to(device=device, dtype=dtype))


def _unload(layer) -> None:
    import torch

    for name, p in list(layer.named_parameters()):
        _set_param(layer, name, torch.empty(p.shape, dtype=p.dtype, device="meta"))


def offloaded_similarity(ckpt: Checkpoint, layers_path: str, batches: Sequence[Batch], dtype,
                         progress: Progress | None = None, device="cpu") -> SimilarityTable:
    """The same table as :func:`~.similarity.layer_similarity`, one layer resident at a time (on ``device``)."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(ckpt.path)
    with init_empty_weights(include_buffers=False):  # buffers (rotary inv_freq) stay real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    layers = model.get_submodule(layers_path)
    L = len(layers)
    layer_prefix = layers_path + "."
    outside = {n: n for n, _ in model.named_parameters()
               if not n.startswith(layer_prefix) and not n.startswith("lm_head.")}
    _load(ckpt, model, outside, dtype, device)  # embeddings and final norm; the LM head is never run
    for name, buf in list(model.named_buffers()):  # rotary tables etc. follow the weights
        mod_name, _, bname = name.rpartition(".")
        (model.get_submodule(mod_name) if mod_name else model)._buffers[bname] = buf.to(device)

    # Pass 1: run the base model with pass-through layers; keep each layer's arguments per batch.
    base = getattr(model, "base_model", model)
    calls: dict[int, list] = {}
    hidden: dict[int, object] = {}
    current = {}

    def recorder(l: int):
        def forward(*args, **kwargs):
            hs = args[0] if args else kwargs.pop("hidden_states")
            calls[current["b"]][l] = (args[1:], kwargs)
            if l == 0:
                hidden[current["b"]] = hs
            return hs
        return forward

    for l, layer in enumerate(layers):
        layer.forward = recorder(l)
    try:
        with torch.inference_mode():
            for batch in batches:
                current["b"] = batch.index
                calls[batch.index] = [None] * L
                base(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                     position_ids=batch.position_ids.to(device), use_cache=False)
    finally:
        for layer in layers:
            del layer.forward  # back to the class's forward
    if any(c is None for cs in calls.values() for c in cs):
        raise RuntimeError("not every decoder layer was called by the model's forward")

    # Pass 2: layer-major.
    acc = SimilarityAccumulator(L)
    with torch.inference_mode():
        for l, layer in enumerate(layers):
            names = {n: f"{layer_prefix}{l}.{n}" for n, _ in layer.named_parameters()}
            _load(ckpt, layer, names, dtype, device)
            for batch in batches:
                args, kwargs = calls[batch.index][l]
                x_in = hidden[batch.index]
                out = layer(x_in, *args, **kwargs)
                x_out = out[0] if isinstance(out, (tuple, list)) else out
                acc.observe(batch, l, x_in, x_out)
                hidden[batch.index] = x_out
            _unload(layer)
            if progress:
                progress(l + 1, L, "layers")
    for batch in batches:
        acc.flush(batch)
    return acc.table()
