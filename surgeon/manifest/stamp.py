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
from pathlib import Path

from ..io.checkpoint import INDEX_FILE, Checkpoint
from .build import build_manifest, normalize_exits
from .model import MANIFEST_FILE, ManifestError
from .store import _stamp_header, header_value, pointer_value, write_manifest

log = logging.getLogger(__name__)

# Verification loads each exit in float32 (4 bytes per parameter); above this size an output is
# written without it, keeping the streaming executor's about-one-tensor memory promise, and
# `surgeon manifest MODEL --in-place --verify` adds it when the memory is there.
VERIFY_MAX_PARAMETERS = 150_000_000


def stamp(folder: str | Path, exits: list[dict] | None = None, provenance: list[dict] | None = None,
          verify: bool | None = None, strict: bool = True) -> dict | None:
    """Build, verify and write the manifest of the checkpoint in ``folder``; returns the manifest.

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
        verify = ckpt.num_parameters <= VERIFY_MAX_PARAMETERS
    records = {}
    if verify:
        from .verify import verification_record

        vocab = ckpt.text_config["vocab_size"]
        try:
            records = {e["name"]: verification_record(folder, e, vocab) for e in exits}
        except Exception as e:  # noqa: BLE001 - only with strict=False; the manifest is still valid without
            if strict:
                raise
            log.warning("sorted manifest of %s written without verification records: %s", folder, e)
            records = {}
    return write_manifest(folder, build_manifest(ckpt, exits, provenance, records))


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
            _stamp_header(folder, header_value(base), pointer_value(base))
            os.replace(t, side)
        else:
            _stamp_header(folder, None)
            t.unlink()
    for leftover in (folder / (MANIFEST_FILE + ".tmp"), folder / (INDEX_FILE + ".tmp")):
        if leftover.exists():
            leftover.unlink()
            did = True
    return did


def write_in_place(folder: Path, exits: list[dict], verify: bool) -> dict:
    """Back up the previous sidecar (so a crash can be undone by :func:`recover_in_place`), then stamp."""
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
        m = stamp(folder, exits, None, verify)
    except BaseException:
        recover_in_place(folder)
        raise
    os.unlink(tmp)
    return m
