"""Checkpoint -> manifest -> exit: the one way an exit request becomes an exit of a checkpoint.

``surgeon.load``, ``surgeon extract --exit``, ``surgeon view --exit``, ``surgeon generate --exit``
(:class:`surgeon.runtime.SortedModel`) and ``surgeon eval --exit`` all read the manifest through
:func:`checkpoint_manifest` and turn the request into an exit with :func:`surgeon.exits.resolve_exit`;
:func:`resolve_checkpoint_exit` is the two steps in one call.

Reader policy: **strict**. The manifest (the sidecar, else the header copy) is read by the validating
reader, and one that fails validation (malformed, a newer ``format_version``, a required feature this
reader lacks, a ``base.num_layers`` that is not the checkpoint's) raises
:class:`~surgeon.manifest.model.ManifestError`, the same one-line error for every request that reads
it. SPEC.md requires it (a reader MUST refuse a newer version or an unknown required feature and MUST
reject an invalid manifest), and an exit read from a manifest decides which tensors are read and which
config is written: read tolerantly, a broken manifest would give a wrong model without a word. Unknown
keys are logged as warnings (SPEC: readers SHOULD warn). An explicit exit (an
:class:`~surgeon.exits.ExitSpec` or a ``{"layers", "widths"?}`` dict) needs no manifest and does not
read it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..exits import ExitSpec, resolve_exit
from ..io.checkpoint import Checkpoint
from .model import ManifestError
from .store import read_manifest

log = logging.getLogger(__name__)


def _open(checkpoint: str | Path | Checkpoint) -> Checkpoint:
    return checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.open(checkpoint)


def checkpoint_manifest(checkpoint: str | Path | Checkpoint) -> dict | None:
    """The checkpoint's validated manifest (sidecar, else the full header copy); None when it has none.

    Raises :class:`ManifestError` for a manifest that fails validation (see the module doc)."""
    ckpt = _open(checkpoint)
    found = read_manifest(ckpt.path, remote_header_metadata(ckpt))
    if found is None:
        return None
    data, warnings = found
    for w in warnings:
        log.warning("sorted manifest of %s: %s", ckpt.path, w)
    if data["base"]["num_layers"] != ckpt.num_layers:
        raise ManifestError(f"sorted manifest: base.num_layers is {data['base']['num_layers']} but config.json has "
                            f"{ckpt.num_layers} layers", "regenerate the manifest with `surgeon manifest MODEL --in-place`")
    return data


def remote_header_metadata(ckpt: Checkpoint) -> dict | None:
    """The single weight file's header metadata of a hub model whose weight file is not downloaded (where a
    header copy of the manifest may live), else None (the folder's own files are read)."""
    if ckpt.hub is None or ckpt.sharded or (ckpt.path / ckpt.files[0]).is_file():
        return None
    return ckpt.file_metadata.get(ckpt.files[0])


@dataclass
class ResolvedExit:
    """An exit of a checkpoint and the manifest it was resolved against.

    ``exit``: kept layers, widths, and the manifest's name when it is one of the manifest's exits.
    ``manifest``: the checkpoint's validated manifest (None: it has none, or the exit was explicit).
    """

    exit: ExitSpec
    manifest: dict | None = None

    @property
    def entry(self) -> dict | None:
        """The manifest's record of this exit (its config, cost, quality), when it is one of its exits."""
        for e in (self.manifest or {}).get("exits", []):
            if (e["name"] == self.exit.name and list(e["layers"]) == list(self.exit.layers)
                    and (e.get("widths") or None) == (self.exit.widths or None)):
                return e
        return None


def resolve_checkpoint_exit(checkpoint: str | Path | Checkpoint, exit: str | int | ExitSpec | Mapping | None = None,
                            *, max_params: float | None = None, max_flops: float | None = None) -> ResolvedExit:
    """The exit of ``checkpoint`` that ``exit`` asks for: a manifest exit name, a layer count K (layers
    0..K-1), a narrowed prefix ``K:ffn=F[:heads=H]``, an explicit exit, None (the full model), or the
    largest manifest exit within ``max_params`` / ``max_flops``.

    Raises :class:`ManifestError` for a manifest that fails validation and
    :class:`~surgeon.errors.UsageError` for an unknown name, a count outside 1..L or a budget no exit fits.
    """
    ckpt = _open(checkpoint)
    manifest = None if isinstance(exit, (ExitSpec, Mapping)) else checkpoint_manifest(ckpt)
    choice = resolve_exit(exit, ckpt.num_layers, manifest["exits"] if manifest else (), config=ckpt.text_config,
                          max_params=max_params, max_flops=max_flops, where=str(ckpt.path))
    return ResolvedExit(choice, manifest)


def full_width_exits(checkpoint: str | Path | Checkpoint) -> dict[str, list[int]]:
    """``name -> kept layers`` of the manifest's full-width exits ({} without a manifest): the exits one
    loaded model serves on its shared weights (``generate``, ``eval``). Exits with reduced widths are
    left out: their tensors must be sliced (extract them)."""
    manifest = checkpoint_manifest(checkpoint)
    out: dict[str, list[int]] = {}
    for e in (manifest or {}).get("exits", []):
        if e.get("widths"):
            log.info("manifest exit %s has reduced widths; not served from the shared weights", e["name"])
            continue
        out[e["name"]] = list(e["layers"])
    return out


def recorded_exits(folder: str | Path, num_layers: int) -> tuple[int, ...]:
    """Prefix exits recorded in the checkpoint: its sorted manifest, else the latest provenance entry
    that lists ``exits`` (``soft``), else :func:`surgeon.exits.default_exits`."""
    from ..exits import default_exits, parse_depths, prefix_depth
    from ..provenance import read_chain

    depths = sorted({d for d in (prefix_depth(v) for v in full_width_exits(folder).values()) if d})
    if depths:
        return tuple(depths)
    for entry in reversed(read_chain(Path(folder))):
        if entry.get("exits"):
            return parse_depths([int(n) for n in entry["exits"]], num_layers)
    return default_exits(num_layers)
