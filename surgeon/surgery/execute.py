"""Execute a :class:`~.plan.Plan`: stream tensors from the source shards into a new checkpoint.

Peak memory is about one tensor (raw copies use a 16 MiB buffer; casts and gathers materialize
one tensor at a time). Output goes to a temp folder beside the target, renamed into place only
when complete; the source is never modified. Outputs are read once, by nobody: each file is
hashed (sha256) as it is written. The executor knows nothing about manifests: a :class:`Finalize`
hook is asked, before any shard is written, for the metadata the output's header (or index) carries
(from the *planned* output: its config and tensor inventory), and is handed the files as written
(names, sizes, hashes) inside the temp folder before the rename (the command layer's output path
stamps the sorted manifest this way, see :mod:`surgeon.commands.output`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..io.atomic import atomic_output
from ..io.checkpoint import Checkpoint
from ..io.safetensors_header import TensorInfo
from ..io.writer import (
    OutTensor,
    WrittenFile,
    copy_range,
    layout_shards,
    shard_names,
    write_index,
    write_shards,
    write_tensor,
)
from ..progress import Progress
from ..provenance import operation, write_chain
from ..units import torch_dtype
from .plan import Plan, TensorOp

DEFAULT_MAX_SHARD_BYTES = 5 * 1000**3
# Blank space kept in a single-file header so the sorted manifest can be stamped in afterwards.
HEADER_RESERVE = 66 * 1024


class Finalize(Protocol):
    """What the output path does around the shards (see module doc)."""

    def header(self, planned: Checkpoint, chain: list) -> dict[str, str]:
        """Metadata for the single file's ``__metadata__`` (or the index's ``metadata``), decided
        from ``planned`` (config, tensors and files of the output, nothing on disk yet)."""

    def finish(self, folder: Path, written: list[WrittenFile]) -> None:
        """Runs last inside the temp folder, with every weight file's size and sha256."""


def planned_checkpoint(folder: Path, config: dict, outs: list[OutTensor], max_shard_bytes: int,
                       layout: Callable | None = None) -> Checkpoint:
    """The output as a :class:`Checkpoint` before it exists: its config, and each tensor's dtype, shape,
    size and file (offsets count from the start of each file's data, the header not yet known)."""
    shards = (layout or layout_shards)(outs, max_shard_bytes)
    files = shard_names(len(shards))
    tensors = {}
    for fname, shard in zip(files, shards):
        off = 0
        for t in shard:
            tensors[t.name] = TensorInfo(t.name, t.dtype, tuple(t.shape), fname, off, off + t.nbytes)
            off += t.nbytes
    return Checkpoint(path=folder, config=config, tensors=tensors, files=files,
                      file_metadata={f: {"format": "pt"} for f in files}, index_metadata={} if len(files) > 1 else None)


@dataclass
class ExecuteResult:
    output: str
    files: list[str]
    num_tensors: int
    num_parameters: int
    bytes_written: int
    seconds: float
    provenance: list[dict] = field(default_factory=list)


def materialize(ckpt: Checkpoint, op: TensorOp, transform: Callable | None = None):
    """The output tensor of ``op`` (read, gathered, transformed, cast)."""
    import torch

    t = ckpt.get_tensor(op.src)
    for dim, idx in op.select:
        t = t.index_select(dim, torch.tensor(idx, dtype=torch.long))
    if transform is not None:
        t = transform(t)
        if tuple(t.shape) != tuple(op.shape):
            raise ValueError(f"transform of {op.name} changed its shape {tuple(op.shape)} -> {tuple(t.shape)}")
    return t.to(torch_dtype(op.dtype))


def execute(
    plan: Plan,
    out: str | Path,
    force: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    transforms: dict[str, Callable] | None = None,
    extra_provenance: dict | None = None,
    progress: Progress | None = None,
    extra_files: dict[str, bytes] | None = None,
    finalize: Finalize | None = None,
    layout: Callable | None = None,
    replace_source: bool = False,
) -> ExecuteResult:
    """Write the checkpoint described by ``plan`` to ``out`` (atomically).

    ``transforms`` maps output tensor names to functions applied to the (gathered) source tensor
    before the cast, e.g. a merged LoRA update. ``extra_provenance`` is merged into the provenance
    entry for this operation (chosen block, distances, losses, ...). ``finalize`` (a
    :class:`Finalize`) adds header metadata before the shards are written and finishes the folder
    after (see module doc). ``layout`` splits the tensors into files (default: in order, at
    ``max_shard_bytes``; :func:`surgeon.io.writer.exit_aligned_layout` for outputs that declare exits).
    ``replace_source``: ``out`` is the source folder itself, rewritten (the source is read to the end
    into a temp folder, which then replaces it in one rename; an interrupted run leaves it as it was).
    """
    t0 = time.time()
    src = Path(plan.source)
    ckpt = Checkpoint.open(src)
    transforms = transforms or {}
    ops = {op.name: op for op in plan.tensors}
    outs = [OutTensor(op.name, op.dtype, op.shape, op.nbytes) for op in plan.tensors]
    total = sum(t.nbytes for t in outs)
    done = 0

    def write_data(t: OutTensor, f) -> None:
        nonlocal done
        op = ops[t.name]
        if op.raw_copy and op.name not in transforms:
            info = ckpt.tensors[op.src]
            copy_range(ckpt.file(info.file), info.begin, info.nbytes, f)
        else:
            write_tensor(materialize(ckpt, op, transforms.get(op.name)), f)
        done += t.nbytes
        if progress:
            progress(done, total, t.name)

    with atomic_output(out, None if replace_source else ckpt.path, force or replace_source) as tmp:
        (tmp / "config.json").write_text(json.dumps(plan.config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for name in ckpt.side_files():
            shutil.copy2(ckpt.path / name, tmp / name)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        entry = operation(
            plan.operation, ckpt.source, plan.options,
            kept_layers=list(plan.kept_layers), dropped_layers=plan.dropped_layers,
            num_source_layers=plan.num_source_layers, **(extra_provenance or {}),
        )
        chain = write_chain(tmp, ckpt.path, entry)
        meta = {}
        if finalize is not None:
            meta = finalize.header(planned_checkpoint(tmp, plan.config, outs, max_shard_bytes, layout), chain) or {}
        files, weight_map, written = write_shards(tmp, outs, write_data, max_shard_bytes, {"format": "pt"},
                                                  HEADER_RESERVE, single_file_metadata=meta, layout=layout)
        if len(files) > 1:
            write_index(tmp, weight_map, total, meta)
        if finalize is not None:
            finalize.finish(tmp, written)
    return ExecuteResult(
        output=str(out), files=files, num_tensors=len(outs), num_parameters=plan.num_parameters,
        bytes_written=total, seconds=time.time() - t0, provenance=chain,
    )
