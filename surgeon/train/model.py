"""Load a checkpoint trainable: QLoRA (NF4 base + LoRA), plain LoRA, or full fine-tuning.

:func:`load_trainable` reads safetensors only (``use_safetensors=True``; pickles are never
loaded), puts the model on this process's device (``accelerate.PartialState().device``, so the
same code serves one CPU, one GPU, or one rank of ``accelerate launch``), and returns a
``torch.nn.Module`` whose ``requires_grad`` parameters are exactly what the recipe trains.

LoRA targets default to the family's FFN projections from :mod:`surgeon.arch.registry` (the
pruning paper, App. A.1: ``gate_proj``, ``up_proj``, ``down_proj``; ``gate_up_proj`` and
``down_proj`` for Phi-3's fused FFN). A target name that matches no linear module raises
:class:`~surgeon.errors.UsageError` listing the names that exist.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..arch.registry import Family, resolve_family
from ..devices import compute_dtype
from ..errors import CheckpointError, UsageError
from .config import ModelSetup

log = logging.getLogger(__name__)


def checkpoint_family(path: str | Path) -> Family:
    """The registry family of the checkpoint folder ``path`` (headers only, no weights read)."""
    from ..io.checkpoint import Checkpoint

    ckpt = Checkpoint.open(path)
    return resolve_family(ckpt.text_config, ckpt.tensors)


def use_cpu_processes() -> bool:
    """True when several processes were launched (``WORLD_SIZE`` > 1) on a machine without CUDA:
    accelerate then needs ``cpu=True`` to set up gloo DDP instead of running each process alone."""
    import os

    import torch

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def distributed_state(cpu: bool = False, cpu_collectives: bool = False):
    """accelerate's ``PartialState`` for this process (one CPU, one GPU, or one DDP rank); ``cpu=True``
    keeps the process on the CPU even when an accelerator is present. ``cpu_collectives=True`` (FSDP2
    with CPU offload: gradient norms and gathers of CPU shards) launches GPU processes with gloo for
    CPU tensors beside NCCL (``cuda:nccl,cpu:gloo``, as accelerate does for its own FSDP offload)."""
    import os

    import torch
    from accelerate import PartialState

    cpu = cpu or use_cpu_processes()
    if cpu_collectives and not cpu and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return PartialState(backend="cuda:nccl,cpu:gloo")
    return PartialState(cpu=cpu)


def default_device():
    """This process's device: the accelerator's under ``accelerate launch``, else cuda:0 or CPU."""
    return distributed_state().device


def linear_module_names(model) -> list[str]:
    """Leaf names of every linear module inside the decoder layers (possible LoRA targets)."""
    import torch

    names = set()
    for full, mod in model.named_modules():  # bitsandbytes' Linear4bit subclasses nn.Linear
        if ".layers." in f".{full}." and isinstance(mod, torch.nn.Linear):
            names.add(full.rsplit(".", 1)[-1])
    return sorted(names)


def resolve_targets(setup: ModelSetup, family: Family, model) -> list[str]:
    """The LoRA target module leaf names: ``setup.target_modules`` or the family's FFN modules."""
    targets = list(setup.target_modules or family.ffn_modules)
    available = linear_module_names(model)
    unknown = [t for t in targets if t not in available]
    if unknown:
        raise UsageError(
            f"--target-modules names {', '.join(unknown)}, which is not a linear module of this {family.name} model",
            f"choose from {', '.join(available)} (default: the FFN projections {', '.join(family.ffn_modules)})",
        )
    return targets


