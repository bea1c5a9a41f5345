"""Plans: pure data saying what an output checkpoint holds, built from headers + config only.

A :class:`Plan` lists, for every output tensor, its source tensor, dtype, shape and any gather
along dimensions (width surgery and permutations), plus the complete new config. Prune,
extract-depth, extract-width and "load exit k" are all plans; :func:`~.execute.execute` streams
any of them. Plans never touch a weight and print with ``--dry-run``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..arch.registry import Family, resolve_family
from ..errors import CheckpointError, UsageError
from ..io.checkpoint import Checkpoint
from ..units import FLOAT_CODES, dtype_bytes, dtype_code, torch_name
from .config import config_diff, slice_layers_config


@dataclass(frozen=True)
class TensorOp:
    """One output tensor: ``src`` read, gathered along dims by ``select``, cast to ``dtype``."""

    name: str
    src: str
    dtype: str
    shape: tuple[int, ...]
    # (dim, indices) gathers applied in order; empty for a plain copy.
    select: tuple[tuple[int, tuple[int, ...]], ...] = ()
    src_dtype: str = ""

    @property
    def nbytes(self) -> int:
        n = dtype_bytes(self.dtype)
        for d in self.shape:
            n *= d
        return n

    @property
    def raw_copy(self) -> bool:
        """True when the bytes can be copied verbatim (no gather, no cast)."""
        return not self.select and self.dtype == self.src_dtype


@dataclass(frozen=True)
class Plan:
    source: str
    operation: str
    family: str
    num_source_layers: int
    kept_layers: tuple[int, ...]
    tensors: tuple[TensorOp, ...]
    config: dict
    source_config: dict
    dropped: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)

    @property
    def dropped_layers(self) -> list[int]:
        kept = set(self.kept_layers)
        return [i for i in range(self.num_source_layers) if i not in kept]

    @property
    def out_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def num_parameters(self) -> int:
        n = 0
        for t in self.tensors:
            k = 1
            for d in t.shape:
                k *= d
            n += k
        return n

    def config_diff(self) -> dict[str, tuple[Any, Any]]:
        return config_diff(self.source_config, self.config)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "operation": self.operation,
            "family": self.family,
            "num_source_layers": self.num_source_layers,
            "kept_layers": list(self.kept_layers),
            "dropped_layers": self.dropped_layers,
            "num_tensors": len(self.tensors),
            "num_parameters": self.num_parameters,
            "out_bytes": self.out_bytes,
            "dropped_tensors": len(self.dropped),
            "config_diff": {k: {"old": o, "new": n} for k, (o, n) in self.config_diff().items()},
            "options": self.options,
        }


def normalize_dtype(dtype: str | None) -> str | None:
    """The safetensors code of an output dtype option (None: keep each tensor's own)."""
    if dtype is None:
        return None
    code = dtype_code(dtype)
    if code not in FLOAT_CODES:
        raise UsageError(f"output dtype {dtype!r} is not a float type", "use bf16, fp16 or fp32")
    return code


def _out_dtype(src_dtype: str, dtype: str | None) -> str:
    return dtype if dtype and src_dtype in FLOAT_CODES else src_dtype


def check_config_matches_tensors(ckpt: Checkpoint, fam: Family) -> None:
    """Refuse a checkpoint whose config.json disagrees with its tensors (layer count, embedding shape)."""
    L = ckpt.num_layers
    seen = set()
    for name in ckpt.tensors:
        split = fam.split_layer_name(name)
        if split is not None:
            seen.add(split[0])
    if seen and seen != set(range(L)):
        have = max(seen) + 1
        missing = sorted(set(range(L)) - seen)
        detail = f"tensors for layers 0..{have - 1}" if not missing or missing[0] >= have else f"no tensors for layer {missing[0]}"
        raise CheckpointError(f"config.json says num_hidden_layers={L} but the checkpoint has {detail}",
                              "the config and the tensors disagree; fix num_hidden_layers in config.json")
    cfg = ckpt.text_config
    emb = ckpt.tensors.get(f"{fam.embed}.weight")
    hidden, vocab = cfg.get("hidden_size"), cfg.get("vocab_size")
    if emb is not None and len(emb.shape) == 2:
        if isinstance(hidden, int) and emb.shape[1] != hidden:
            raise CheckpointError(f"config.json says hidden_size={hidden} but {emb.name} has shape {list(emb.shape)}",
                                  "the config and the tensors disagree; fix hidden_size in config.json")
        if isinstance(vocab, int) and emb.shape[0] != vocab:
            raise CheckpointError(f"config.json says vocab_size={vocab} but {emb.name} has shape {list(emb.shape)}",
                                  "the config and the tensors disagree; fix vocab_size in config.json")


def plan_layers(
    ckpt: Checkpoint,
    keep: Sequence[int],
    operation: str,
    dtype: str | None = None,
    options: dict | None = None,
    family: Family | None = None,
) -> Plan:
    """The plan that keeps source layers ``keep`` (in that order), renumbered 0..k-1."""
    L = ckpt.num_layers
    keep = [int(i) for i in keep]
    if not keep:
        raise UsageError("the plan keeps no layers", "keep at least one layer")
    if len(set(keep)) != len(keep):
        raise UsageError("a layer is kept twice", "list each kept layer once")
    bad = [i for i in keep if not 0 <= i < L]
    if bad:
        raise UsageError(f"layer {bad[0]} does not exist (the model has layers 0..{L - 1})", "choose layers inside the model")
    fam = family or resolve_family(ckpt.text_config, ckpt.tensors)
    check_config_matches_tensors(ckpt, fam)
    out_dtype = normalize_dtype(dtype)
    new_index = {src: dst for dst, src in enumerate(keep)}

    ops: list[TensorOp] = []
    dropped: list[str] = []
    layer_ops: dict[int, list[TensorOp]] = {i: [] for i in range(len(keep))}
    head: list[TensorOp] = []
    tail: list[TensorOp] = []
    for name, info in ckpt.tensors.items():
        split = fam.split_layer_name(name)
        if split is None:
            op = TensorOp(name, name, _out_dtype(info.dtype, out_dtype), info.shape, (), info.dtype)
            (head if name.startswith(fam.embed + ".") else tail).append(op)
            continue
        i, rest = split
        if i >= L:
            raise UsageError(f"tensor {name} belongs to layer {i} but the config has {L} layers",
                             "the config and the tensors disagree; fix num_hidden_layers")
        if i not in new_index:
            dropped.append(name)
            continue
        j = new_index[i]
        layer_ops[j].append(TensorOp(fam.layer_prefix(j) + rest, name, _out_dtype(info.dtype, out_dtype),
                                     info.shape, (), info.dtype))
    for j in range(len(keep)):
        ops.extend(sorted(layer_ops[j], key=lambda o: o.name))
    ops = head + ops + tail

    cfg = dict(ckpt.config)
    if ckpt.text_config is not ckpt.config:
        cfg["text_config"] = slice_layers_config(ckpt.text_config, fam, keep)
    else:
        cfg = slice_layers_config(cfg, fam, keep)
    if out_dtype:
        target = torch_name(out_dtype)
        for k in ("dtype", "torch_dtype"):
            if k in cfg:
                cfg[k] = target
        if "dtype" not in cfg and "torch_dtype" not in cfg:
            cfg["dtype"] = target
    return Plan(
        source=ckpt.source, operation=operation, family=fam.name, num_source_layers=L,
        kept_layers=tuple(keep), tensors=tuple(ops), config=cfg, source_config=ckpt.config,
        dropped=tuple(dropped), options=dict(options or {}, dtype=dtype),
    )


def plan_prune(ckpt: Checkpoint, start: int, n: int, allow_last: bool = False, dtype: str | None = None,
               options: dict | None = None) -> Plan:
    """Drop the contiguous block of ``n`` layers that starts at layer ``start`` (0-based)."""
    L = ckpt.num_layers
    if n < 1:
        raise UsageError(f"--n must be at least 1 (got {n})", "give the number of layers to drop")
    if n >= L:
        raise UsageError(f"--n {n} would drop every layer (the model has {L})", f"choose --n below {L}")
    if start < 0:
        raise UsageError(f"--start must be >= 0 (got {start})", "layers are numbered from 0")
    if start + n > L:
        raise UsageError(
            f"the block {start}..{start + n - 1} runs past the last layer ({L - 1})",
            f"choose --start <= {L - n}",
        )
    if start + n == L and not allow_last:
        raise UsageError(
            f"the block {start}..{start + n - 1} drops the final layer, which the pruning paper shows must be kept",
            f"choose --start <= {L - n - 1}, or pass --allow-last",
        )
    keep = [i for i in range(L) if not start <= i < start + n]
    return plan_layers(ckpt, keep, "prune", dtype, dict(options or {}, start=start, n=n, allow_last=allow_last))


def plan_extract_depth(ckpt: Checkpoint, depth: int, dtype: str | None = None, options: dict | None = None) -> Plan:
    """Keep layers 0..depth-1 with the shared final norm and LM head."""
    L = ckpt.num_layers
    if not 1 <= depth <= L:
        raise UsageError(f"--depth {depth} is outside 1..{L}", f"the model has {L} layers")
    return plan_layers(ckpt, list(range(depth)), "extract", dtype, dict(options or {}, depth=depth))
