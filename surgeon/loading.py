"""``surgeon.load``: load one exit of a checkpoint as a stock transformers model, reading only its tensors.

The exit is turned into the same plan that ``surgeon extract`` would execute (kept layers renumbered
0..k-1, every per-layer config key sliced, width exits sliced to their first channels / heads); the
model skeleton is built on the meta device (buffers such as rotary frequencies stay real), and each
needed tensor is read from its byte range, gathered and cast one at a time and assigned in place.
Memory and time grow with the exit, not with the checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .io.checkpoint import Checkpoint

log = logging.getLogger(__name__)


def load(path: str | Path, exit=None, *, max_params: float | None = None,
         max_flops: float | None = None, dtype=None, device: str = "cpu"):
    """Load one exit of the checkpoint at ``path`` as a transformers ``*ForCausalLM`` in eval mode.

    ``path``: a checkpoint folder or a hub model ID ``org/name[@REV]`` (only the shards the exit reads are
    downloaded; see :mod:`surgeon.hub`).

    ``exit``: an exit name from the sorted manifest, an int k (the first k layers with the shared
    final norm and head), a narrowed prefix ``"k:ffn=F[:heads=H]"``, or an exit
    (:class:`~surgeon.exits.ExitSpec`, or a dict ``{"layers": [...], "widths": {...}}``); or give
    ``max_params`` / ``max_flops`` to take the largest exit within budget. The exit is resolved by
    :func:`surgeon.manifest.resolve.resolve_checkpoint_exit` (a manifest that fails validation is an error).
    Default: the full model. ``dtype``: a torch dtype or "bf16"/"fp16"/"fp32" (default: as stored).
    The result has ``model.surgeon_exit`` (the :class:`~surgeon.exits.ExitSpec`). Raises
    :class:`~surgeon.errors.UsageError` for an unknown exit or an impossible budget and
    :class:`~surgeon.errors.CheckpointError` for an unreadable checkpoint or manifest.
    """
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from .manifest.build import exit_plan
    from .manifest.resolve import resolve_checkpoint_exit
    from .surgery.execute import materialize
    from .units import torch_dtype

    ckpt = Checkpoint.open(path)
    choice = resolve_checkpoint_exit(ckpt, exit, max_params=max_params, max_flops=max_flops).exit
    if isinstance(dtype, str):
        dtype = torch_dtype(dtype)
    plan = exit_plan(ckpt, choice.layers, choice.widths)
    cfg_dict = dict(plan.config)
    model_type = cfg_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg_dict)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype or _config_dtype(config, torch))
    state = {}
    for op in plan.tensors:
        t = materialize(ckpt, op)
        state[op.name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    result = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if result.unexpected_keys or missing:
        from .errors import CheckpointError

        raise CheckpointError(
            f"the exit's tensors do not fit {config.architectures or model_type}: "
            f"missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}",
            "check the checkpoint with `surgeon manifest validate`")
    model.eval()
    if device != "cpu":
        model.to(device)
    model.surgeon_exit = choice
    log.info("loaded exit %s (%d layers) of %s", choice.name, len(choice.layers), ckpt.path)
    return model


def _config_dtype(config, torch):
    d = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(d, str):
        return getattr(torch, d, torch.float32)
    return d if isinstance(d, torch.dtype) else torch.float32