def load_trainable(path: str | Path, setup: ModelSetup, family: Family | None = None, *, device=None):
    """Load the checkpoint at ``path`` ready to train as ``setup`` says.

    - ``method="lora", quant="nf4"``: the frozen base is quantized to 4-bit NF4 by bitsandbytes
      while loading, one tensor at a time (:func:`surgeon.train.quant.load_nf4`: double quantization
      off, compute in fp32 on CPU / bf16 on GPU), prepared with
      ``peft.prepare_model_for_kbit_training``, then LoRA adapters (rank ``setup.rank``,
      alpha ``setup.lora_alpha``, dropout ``setup.dropout``) wrap the target modules. The frozen
      embedding and LM head compute in fp32 as peft makes them, but are held in bf16 where their values
      are bf16 values (a bf16 checkpoint; any checkpoint on a GPU computing in bf16;
      :mod:`surgeon.train.frozen`): the same values, half the bytes.
    - ``method="lora", quant="none"``: the same LoRA on the float base weights.
    - ``method="full"``: every parameter trains (fp32 master weights).

    Returns the model in train mode on ``device`` (default :func:`default_device`).
    Raises UsageError for an unknown target module, CheckpointError if transformers cannot load it.
    """
    import torch
    from transformers import AutoModelForCausalLM

    family = family or checkpoint_family(path)
    device = torch.device(device) if device is not None else default_device()
    dtype = torch.float32 if setup.method == "full" else compute_dtype(device)
    if setup.quant == "nf4":  # tensor by tensor: never the float model in memory (see surgeon.train.quant)
        from .quant import load_nf4

        # peft's k-bit preparation computes the embedding and head in fp32: they are held in the narrower
        # of the stored and compute dtypes and computed in fp32 (surgeon.train.frozen), not copied to fp32
        model = load_nf4(path, device, dtype, head_dtype=torch.float32)
    else:
        try:
            from ..hub import local_folder

            model = AutoModelForCausalLM.from_pretrained(str(local_folder(path)), dtype=dtype, use_safetensors=True)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"transformers cannot load {path}: {str(e).splitlines()[0]}",
                                  "check that MODEL is a complete Hugging Face checkpoint folder") from None
        model.to(device)
    model.config.use_cache = False
    gc_kwargs = {"use_reentrant": False}
    if setup.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        if setup.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        model.train()
        return model

    from peft import get_peft_model, prepare_model_for_kbit_training

    targets = resolve_targets(setup, family, model)
    if setup.quant == "nf4":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=setup.gradient_checkpointing,
                                                gradient_checkpointing_kwargs=gc_kwargs)
    elif setup.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        model.enable_input_require_grads()
    model = get_peft_model(model, lora_config(setup, targets))
    init_lora(model, setup.seed)
    model.train()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("LoRA r=%d alpha=%g on %s (%s): %d trainable parameters", setup.rank, setup.lora_alpha,
             ", ".join(targets), setup.quant, n_train)
    return model


def lora_config(setup: ModelSetup, targets: list[str]):
    from peft import LoraConfig

    return LoraConfig(r=setup.rank, lora_alpha=setup.lora_alpha, lora_dropout=setup.dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")


def lora_init_value(name: str, shape, seed: int):
    """The initial value of LoRA parameter ``name``: peft's default (``A`` Kaiming-uniform with
    a = sqrt(5), ``B`` zero) drawn from a generator seeded by ``(seed, name)``, so it is the same
    whichever order, process or device the model is built in (sharded or not)."""
    import hashlib
    import math

    import torch

    t = torch.empty(tuple(shape), dtype=torch.float32)
    if ".lora_B." in name:
        return t.zero_()
    g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little"))
    return torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=g)


def is_lora_param(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def init_lora(model, seed: int) -> None:
    """Re-draw every LoRA parameter with :func:`lora_init_value`."""
    import torch

    with torch.no_grad():
        for name, p in unwrap(model).named_parameters():
            if is_lora_param(name):
                p.copy_(lora_init_value(name, p.shape, seed).to(p.device, p.dtype))


def release_frozen(model) -> int:
    """Drop every frozen parameter and buffer of a trained ``model`` to the meta device; returns the bytes
    freed. What follows training reads only the trained parameters (the merge and the "after" evaluation
    read the source checkpoint for the rest), so the NF4 base, the embedding and the head go before the
    layer-streamed evaluation reads the source: the model cannot run forward afterwards."""
    import torch

    from ..memory import trim

    freed, seen = 0, set()
    for mod in unwrap(model).modules():
        for store in (mod._parameters, mod._buffers):
            for name, t in list(store.items()):
                if t is None or t.device.type == "meta" or (store is mod._parameters and t.requires_grad):
                    continue
                if t.data_ptr() not in seen:  # a tied head is the embedding
                    seen.add(t.data_ptr())
                    freed += t.numel() * t.element_size()
                empty = torch.empty(t.shape, dtype=t.dtype, device="meta")
                store[name] = torch.nn.Parameter(empty, requires_grad=False) if store is mod._parameters else empty
        if getattr(mod, "quant_state", None) is not None:  # NF4 absmax and code tables (surgeon.train.quant)
            mod.quant_state = None
    trim()
    log.info("released %.2f GiB of frozen weights after training", freed / 2**30)
    return freed


def unwrap(model, peft: bool = False):
    """The module inside DDP / accelerate wrappers; with ``peft=True`` also inside a peft model
    (the Hugging Face ``*ForCausalLM`` its adapters wrap)."""
    while hasattr(model, "module") and not hasattr(model, "peft_config") and not hasattr(model, "config"):
        model = model.module
    if peft and hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def trainable_state(model) -> dict:
    """``{parameter name: tensor}`` of every trainable parameter (detached, contiguous, on CPU)."""
    return {n: p.detach().to("cpu").contiguous() for n, p in unwrap(model).named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict) -> None:
    """Copy a :func:`trainable_state` back into ``model`` (names must match exactly)."""
    import torch

    params = {n: p for n, p in unwrap(model).named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(state))
    extra = sorted(set(state) - set(params))
    if missing or extra:
        raise UsageError(
            f"the checkpoint's trainable weights do not match this model ({len(missing)} missing, {len(extra)} unexpected, "
            f"e.g. {(missing or extra)[0]})",
            "resume with the same model, --method, --rank and --target-modules, or start a fresh run",
        )
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state[n].to(p.device, p.dtype))
