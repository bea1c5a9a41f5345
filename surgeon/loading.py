"""``surgeon.load``: load one exit of a checkpoint as a stock transformers model, reading only its tensors.

The exit is turned into the same plan that ``surgeon extract`` would execute (kept layers renumbered
0..k-1, every per-layer config key sliced, width exits sliced to their first channels / heads); the
model skeleton is built on the meta device (buffers such as rotary frequencies stay real), and each
needed tensor is read from its byte range, gathered and cast one at a time and assigned in place.
Memory and time grow with the exit, not with the checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .io.checkpoint import Checkpoint

log = logging.getLogger(__name__)

_TORCH_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "float32": "float32",
                "bfloat16": "bfloat16", "float16": "float16"}


@dataclass
class ExitChoice:
    """Which exit to load: its name (None when no manifest names it), layers and widths."""

    name: str | None
    layers: list[int]
    widths: dict | None = None


def choose_exit(ckpt: Checkpoint, manifest: dict | None, exit: str | int | dict | None = None,
                max_params: float | None = None, max_flops: float | None = None) -> ExitChoice:
    """Resolve ``exit`` (a name, or a layer count = the first k layers) or a budget to an :class:`ExitChoice`.

    With a budget, the largest exit (by cost; the manifest lists them cheapest first) whose parameter
    count is at most ``max_params`` and whose FLOPs/token is at most ``max_flops`` is chosen.
    """
    L = ckpt.num_layers
    exits = (manifest or {}).get("exits") or []
    budget = max_params is not None or max_flops is not None
    if exit is not None and budget:
        raise UsageError("give an exit or a budget, not both", "drop --exit, or drop --max-params/--max-flops")
    if budget:
        if not exits:
            raise UsageError(f"{ckpt.path} has no sorted manifest to choose a budget from",
                             "write one with `surgeon manifest MODEL --in-place`, or give a layer count")
        fits = [e for e in exits
                if (max_params is None or e["cost"]["parameters"]["total"] <= max_params)
                and (max_flops is None or e["cost"]["flops_per_token"] <= max_flops)]
        if not fits:
            small = exits[0]
            raise UsageError(
                f"no exit fits the budget (the smallest, {small['name']!r}, has "
                f"{small['cost']['parameters']['total']:,} parameters and {small['cost']['flops_per_token']:,} FLOPs/token)",
                "raise --max-params / --max-flops")
        e = fits[-1]
        return ExitChoice(e["name"], list(e["layers"]), e.get("widths"))
    if exit is None:
        return ExitChoice(exits[-1]["name"] if exits else None, list(range(L)))
    if isinstance(exit, dict):  # an exit spec {"layers", "widths"?}, e.g. one not yet in a manifest
        return ExitChoice(exit.get("name"), [int(i) for i in exit["layers"]], exit.get("widths"))
    if isinstance(exit, str) and not exit.strip().isdigit():
        for e in exits:
            if e["name"] == exit:
                return ExitChoice(e["name"], list(e["layers"]), e.get("widths"))
        names = ", ".join(e["name"] for e in exits)
        raise UsageError(f"{ckpt.path} has no exit named {exit!r}",
                         f"choose one of {names}" if names else "give a layer count, or write a manifest first")
    k = int(exit)
    if not 1 <= k <= L:
        raise UsageError(f"exit {k} is outside 1..{L} layers", f"the model has {L} layers")
    for e in exits:
        if e["layers"] == list(range(k)) and not e.get("widths"):
            return ExitChoice(e["name"], list(range(k)))
    return ExitChoice(None, list(range(k)))


def load(path: str | Path, exit: str | int | dict | None = None, *, max_params: float | None = None,
         max_flops: float | None = None, dtype=None, device: str = "cpu"):
    """Load one exit of the checkpoint at ``path`` as a transformers ``*ForCausalLM`` in eval mode.

    ``exit``: an exit name from the sorted manifest, or an int k (the first k layers with the shared
    final norm and head), or an exit dict ``{"layers": [...], "widths": {...}}``; or give ``max_params`` / ``max_flops`` to take the largest exit within budget.
    Default: the full model. ``dtype``: a torch dtype or "bf16"/"fp16"/"fp32" (default: as stored).
    The result has ``model.surgeon_exit`` (the :class:`ExitChoice`). Raises
    :class:`~surgeon.errors.UsageError` for an unknown exit or an impossible budget and
    :class:`~surgeon.errors.CheckpointError` for an unreadable checkpoint or manifest.
    """
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from .manifest.build import exit_plan
    from .manifest.store import read_manifest

    ckpt = Checkpoint.open(path)
    found = None if isinstance(exit, dict) else read_manifest(ckpt.path)
    manifest = found[0] if found else None
    choice = choose_exit(ckpt, manifest, exit, max_params, max_flops)
    if isinstance(dtype, str):
        if dtype.lower() not in _TORCH_NAMES:
            raise UsageError(f"unknown dtype {dtype!r}", "use bf16, fp16 or fp32")
        dtype = getattr(torch, _TORCH_NAMES[dtype.lower()])
    plan = exit_plan(ckpt, choice.layers, choice.widths)
    cfg_dict = dict(plan.config)
    model_type = cfg_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg_dict)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype or _config_dtype(config, torch))
    state = {}
    for op in plan.tensors:
        t = _materialize(ckpt, op, torch)
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


def _materialize(ckpt: Checkpoint, op, torch):
    """Read one tensor straight into its own buffer (one copy), gather, cast: ``op``'s output tensor."""
    from .errors import CheckpointError
    from .io.checkpoint import TORCH_DTYPES

    info = ckpt.tensors[op.src]
    buf = bytearray(info.nbytes)
    with open(ckpt.path / info.file, "rb", buffering=0) as f:
        f.seek(info.begin)
        got = f.readinto(buf)
    if got != info.nbytes:
        raise CheckpointError(f"{info.file} ends inside tensor {op.src}: truncated", "re-download the checkpoint")
    src_dtype = getattr(torch, TORCH_DTYPES[info.dtype])
    t = torch.frombuffer(buf, dtype=src_dtype).reshape(info.shape) if info.numel else torch.empty(info.shape, dtype=src_dtype)
    for dim, idx in op.select:
        t = t.index_select(dim, torch.tensor(idx, dtype=torch.long))
    return t.to(getattr(torch, TORCH_DTYPES[op.dtype]))


def _config_dtype(config, torch):
    d = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(d, str):
        return getattr(torch, d, torch.float32)
    return d if isinstance(d, torch.dtype) else torch.float32
