"""A GGUF model as a float safetensors checkpoint, written tensor by tensor (``surgeon import-gguf``).

The files are byte for byte what transformers writes when it loads the GGUF whole
(``from_pretrained(folder, gguf_file=...)``) and saves it (``save_pretrained``), built from the same
pieces of transformers, one tensor at a time:

- the config: ``AutoConfig.from_pretrained(gguf_file=...)``, and the model class built from it on the
  meta device (no weights), whose config and generation config are written as ``save_pretrained`` does;
- the names: transformers' GGUF -> model name map (``get_gguf_hf_weights_map``) and the
  architecture's ``TensorProcessor`` (Llama's q/k un-permutation, Gemma's norm offset);
- the values: gguf-py's ``dequantize`` (:class:`~surgeon.io.gguf_tensors.GgufTensors`), cast as the
  legacy loader casts (``torch.from_numpy(w).to(dtype)``), then to the parameter's dtype;
- which tensors, in which file: the model's state dict less its tied weights, in the order
  ``save_pretrained`` splits it (huggingface_hub's split at its 50 GB default), each file's tensors in
  safetensors' order (by dtype, then by name), written with the streaming writer (:mod:`.writer`).

A tensor whose transform treats each row on its own (every one but Llama's q/k) is streamed in blocks
of rows, so what is resident is one block of one tensor, never the model. Architectures whose GGUF
tensors transformers merges (MoE experts), or converts through its newer GGUF integration, are
loaded whole instead (:func:`write_whole`, the reference the streamed path is tested against).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..units import dtype_code
from .gguf_tensors import GgufTensors
from .writer import OutTensor, write_shards, write_tensor

MAX_SHARD_BYTES = 50 * 10**9  # save_pretrained's default max_shard_size ("50GB"): the layout it writes
BLOCK_BYTES = 32 << 20  # float32 bytes dequantized at a time when a tensor is streamed in blocks of rows
# safetensors writes a file's tensors by dtype, in this order (then by name): its Dtype enum, descending
SAFETENSORS_DTYPE_ORDER = ("U64", "I64", "F64", "C64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16",
                           "F8_E4M3", "F8_E5M2", "I8", "U8", "BOOL")


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: its name, dtype and shape, the GGUF tensor it comes from, and how it is read."""

    out: OutTensor
    source: str  # the GGUF tensor's name
    dtype: Any  # the model parameter's torch.dtype (what the whole-model load stored)
    row_blocks: bool  # its transform acts on each row alone: read and written a block of rows at a time


@dataclass
class GgufImportPlan:
    """Everything written, laid out before any tensor is read (see :func:`plan_import`)."""

    model: Any  # the model on the meta device: its config and generation config are written
    dtype: Any  # the torch.dtype the weights were asked in (the loader's cast)
    processor: Any  # transformers' TensorProcessor for the architecture
    key_mapping: dict[str, str]  # GGUF tensor name -> model name, as transformers maps them
    parsed: dict  # {"config": the GGUF metadata as transformers parses it}: what a processor may read
    shards: list[list[PlannedTensor]]  # files in order, each file's tensors in order
    max_shard_bytes: int
    total_size: int
    num_parameters: int


def not_streamable(tensors: GgufTensors) -> str | None:
    """Why the GGUF file's tensors cannot be converted one at a time (None: they can)."""
    from transformers import modeling_gguf_pytorch_utils as legacy

    try:
        from transformers.integrations.gguf.utils import is_gguf_arch_supported
    except ImportError:  # a transformers without its own GGUF integration: every architecture is legacy
        def is_gguf_arch_supported(_arch: str) -> bool:
            return False

    architecture = tensors.architecture
    if tensors.byte_swapped:
        return "the file was written with the other byte order"
    if is_gguf_arch_supported(architecture):
        return f"transformers converts {architecture} GGUF files through its own GGUF integration"
    if legacy.TENSOR_PROCESSORS.get(architecture, legacy.TensorProcessor) not in _one_to_one():
        return f"transformers does not map {architecture} GGUF tensors one to one (it merges experts)"
    return None


def _one_to_one() -> tuple:
    """The TensorProcessors that turn each GGUF tensor into one model tensor of the same name."""
    from transformers import modeling_gguf_pytorch_utils as legacy

    return (legacy.TensorProcessor, legacy.LlamaTensorProcessor, legacy.Gemma2TensorProcessor,
            legacy.NemotronTensorProcessor, legacy.MambaTensorProcessor, legacy.BloomTensorProcessor)


def _rows_independent(processor, name: str) -> bool:
    """Whether ``processor``'s transform of GGUF tensor ``name`` acts on each row alone."""
    from transformers import modeling_gguf_pytorch_utils as legacy

    kind = type(processor)
    if kind is legacy.LlamaTensorProcessor:
        return ".attn_q." not in name and ".attn_k." not in name  # q/k rows are un-permuted within a head
    return kind in (legacy.TensorProcessor, legacy.Gemma2TensorProcessor, legacy.NemotronTensorProcessor)  # w, w - 1


