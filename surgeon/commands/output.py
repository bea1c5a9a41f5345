"""The one "write an output" path of the command layer: execute a plan, then stamp its sorted manifest.

Every command that writes a checkpoint (prune, extract, sort-width, heal, soft, manifest -o) goes
through :func:`write_output`: the streaming executor writes the tensors, config, side files and
provenance into a temp folder, and its ``finalize`` hook (:class:`surgeon.manifest.stamp.OutputStamp`)
builds the sorted manifest from the planned output before the shards are written (the exits given,
the full model always added), so the header carries its copy from the first byte and the sidecar
records the hashes taken while writing: no output file is read back. Verification records (models up
to 150M parameters unless ``verify`` says otherwise) load the written model, deliberately.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..progress import Progress
from ..surgery.execute import DEFAULT_MAX_SHARD_BYTES, ExecuteResult, execute
from ..surgery.plan import Plan, plan_layers


def write_output(plan: Plan, out: str | Path, *, force: bool = False, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                 transforms: dict[str, Callable] | None = None, extra_provenance: dict | None = None,
                 progress: Progress | None = None, exits: list[dict] | None = None,
                 verify: bool | None = None, align: bool = True, replace_source: bool = False) -> ExecuteResult:
    """Stream ``plan`` to ``out`` (see :func:`surgeon.surgery.execute`) and stamp its manifest.

    ``exits``: the output's exits as ``{"name", "layers", "widths"?, "quality"?}`` with ``layers``
    indexing the OUTPUT model's layers (default: the full model only, which is always added).
    ``align`` (default): when the exits include prefixes shorter than the model, write exit-aligned
    shards (:func:`exit_layout`), so ``surgeon view`` can link any of them.
    """
    from ..loading import load
    from ..manifest.stamp import OutputStamp

    layout = exit_layout(plan, exits) if align else None
    return execute(plan, out, force=force, max_shard_bytes=max_shard_bytes, transforms=transforms,
                   extra_provenance=extra_provenance, progress=progress, finalize=OutputStamp(exits, verify, load),
                   layout=layout, replace_source=replace_source)


def prefix_boundaries(exits: list[dict] | None, num_layers: int) -> list[int]:
    """The layer counts of the prefix exits (layers ``0..k-1``, any widths) shorter than the model."""
    from ..exits import prefix_depth

    depths = {prefix_depth(e.get("layers") or []) for e in exits or []}
    return sorted(k for k in depths if k is not None and k < num_layers)


def exit_layout(plan: Plan, exits: list[dict] | None):
    """The exit-aligned shard layout of ``plan``'s output for ``exits`` (None when no prefix exit is
    shorter than the model: the plain layout)."""
    from ..arch.registry import get_family, resolve_family
    from ..errors import ArchitectureError
    from ..io.writer import exit_aligned_layout

    n = len(plan.kept_layers)
    ends = prefix_boundaries(exits, n)
    if not ends:
        return None
    try:
        family = get_family(plan.family)
    except (ArchitectureError, KeyError):  # an inferred family: find it again from the output
        family = resolve_family(plan.config.get("text_config") or plan.config, [t.name for t in plan.tensors])

    def layer_of(name: str) -> int | None:
        split = family.split_layer_name(name)
        return split[0] if split else None

    return exit_aligned_layout(layer_of, [*ends, n])


def save_merged(model, source: str | Path, out: str | Path, *, operation: str = "heal", dtype: str | None = None,
                options: dict | None = None, trained: dict | None = None, **kwargs) -> ExecuteResult:
    """Write ``model`` (a peft LoRA model, or a fully fine-tuned one) as a plain checkpoint: the source's
    tensors streamed to ``out`` with the training merged in (:func:`surgeon.train.merge.merge_transforms`:
    LoRA deltas added to the original float weights). ``dtype`` converts floats (default: keep the
    source's); ``trained``: the trainable parameters gathered in full when ``model`` is sharded (FSDP);
    other keyword arguments go to :func:`write_output`."""
    from ..io.checkpoint import Checkpoint
    from ..train.merge import merge_transforms

    ckpt = Checkpoint.open(source)
    plan = plan_layers(ckpt, list(range(ckpt.num_layers)), operation, dtype, options or {})
    return write_output(plan, out, transforms=merge_transforms(model, ckpt, trained), **kwargs)
