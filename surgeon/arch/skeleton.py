"""A checkpoint's model with empty (meta) parameters, and checked reads of its tensors: what the
layer-streamed engine (:mod:`surgeon.eval.streamed`), the NF4 loader and the sharded (FSDP) loader build on."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError


def meta_model(path: str | Path, dtype, device):
    """``(checkpoint, family, model)``: the checkpoint's causal LM with empty (meta) parameters in
    ``dtype`` and its real buffers (rotary tables) on ``device``; weights are assigned by the caller."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..io.checkpoint import Checkpoint
    from .registry import resolve_family

    ckpt = Checkpoint.open(path)
    config = AutoConfig.from_pretrained(str(ckpt.path))  # a hub model: its cache snapshot
    with init_empty_weights(include_buffers=False):  # buffers (rotary inv_freq) stay real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    for name, buf in list(model.named_buffers()):
        mod_name, _, bname = name.rpartition(".")
        (model.get_submodule(mod_name) if mod_name else model)._buffers[bname] = buf.to(torch.device(device))
    return ckpt, resolve_family(ckpt.text_config, ckpt.tensors), model.eval()


def checked_tensor_info(ckpt, name: str, shape):
    """The header entry of tensor ``name`` of ``ckpt``, which must exist with the ``shape`` the config implies."""
    if name not in ckpt.tensors:
        raise CheckpointError(f"{ckpt.path} has no tensor {name}", "the checkpoint does not match its config.json; "
                              "re-export it")
    info = ckpt.tensors[name]
    if tuple(info.shape) != tuple(shape):
        raise CheckpointError(f"tensor {name} has shape {tuple(info.shape)}, the config implies {tuple(shape)}",
                              "the checkpoint does not match its config.json")
    return info


def checked_tensor(ckpt, name: str, shape) -> object:
    """Tensor ``name`` of ``ckpt``, which must exist with the ``shape`` the config implies."""
    checked_tensor_info(ckpt, name, shape)
    return ckpt.get_tensor(name)
