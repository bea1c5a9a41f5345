"""Loading a checkpoint as a frozen 4-bit NF4 model, one tensor in memory at a time.

transformers' bitsandbytes path (``from_pretrained(quantization_config=...)``) memory-maps the
safetensors files and casts before quantizing: on a 1.3B bf16 checkpoint it peaks at 2.2x the
checkpoint's bytes above the import floor on CPU, more than the whole float model. :func:`load_nf4`
builds the model's skeleton with empty (meta) parameters, swaps every ``nn.Linear`` except the LM head
for ``bitsandbytes.nn.Linear4bit`` (the modules transformers would create: NF4, block size 64,
double quantization off, ``compute_dtype``), then reads each tensor with the checkpoint reader
(``readinto``: no mapping that stays resident) and quantizes it on ``device`` before the next is
read. Embedding, norms and the LM head stay in ``compute_dtype``. The result is the module tree
peft's ``prepare_model_for_kbit_training`` and LoRA dispatch expect (``is_loaded_in_4bit``).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def load_nf4(path: str | Path, device, compute_dtype, progress=None, head_dtype=None):
    """The checkpoint at ``path`` with every linear layer but the LM head quantized to NF4 on ``device``;
    the embedding and LM head compute in ``head_dtype`` (default ``compute_dtype``; see the module doc)."""
    import bitsandbytes as bnb
    import torch

    from ..arch.skeleton import checked_tensor, meta_model
    from ..memory import trim
    from .frozen import held_dtype, hold_frozen

    device = torch.device(device)
    head_dtype = head_dtype or compute_dtype
    ckpt, family, model = meta_model(path, compute_dtype, device)
    for name, mod in list(model.named_modules()):
        if type(mod) is torch.nn.Linear and name != family.lm_head:
            with torch.device("meta"):
                q = bnb.nn.Linear4bit(mod.in_features, mod.out_features, mod.bias is not None, compute_dtype,
                                      compress_statistics=False, quant_type="nf4", quant_storage=torch.uint8)
            q.requires_grad_(False)
            model.set_submodule(name, q)
    head_name, embed_name = family.lm_head + ".weight", family.embed + ".weight"
    tied = head_name not in ckpt.tensors
    params = [(n, p) for n, p in model.named_parameters(remove_duplicate=False) if not (tied and n == head_name)]
    held = {}  # embedding / head weights kept narrow (surgeon.train.frozen.held_dtype)
    for i, (name, old) in enumerate(params):
        t = checked_tensor(ckpt, name, old.shape)
        mod_name, _, pname = name.rpartition(".")
        mod = model.get_submodule(mod_name)
        hold = held_dtype(t.dtype, compute_dtype, head_dtype) if name in (embed_name, head_name) else None
        if hold is not None:
            held[name] = t.to(device=device, dtype=hold)  # made a buffer by hold_frozen below
        elif isinstance(mod, bnb.nn.Linear4bit) and pname == "weight":
            # module=None: a Params4bit that points back at its module kept every float source alive (bnb 0.50)
            mod._parameters[pname] = bnb.nn.Params4bit(t.to(compute_dtype), requires_grad=False,
                                                       **{**old.__dict__, "module": None}).to(device)
            mod.quant_state = mod._parameters[pname].quant_state
        else:
            mod._parameters[pname] = torch.nn.Parameter(t.to(device=device, dtype=compute_dtype), requires_grad=False)
        del t
        if pname == "weight" and i % 8 == 7:
            trim()  # the float sources just freed (see surgeon.memory)
        if progress:
            progress(i + 1, len(params), "quantizing")
    if tied and embed_name in held:  # the LM head reads the embedding matrix
        held[head_name] = held[embed_name]
    elif tied:
        model.get_submodule(family.lm_head).weight = model.get_submodule(family.embed).weight
    if held:
        hold_frozen(model, family, held, head_dtype)
    model.is_loaded_in_4bit = True
    return model.eval()  # the swapped-in Linear4bit modules too
