"""Provenance: the chain of operations that produced a checkpoint.

Every surgeon output carries ``surgeon_provenance.json``: the source's chain (if any) plus one
entry for the operation that wrote it (its name, options, data, seeds and results). The sorted
manifest embeds the same list.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

from . import __version__

PROVENANCE_FILE = "surgeon_provenance.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_chain(folder: Path | str) -> list[dict]:
    """The operations recorded in ``folder`` (a checkpoint folder or hub model ID); [] when none."""
    from .hub import lookup

    repo = lookup(folder)
    p = (repo.folder if repo is not None else Path(folder)) / PROVENANCE_FILE
    if not p.is_file():
        return []
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, OSError, UnicodeDecodeError):
        return []
    ops = data.get("operations") if isinstance(data, dict) else None
    return ops if isinstance(ops, list) else []


def operation(name: str, source: Path | str | None, options: dict, **extra: Any) -> dict:
    """One provenance entry."""
    return {
        "operation": name,
        "source": str(source) if source is not None else None,
        "options": options,
        "surgeon_version": __version__,
        "time": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        **extra,
    }


def write_chain(folder: Path, source: Path | None, entry: dict) -> list[dict]:
    chain = (read_chain(source) if source else []) + [entry]
    (Path(folder) / PROVENANCE_FILE).write_text(
        json.dumps({"operations": chain}, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8"
    )
    return chain
