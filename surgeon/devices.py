"""Devices: which accelerator a command runs on, the compute dtype there, and loading a model onto it.

``--device auto|cpu|cuda|cuda:N|mps`` (:func:`resolve_device`; ``auto`` = the accelerator when there
is one) and, for the inference commands, ``--device-map auto`` + ``--max-memory`` (accelerate's
big-model inference through transformers' ``device_map``: layers spread over the GPUs, the CPU and
disk; :func:`load_causal_lm`). Asking for a device the machine does not have is a
:class:`~surgeon.errors.UsageError`. Compute runs in bf16 on GPUs that support it, fp32 elsewhere
(:func:`compute_dtype`); an explicit ``--compute-dtype`` wins.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .errors import CheckpointError, UsageError

log = logging.getLogger(__name__)

DEVICE_HELP = "auto (the accelerator when there is one), cpu, cuda, cuda:N or mps."
_HINT = "use --device cpu, or --device auto to take whatever this machine has"


def resolve_device(spec: str | None = "auto"):
    """The ``torch.device`` for ``--device SPEC`` (see module doc)."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if m:
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: this machine has no CUDA device", _HINT)
        index = int(m.group(1) or 0)
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(0..{torch.cuda.device_count() - 1})", "give an index that exists, or --device cuda")
        return torch.device("cuda", index)
    if spec == "mps":
        if not _mps_available():
            raise UsageError("--device mps: this machine has no Apple MPS device", _HINT)
        return torch.device("mps")
    raise UsageError(f"unknown --device {spec!r}", "give auto, cpu, cuda, cuda:N or mps")


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def compute_dtype(device, requested: str | None = None):
    """``requested`` (bf16/fp16/fp32) when given; else bf16 on GPUs that support it, fp32 elsewhere
    (bf16 matmuls are slow on CPUs)."""
    import torch

    from .units import torch_dtype

    if requested:
        return torch_dtype(requested)
    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def parse_max_memory(text: str | None) -> dict | None:
    """``"0=20GiB,1=20GiB,cpu=64GiB"`` -> ``{0: "20GiB", 1: "20GiB", "cpu": "64GiB"}`` (accelerate's form)."""
    if not text:
        return None
    out: dict = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise UsageError(f"cannot read --max-memory {text!r}", "write DEVICE=SIZE pairs, e.g. 0=20GiB,cpu=64GiB")
        out[int(key) if key.isdigit() else key] = value
    return out


def load_causal_lm(path: str | Path, *, device=None, dtype=None, device_map: str | None = None,
                   max_memory: str | None = None, offload_folder: str | Path | None = None):
    """A transformers ``*ForCausalLM`` for inference, read from safetensors only, in eval mode.

    ``device_map="auto"`` spreads the layers over the accelerators, the CPU and (with an
    ``offload_folder``) disk within ``max_memory``; otherwise the whole model goes to ``device``
    (default :func:`resolve_device`). ``dtype``: a name or torch dtype, ``"auto"`` for the stored dtype
    (default :func:`compute_dtype`).
    """
    from transformers import AutoModelForCausalLM

    from .hub import local_folder
    from .units import torch_dtype

    path = local_folder(path)  # a hub model ID: its snapshot, every file surgeon reads downloaded
    device = resolve_device("auto") if device is None else device
    if dtype != "auto":
        dtype = torch_dtype(dtype) if dtype is not None else compute_dtype(device)
    kwargs: dict = {"dtype": dtype, "use_safetensors": True}
    if device_map:
        if device_map != "auto":
            raise UsageError(f"unknown --device-map {device_map!r}", "give --device-map auto")
        kwargs.update(device_map="auto", max_memory=parse_max_memory(max_memory))
        if offload_folder is None:  # layers that fit nowhere go to disk (safetensors are read in place)
            import atexit
            import shutil
            import tempfile

            offload_folder = tempfile.mkdtemp(prefix="surgeon-offload-")
            atexit.register(shutil.rmtree, offload_folder, True)
        kwargs["offload_folder"] = str(offload_folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"transformers cannot load {path}: {str(e).splitlines()[0]}",
                              "check that the folder is a complete causal-LM checkpoint (`surgeon inspect` it)") from None
    if not device_map:
        model.to(device)
    return model.eval()


def execution_device(module, default=None):
    """Where ``module`` computes: accelerate's hook's execution device (a device-mapped or disk-offloaded
    module's weights may live elsewhere, or on ``meta``), else its weight's device, else ``default``."""
    import torch

    dev = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if dev is not None:
        return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
    weight = getattr(module, "weight", None)
    if weight is not None and weight.device.type != "meta":
        return weight.device
    return default


def input_device(model):
    """Where a (possibly device-mapped) model takes its input ids: its embedding's execution device."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    dev = execution_device(emb) if emb is not None else None
    if dev is not None:
        return dev
    return next(p.device for p in model.parameters() if p.device.type != "meta")
