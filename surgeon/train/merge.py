"""Merging training into the source's weights: the LoRA deltas, or the fully trained weights.

The LoRA update ``delta = (B @ A) * scaling`` (float32) is added to the **original float
weights read from the source checkpoint**, never to the dequantized 4-bit weights the adapter
was trained against: :func:`merge_transforms` gives the per-tensor ``transforms`` the streaming
executor applies (one tensor in memory at a time, each LoRA delta computed when its tensor is
read; :func:`surgeon.commands.output.save_merged` writes the checkpoint, and
:class:`surgeon.eval.streamed.StreamedModel` runs the same transforms to measure the output). A fully
fine-tuned model's trained weights replace the source's through the same path. Fused projections
(Phi-3 ``gate_up_proj``, ``qkv_proj``) carry one adapter over the whole fused matrix, so their
delta has the fused tensor's shape and adds in place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..errors import UsageError
from ..io.checkpoint import Checkpoint
from .model import unwrap

log = logging.getLogger(__name__)

PEFT_PREFIX = "base_model.model."


def is_peft(model) -> bool:
    return hasattr(unwrap(model), "peft_config")


def lora_modules(model, adapter: str = "default") -> dict[str, tuple[str, object]]:
    """The checkpoint tensor name of every LoRA-wrapped linear module of ``model``,
    with its module name in ``model``: ``{key: (name, layer)}``."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, mod in unwrap(model).named_modules():
        if not isinstance(mod, LoraLayer) or adapter not in getattr(mod, "lora_A", {}):
            continue
        if getattr(mod, "use_dora", {}).get(adapter, False):
            raise UsageError("DoRA adapters cannot be merged by surgeon", "train plain LoRA")
        key = (name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name) + ".weight"
        out[key] = (name, mod)
    return out


def lora_delta(mod, adapter: str = "default", a=None, b=None):
    """The float32 update ``(B @ A) * scaling`` of one LoRA layer (CPU), in the base weight's layout.
    ``a``/``b``: the adapter's full matrices when the module holds only shards of them (FSDP)."""
    import torch

    with torch.no_grad():
        a = (a if a is not None else mod.lora_A[adapter].weight).detach().float().cpu()
        b = (b if b is not None else mod.lora_B[adapter].weight).detach().float().cpu()
        delta = (b @ a) * float(mod.scaling[adapter])
    return delta.T if getattr(mod, "fan_in_fan_out", False) else delta


def trained_weights(model) -> dict[str, object]:
    """``{name: tensor}`` of every parameter of a fully fine-tuned model (CPU, detached)."""
    return {n: p.detach().cpu() for n, p in unwrap(model).named_parameters()}


def _add(mod, a=None, b=None):
    return lambda t: t.float() + lora_delta(mod, a=a, b=b)


def _replace(weight):
    return lambda t: weight


def merge_transforms(model, ckpt: Checkpoint, trained: dict | None = None) -> dict[str, Callable]:
    """The ``execute`` transforms that turn the source tensors into the trained ones. ``trained``:
    the trainable parameters gathered in full (``{name in model: tensor}``,
    :func:`surgeon.train.fsdp.gather_trained`) when ``model`` holds only its shards."""
    if is_peft(model):
        mods = lora_modules(model)
        if not mods:
            raise UsageError("the model has no LoRA adapters to merge", "train it with --method lora first")
        if trained is None:  # each delta computed when its tensor is read
            updates = {k: _add(m) for k, (_, m) in mods.items()}
        else:
            updates = {k: _add(m, trained[f"{n}.lora_A.default.weight"], trained[f"{n}.lora_B.default.weight"])
                       for k, (n, m) in mods.items()}
    else:
        weights = trained if trained is not None else trained_weights(model)
        updates = {k: _replace(w) for k, w in weights.items() if k in ckpt.tensors}
        unnamed = [k for k in weights if k not in ckpt.tensors and not k.endswith("lm_head.weight")]
        if unnamed:
            raise UsageError(f"trained parameter {unnamed[0]} has no tensor of that name in {ckpt.path}",
                             "merge against the checkpoint the model was loaded from")
    missing = [k for k in updates if k not in ckpt.tensors]
    if missing:
        raise UsageError(f"trained tensor {missing[0]} is not in {ckpt.path}",
                         "merge against the checkpoint the model was loaded from")
    return updates


def save_adapter(model, folder: str | Path, force: bool = True, state_dict: dict | None = None) -> Path:
    """Write the peft adapter (``adapter_config.json`` + ``adapter_model.safetensors``) atomically.
    ``state_dict``: the adapter's full tensors when ``model`` holds only its shards (FSDP)."""
    from ..io.atomic import atomic_output

    if not is_peft(model):
        raise UsageError("--save-adapter needs a LoRA model", "drop --save-adapter with --method full")
    with atomic_output(folder, None, force) as tmp:
        kwargs = {"state_dict": state_dict} if state_dict is not None else {}
        unwrap(model).save_pretrained(str(tmp), safe_serialization=True, **kwargs)
    return Path(folder)
