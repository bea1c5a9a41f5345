"""Stamp a checkpoint folder with its sorted manifest, and do it crash-safely in place.

:func:`stamp` is the step every surgeon output ends with (the command layer's output path runs it
inside the temp folder, before the atomic rename; ``surgeon manifest --in-place`` runs it on the
model itself through :func:`write_in_place`, which a killed run cannot leave half-done:
:func:`recover_in_place` restores the previous version on the next run).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..io.checkpoint import INDEX_FILE, Checkpoint
from .build import build_manifest, normalize_exits
from .model import MANIFEST_FILE, ManifestError
from .store import HEADER_KEY, header_value, pointer_value, stamp_header, write_manifest

log = logging.getLogger(__name__)

# Verification loads each exit in float32 (4 bytes per parameter); above this size an output is
# written without it, keeping the streaming executor's about-one-tensor memory promise, and
# `surgeon manifest MODEL --in-place --verify` adds it when the memory is there.
VERIFY_MAX_PARAMETERS = 150_000_000


def default_verify(num_parameters: int, loader: Callable | None) -> bool:
    """``verify=None``: verification records for models up to :data:`VERIFY_MAX_PARAMETERS`, which needs
    a ``loader`` (``surgeon.load``); without one the records are left out, with a warning saying so."""
    if num_parameters > VERIFY_MAX_PARAMETERS:
        return False
    if loader is None:
        log.warning("sorted manifest written without verification records: pass loader=surgeon.load to record "
                    "them (models up to %d parameters get them by default)", VERIFY_MAX_PARAMETERS)
        return False
    return True


def stamp(folder: str | Path, exits: list[dict] | None = None, provenance: list[dict] | None = None,
          verify: bool | None = None, strict: bool = True, loader: Callable | None = None) -> dict | None:
    """Build, verify and write the manifest of the checkpoint in ``folder``; returns the manifest.

    Verification records load each exit with ``loader`` (``surgeon.load``): ``verify=None`` verifies a
    model up to :data:`VERIFY_MAX_PARAMETERS` when a loader is given; ``verify=True`` requires one.
    ``strict=False`` (what every surgeon output uses) turns a checkpoint that format version 1 cannot
    describe (e.g. non-uniform layers) into a warning and no manifest, and a model transformers
    cannot run into a manifest without verification records, instead of failing the whole output.
    """
    ckpt = Checkpoint.open(folder)
    exits = normalize_exits(ckpt, exits)
    try:
        build_manifest(ckpt, exits, provenance)  # structure first: fail before any model is loaded
    except ManifestError as e:
        if strict:
            raise
        log.warning("no sorted manifest written for %s: %s", folder, e)
        return None
    if verify is None:
        verify = default_verify(ckpt.num_parameters, loader)
    if verify and loader is None:
        raise TypeError("verification records load each exit: pass loader=surgeon.load")
    records = {}
    if verify:
        from .verify import verification_record

        vocab = ckpt.text_config["vocab_size"]
        try:
            records = {e["name"]: verification_record(folder, e, vocab, loader) for e in exits}
        except Exception as e:  # noqa: BLE001 - only with strict=False; the manifest is still valid without
            if strict:
                raise
            log.warning("sorted manifest of %s written without verification records: %s", folder, e)
            records = {}
    return write_manifest(folder, build_manifest(ckpt, exits, provenance, records))


class OutputStamp:
    """The :class:`surgeon.surgery.execute.Finalize` of every surgeon output: the manifest is built from
    the planned output before its shards are written, so the single file's header (or the index) is
    written with the manifest copy in it and the files are hashed as they are written; nothing is
    read back. Verification records (models up to :data:`VERIFY_MAX_PARAMETERS`) need the written
    model itself: then the output is loaded, the header re-stamped and hashed, as :func:`stamp` does."""

    def __init__(self, exits: list[dict] | None, verify: bool | None = None, loader: Callable | None = None):
        self.exits, self.verify, self.loader = exits, verify, loader  # loader: surgeon.load, for verification
        self.manifest: dict | None = None

    def header(self, planned: Checkpoint, chain: list) -> dict[str, str]:
        self.chain = chain
        exits = normalize_exits(planned, self.exits)
        try:
            self.manifest = build_manifest(planned, exits, chain)
        except ManifestError as e:
            log.warning("no sorted manifest written for this output: %s", e)
            return {}
        if self.verify is None:
            self.verify = default_verify(planned.num_parameters, self.loader)
        return {} if self.verify else {HEADER_KEY: header_value(self.manifest)}

    def finish(self, folder: Path, written: list) -> None:
        if self.manifest is None:
            return
        if self.verify:
            stamp(folder, self.exits, self.chain, True, strict=False, loader=self.loader)
        else:
            write_manifest(folder, self.manifest, written)


IN_PLACE_BACKUP = ".sorted_manifest.previous-"  # + a random suffix; empty = "there was no manifest"


def recover_in_place(folder: Path) -> bool:
    """Undo what a killed ``manifest --in-place`` left behind; returns True when it did something.

    While an in-place write runs, the previous sidecar lives in a backup file beside it (an empty
    backup means there was none). If the run died before its new sidecar was in place, the
    previous sidecar is restored and the header copy re-stamped from it (the same bytes the
    previous write produced), so the folder is the complete previous version again.
    """
    side = folder / MANIFEST_FILE
    did = False
    for t in sorted(folder.glob(IN_PLACE_BACKUP + "*")):
        did = True
        if side.exists():  # the new sidecar landed: the run had committed
            t.unlink()
            continue
        log.warning("restoring the manifest of %s from an interrupted `manifest --in-place` run", folder)
        previous = t.read_bytes()
        if previous:
            m = json.loads(previous)
            base = {k: v for k, v in m.items() if k != "weights"}
            stamp_header(folder, header_value(base), pointer_value(base))
            os.replace(t, side)
        else:
            stamp_header(folder, None)
            t.unlink()
    for leftover in (folder / (MANIFEST_FILE + ".tmp"), folder / (INDEX_FILE + ".tmp")):
        if leftover.exists():
            leftover.unlink()
            did = True
    return did


def write_in_place(folder: Path, exits: list[dict], verify: bool, loader: Callable | None = None) -> dict:
    """Back up the previous sidecar (so a crash can be undone by :func:`recover_in_place`), then stamp
    (``loader``: ``surgeon.load``, for verification records)."""
    recover_in_place(folder)
    side = folder / MANIFEST_FILE
    fd, tmp = tempfile.mkstemp(prefix=IN_PLACE_BACKUP, dir=folder)
    with os.fdopen(fd, "wb") as f:
        if side.exists():
            f.write(side.read_bytes())
        f.flush()
        os.fsync(f.fileno())
    side.unlink(missing_ok=True)  # no sidecar = "not committed" until the new one lands
    try:
        m = stamp(folder, exits, None, verify, loader=loader)
    except BaseException:
        recover_in_place(folder)
        raise
    os.unlink(tmp)
    return m
