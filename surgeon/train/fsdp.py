"""Sharded training on PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``), for ``--fsdp``.

The engine is PyTorch's own; this module only says how surgeon uses it:

- **Sharding** (:func:`shard`): ``fully_shard`` on every decoder layer, on an untied embedding and on
  the LM head with the final norm, then on the root (a tied embedding / head and anything left), as
  torchtune's and torchtitan's recipes do. Parameters,
  gradients and AdamW state are split along dim 0 across the processes; each layer is gathered for
  its forward and backward only. LoRA adapters (peft) shard with their layer (frozen base weights
  and trainable adapters may share a group: FSDP2 handles ``requires_grad=False`` parameters).
  On a GPU with bf16, :class:`~torch.distributed.fsdp.MixedPrecisionPolicy` computes in bf16 and
  reduces gradients in fp32 over the fp32 master weights; on CPU everything stays fp32. The head and
  final norm (or the root, when the head is tied to the embedding) stay gathered between forward and
  backward, so SoFT's multi-exit loss, which reads every exit through them after the forward, uses
  the gathered head without an extra all-gather; exit capture hooks sit on layer *outputs*
  (activations) and never touch parameters.
- **Checkpoints** (:func:`save_shards`, :func:`load_shards`): sharded, with
  ``torch.distributed.checkpoint`` (DCP) in its Hugging Face safetensors storage: every process writes
  its own shard of the trainable parameters and of the optimizer state, nothing is gathered, and
  the reader builds its plan from the safetensors headers, so resuming never unpickles anything
  (DCP's default file format keeps its metadata as a pickle). The optimizer's non-tensor state
  (hyper-parameters per parameter group) goes to ``optimizer.json``. DCP could also load on another
  number of processes; surgeon still asks for the same number (the data order depends on it).
- **The output** (:func:`gather_trained`): after training every process takes part in gathering each
  trainable parameter (``DTensor.full_tensor``, one at a time); the main process keeps it on the CPU
  (LoRA adapters in fp32, fully trained weights in the output's dtype: 2 bytes per parameter at
  bf16) and streams the merged checkpoint through the usual writer.

- **CPU offload** (``--fsdp-offload``): ``CPUOffloadPolicy`` keeps every unit's shards of the parameters,
  gradients and AdamW state in (pinned) CPU memory; FSDP2 copies a unit to the GPU for its forward and
  backward, and the optimizer step runs on the CPU. GPU processes then launch with gloo beside NCCL
  (``cuda:nccl,cpu:gloo``) for the collectives on CPU tensors (the gradient norm); gathering the output
  moves each shard to its GPU first. This is what fits full SoFT of a 13B model on 8 x 32 GB GPUs.

A 4-bit NF4 base is not sharded: bitsandbytes' ``Params4bit`` needs ``bnb_4bit_quant_storage`` and a
GPU to live under FSDP, and that path has not been tested here, so ``--fsdp --quant nf4`` is refused
with a one-line error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UsageError

LAUNCH_HINT = ("start one process per device: torchrun --nproc_per_node N -m surgeon heal|soft ... --fsdp "
               "(or accelerate launch --num_processes N -m surgeon ...)")
SHARDS = "shards"
OPTIMIZER_JSON = "optimizer.json"


def require_launch() -> int:
    """The number of processes of this launch; a one-line error when ``--fsdp`` runs without a launcher."""
    world = os.environ.get("WORLD_SIZE")
    if world is None or "RANK" not in os.environ:
        raise UsageError("--fsdp shards the model over several processes, and this is a single process", LAUNCH_HINT)
    return int(world)


def check_setup(setup) -> None:
    if setup.quant == "nf4":
        raise UsageError("--fsdp cannot shard a 4-bit NF4 base (bitsandbytes needs quant_storage on a GPU; untested here)",
                         "add --quant none (LoRA on the float base, sharded), or drop --fsdp: one 80 GB GPU holds "
                         "the NF4 base of a 70B model")


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def mixed_precision(device):
    """bf16 compute with fp32 gradient reduction on GPUs that support bf16; None (fp32) elsewhere."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return None