def plan_import(gguf_file: Path, dtype, tensors: GgufTensors, max_shard_bytes: int = MAX_SHARD_BYTES) -> GgufImportPlan:
    """Lay out the checkpoint ``from_pretrained`` + ``save_pretrained`` would write for ``gguf_file`` in
    ``dtype``, from its metadata only (the model is built on the meta device)."""
    import torch
    from huggingface_hub import split_torch_state_dict_into_shards
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers import modeling_gguf_pytorch_utils as legacy
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    gguf_file = Path(gguf_file)
    config = AutoConfig.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    # the processors' config, as the loader parses it; its tokenizer half (the vocabulary) is let go
    parsed = {"config": legacy.load_gguf_checkpoint(str(gguf_file), return_tensors=False)["config"]}
    processor = legacy.TENSOR_PROCESSORS.get(tensors.architecture, legacy.TensorProcessor)(config=parsed["config"])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    key_mapping = legacy.get_gguf_hf_weights_map(model, processor)

    state = remove_tied_weights_from_state_dict(model.state_dict(), model)
    # from_pretrained keeps the weight conversions that matched a loaded name; the GGUF loader hands over
    # model names, which none matches, and save_pretrained's revert then only puts the names in natural order
    model._weight_conversions = []
    reverted = revert_weight_conversion(model, state)
    if set(reverted) != set(state):
        raise CheckpointError(f"transformers renames {tensors.architecture} weights when it saves them",
                              "this architecture is not supported by import-gguf yet")
    state = reverted

    sources = {hf: name for name, hf in key_mapping.items() if name in tensors.tensors}
    missing = [k for k in state if k not in sources]
    if missing:
        raise CheckpointError(f"{gguf_file.name} has no tensor for {missing[0]}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                              "the file is incomplete, or its architecture is not the one it states")
    split = split_torch_state_dict_into_shards(state, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=max_shard_bytes)
    rank = {code: i for i, code in enumerate(SAFETENSORS_DTYPE_ORDER)}
    shards = []
    for names in split.filename_to_tensors.values():
        planned = []
        for name in names:
            t, src = state[name], tensors.tensors[sources[name]]
            code = dtype_code(t.dtype)
            out = OutTensor(name, code, tuple(t.shape), t.numel() * t.element_size())
            row_blocks = len(out.shape) > 1 and src.shape == out.shape and _rows_independent(processor, src.name)
            planned.append(PlannedTensor(out, src.name, t.dtype, row_blocks))
        shards.append(sorted(planned, key=lambda p: (rank.get(p.out.dtype, len(rank)), p.out.name)))
    return GgufImportPlan(model, dtype, processor, key_mapping, parsed, shards, max_shard_bytes,
                          split.metadata["total_size"], model.num_parameters())


def write_streamed(plan: GgufImportPlan, tensors: GgufTensors, folder: Path) -> tuple[Any, int]:
    """Write ``plan``'s weights (reading ``tensors``, opened), index, config and generation config into
    ``folder``: (the config written, parameters)."""
    import numpy as np
    import torch

    by_name = {p.out.name: p for shard in plan.shards for p in shard}

    def write_data(t: OutTensor, f) -> None:
        p = by_name[t.name]
        rows = tensors.tensors[p.source].rows
        step = max(1, BLOCK_BYTES // (4 * math.prod(t.shape[1:]))) if p.row_blocks else rows
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            result = plan.processor.process(weights=tensors.read(p.source, start, stop), name=p.source,
                                            tensor_key_mapping=plan.key_mapping, parsed_parameters=plan.parsed)
            if result.name != p.source:
                raise CheckpointError(f"internal error: transformers renamed {p.source} to {result.name}", "please report this")
            value = torch.from_numpy(np.ascontiguousarray(result.weights)).to(plan.dtype).to(p.dtype)
            want = (stop - start, *t.shape[1:]) if p.row_blocks else t.shape
            if tuple(value.shape) != tuple(want):
                raise CheckpointError(f"{tensors.path.name}: {p.source} has shape {tuple(value.shape)}, "
                                      f"the model's {t.name} {tuple(want)}",
                                      "the file's metadata does not match its tensors")
            write_tensor(value, f)

    outs = [p.out for shard in plan.shards for p in shard]
    files, weight_map, _ = write_shards(folder, outs, write_data, plan.max_shard_bytes, {"format": "pt"},
                                        layout=lambda _tensors, _max: [[p.out for p in s] for s in plan.shards])
    if len(files) > 1:  # save_pretrained's index, to the byte
        index = {"metadata": {"total_parameters": plan.num_parameters, "total_size": plan.total_size},
                 "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n",
                                                             encoding="utf-8")
    model = plan.model
    model.config.dtype = str(model.dtype).split(".")[1]  # as save_pretrained sets them
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(folder)
    if model.can_generate():
        model.generation_config.save_pretrained(folder)
    return model.config, plan.num_parameters


def write_whole(gguf_file: Path, folder: Path, dtype, max_shard_bytes: int = MAX_SHARD_BYTES) -> tuple[Any, int]:
    """Load ``gguf_file`` whole through transformers and save it into ``folder``: (config, parameters).

    Needs memory for the whole dequantized model; what :func:`write_streamed` reproduces tensor by tensor."""
    from transformers import AutoModelForCausalLM

    gguf_file = Path(gguf_file)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=dtype)
    except (ValueError, KeyError, IndexError, RuntimeError) as e:
        raise CheckpointError(
            f"transformers cannot read {gguf_file.name}: {str(e).splitlines()[0]}",
            "check that its architecture is supported by transformers' GGUF loader",
        ) from None
    # Drop the GGUF quantization marker: the weights are now plain floats.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if attr in model.__dict__:
            delattr(model, attr)
    model.config.dtype = dtype
    model.save_pretrained(folder, max_shard_size=max_shard_bytes)
    return model.config, sum(p.numel() for p in model.parameters())