def shard(model, family, device, offload: bool = False):
    """``fully_shard`` every decoder layer of ``model`` (a transformers or peft model), then the root.
    ``offload``: every unit keeps its shards in CPU memory (``CPUOffloadPolicy``). Returns the root
    (the same object, now an ``FSDPModule``)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    from .model import unwrap

    mp = mixed_precision(device)
    kwargs = {"mp_policy": mp} if mp is not None else {}
    if offload:  # pinned host memory makes the host-to-GPU copies asynchronous
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")
    base = unwrap(model, peft=True)
    embed, head = base.get_submodule(family.embed), base.get_submodule(family.lm_head)
    if embed.weight is not head.weight:  # untied: the embedding and the head are units of their own
        fully_shard(embed, **kwargs)  # gathered for its forward only:
        embed.set_unshard_in_backward(False)  # an embedding's backward needs no weights
        # the head (and final norm) stay gathered from the forward to the backward: the multi-exit
        # loss reads every exit through them after the forward
        fully_shard([head, base.get_submodule(family.final_norm)], reshard_after_forward=False, **kwargs)
    for layer in base.get_submodule(family.layers):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)  # the rest (a tied embedding = head, norms, rotary tables)
    return model


def load_sharded(path: str | Path, setup, family, device, offload: bool = False):
    """The checkpoint at ``path`` trainable as ``setup`` says (full fine-tuning, or LoRA on the float
    base), sharded over the launched processes, never whole on any of them: the model is built with
    empty (meta) parameters, sharded, given this process's storage (``to_empty``), and then each
    tensor is read from the checkpoint one at a time and only this process's slice kept. LoRA
    adapters get :func:`surgeon.train.model.lora_init_value` (the one-process run's values).
    ``offload``: the shards live in CPU memory (FSDP2 copies each unit to ``device`` for its forward
    and backward); buffers (rotary tables), which FSDP does not manage, live on ``device``."""
    import torch
    from torch.distributed.tensor import DTensor, distribute_tensor

    from ..arch.skeleton import checked_tensor, meta_model
    from ..devices import compute_dtype
    from ..memory import trim
    from .merge import PEFT_PREFIX
    from .model import is_lora_param, lora_config, lora_init_value, resolve_targets, unwrap

    device = torch.device(device)
    dtype = torch.float32 if setup.method == "full" else compute_dtype(device)
    ckpt, _, model = meta_model(path, dtype, device)
    if family.lm_head + ".weight" not in ckpt.tensors:  # tied before sharding: the tie survives fully_shard
        model.get_submodule(family.lm_head).weight = model.get_submodule(family.embed).weight
    model.config.use_cache = False
    gc_kwargs = {"use_reentrant": False}
    if setup.method == "full":
        model.requires_grad_(True)
        if setup.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
    else:
        from peft import get_peft_model

        targets = resolve_targets(setup, family, model)
        model.requires_grad_(False)
        if setup.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
            model.enable_input_require_grads()
        model = get_peft_model(model, lora_config(setup, targets))
    buffers = dict(unwrap(model).named_buffers(remove_duplicate=False))  # real values (rotary tables); to_empty drops them
    shard(model, family, device, offload)
    model.to_empty(device="cpu" if offload else device)
    base = unwrap(model)
    with torch.no_grad():
        for name, b in buffers.items():
            owner, _, key = name.rpartition(".")
            setattr(base.get_submodule(owner), key, b.to(device))  # on the compute device, also when offloaded
        for i, (name, p) in enumerate(base.named_parameters()):  # a tied head comes once, as the embedding
            if is_lora_param(name):
                full = lora_init_value(name, p.shape, setup.seed)
            else:
                key = (name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name).replace(".base_layer.", ".")
                full = checked_tensor(ckpt, key, p.shape)
            full = full.to(device=device, dtype=p.dtype)
            if isinstance(p, DTensor):
                p.to_local().copy_(distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local())
            else:
                p.copy_(full)
            del full
            if i % 8 == 7:
                trim()
    model.train()
    return model


def clip_grad_norm(params, max_norm: float):
    """``clip_grad_norm_`` over sharded gradients (the norm of the whole gradient, not of one shard)."""
    import torch
    from torch.distributed.tensor import DTensor

    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, flatten_optimizer_state_dict=True)


def _split(model, optimizer) -> tuple[dict, dict]:
    """(tensors to save or load in place, the optimizer's other values), with sharded DTensors."""
    import torch
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer, options=_options())
    tensors = {f"model.{k}": v for k, v in msd.items()}
    values = {}
    for k, v in osd.items():
        if isinstance(v, torch.Tensor):
            tensors[f"optim.{k}"] = v
        else:
            values[k] = v
    return tensors, values


def _unique(tensors: dict) -> dict:
    """One entry per tensor object: tied weights (embedding = LM head) appear under two names, and
    loading in place into one of them fills both."""
    from torch.distributed.tensor import DTensor

    seen, out = set(), {}
    for k, v in tensors.items():
        local = v.to_local() if isinstance(v, DTensor) else v
        key = (local.data_ptr(), tuple(local.shape)) if local.numel() else ("empty", k)
        if key not in seen:
            seen.add(key)
            out[k] = v
    return out


def save_shards(folder: Path, model, optimizer, main: bool) -> None:
    """Write this process's shard of the trainable parameters and the optimizer state into ``folder``
    (a collective: every process calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    tensors, values = _split(model, optimizer)
    dcp.save(_unique(tensors), storage_writer=HuggingFaceStorageWriter(str(folder / SHARDS), save_distributed=True))
    if main:
        (folder / OPTIMIZER_JSON).write_text(json.dumps(values, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def load_shards(folder: Path, model, optimizer) -> None:
    """Load what :func:`save_shards` wrote into the sharded ``model`` and ``optimizer`` (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import set_state_dict

    if not (folder / SHARDS).is_dir() or not (folder / OPTIMIZER_JSON).is_file():
        raise UsageError(f"cannot resume from {folder}: it is not a sharded (--fsdp) checkpoint",
                         "resume with the launch and options of the interrupted run, or delete the checkpoint folder")
    tensors, values = _split(model, optimizer)
    dcp.load(_unique(tensors), storage_reader=HuggingFaceStorageReader(str(folder / SHARDS)))
    saved = json.loads((folder / OPTIMIZER_JSON).read_text(encoding="utf-8"))
    for k, v in values.items():
        if k in saved:
            values[k] = tuple(saved[k]) if isinstance(v, tuple) else saved[k]
    msd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    osd = {k[len("optim."):]: v for k, v in tensors.items() if k.startswith("optim.")}
    osd.update(values)
    set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd, options=_options())


def gather_trained(model, main: bool, full_dtype=None) -> dict | None:
    """``{parameter name: full tensor on the CPU}`` of every trainable parameter, on the main process
    (None elsewhere). A collective: one all-gather per parameter, in the same order on every process.
    ``full_dtype`` casts fully trained weights as they arrive (LoRA adapters stay fp32)."""
    import torch
    from torch.distributed.tensor import DTensor

    from .model import is_lora_param, unwrap

    out: dict = {}
    with torch.no_grad():
        for name, p in unwrap(model).named_parameters():
            if not p.requires_grad:
                continue
            if isinstance(p, DTensor) and p.device.type != p.device_mesh.device_type:
                p = p.to(p.device_mesh.device_type)  # a CPU-offloaded shard is gathered on its GPU
            full = p.full_tensor() if isinstance(p, DTensor) else p.detach()
            if main:
                out[name] = full.to("cpu", torch.float32 if is_lora_param(name) or full_dtype is None else full_dtype)
            del full
    return out if main else None
