"""Where a manifest lives: the ``sorted_manifest.json`` sidecar and the copy in the safetensors header.

Write order (SPEC.md, "Where it lives"): (1) the header copy (the manifest without ``weights``,
compact JSON, or a pointer when larger than :data:`HEADER_LIMIT`) goes into ``__metadata__`` of a
single ``model.safetensors`` or into the index's ``metadata``; (2) the weight files are hashed as
they now are; (3) the sidecar is written last, so its presence commits the output.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..io.checkpoint import INDEX_FILE, SINGLE_FILE
from ..io.safetensors_header import read_header
from ..io.writer import update_header_metadata
from ..provenance import sha256_file
from .model import FORMAT, FORMAT_VERSION, HEADER_KEY, HEADER_LIMIT, MANIFEST_FILE, ManifestError
from .validate import validate_manifest

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # a sidecar larger than this is refused before it is read


def dumps(manifest: dict) -> str:
    """The canonical sidecar text: 2-space indent, sorted keys, ASCII, trailing newline."""
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def header_form(manifest: dict) -> str:
    """The compact copy carried in a header: no ``weights``, sorted keys, no whitespace."""
    return json.dumps({k: v for k, v in manifest.items() if k != "weights"}, sort_keys=True, separators=(",", ":"))


def header_value(manifest: dict) -> str:
    """What goes under :data:`HEADER_KEY`: the compact copy, or a pointer when it exceeds 64 KB."""
    text = header_form(manifest)
    return text if len(text.encode("utf-8")) <= HEADER_LIMIT else pointer_value(manifest)


def parse(raw: bytes | str, where: str) -> Any:
    """Strict JSON parse that turns every failure into a :class:`ManifestError`."""
    hint = "regenerate it with `surgeon manifest MODEL --in-place`"
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ManifestError(f"{where} is not UTF-8", hint) from None
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ManifestError(f"{where} nests JSON too deeply", hint) from None
    except ValueError as e:
        raise ManifestError(f"{where} is not valid JSON ({str(e).splitlines()[0][:80]})", hint) from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def pointer_value(manifest: dict) -> str:
    text = header_form(manifest)
    return json.dumps({"format": FORMAT, "format_version": manifest.get("format_version", FORMAT_VERSION),
                       "pointer": MANIFEST_FILE, "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()},
                      sort_keys=True, separators=(",", ":"))


def stamp_header(folder: Path, value: str | None, fallback: str | None = None) -> str:
    """Put ``value`` (None: remove) under HEADER_KEY in the header; returns where it went."""
    index = folder / INDEX_FILE
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
        meta.pop(HEADER_KEY, None)
        if value is not None:
            meta[HEADER_KEY] = value
        data["metadata"] = meta
        tmp = index.with_name(index.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, index)
        return INDEX_FILE
    single = folder / SINGLE_FILE
    if not single.is_file():
        return ""
    meta = dict(read_header(single).metadata)
    meta.pop(HEADER_KEY, None)
    meta.setdefault("format", "pt")
    if value is not None:
        meta[HEADER_KEY] = value
    if update_header_metadata(single, meta):
        return SINGLE_FILE
    if fallback is not None and fallback != value:  # the copy (escaped as a string) does not fit: point instead
        meta[HEADER_KEY] = fallback
        if update_header_metadata(single, meta):
            return SINGLE_FILE
    log.warning("%s has no room left in its header for the manifest copy; only %s carries it",
                SINGLE_FILE, MANIFEST_FILE)
    return ""


def weight_files(folder: Path) -> list[str]:
    index = folder / INDEX_FILE
    if index.is_file():
        wm = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        return sorted(set(wm.values()))
    return [SINGLE_FILE] if (folder / SINGLE_FILE).is_file() else sorted(p.name for p in folder.glob("*.safetensors"))


def write_manifest(folder: str | Path, manifest: dict, written: list | None = None) -> dict:
    """Stamp the header copy, hash the weight files, write the sidecar last. Returns the final manifest.

    ``written``: the weight files as the writer produced them (``.name``, ``.bytes``, ``.sha256``),
    their headers already carrying this manifest's copy: nothing is stamped or read back."""
    folder = Path(folder)
    m = {k: v for k, v in manifest.items() if k != "weights"}
    validate_manifest(m, header_copy=True)
    if written is not None:
        stamped = "the header as written"
        files = [{"name": w.name, "bytes": w.bytes, "sha256": w.sha256} for w in written]
    else:
        stamped = stamp_header(folder, header_value(m), pointer_value(m))
        files = [{"name": f, "bytes": (folder / f).stat().st_size, "sha256": sha256_file(folder / f)}
                 for f in weight_files(folder)]
    m["weights"] = {"files": files}
    validate_manifest(m)
    tmp = folder / (MANIFEST_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(dumps(m))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST_FILE)
    log.info("wrote %s (header copy in %s)", folder / MANIFEST_FILE, stamped or "no header")
    return m


def read_sidecar(folder: str | Path) -> dict | None:
    """The parsed sidecar, or None when the folder has none (no validation)."""
    p = Path(folder) / MANIFEST_FILE
    if not p.is_file():
        return None
    if p.stat().st_size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{MANIFEST_FILE} is larger than {MAX_MANIFEST_BYTES} bytes", "this is not a manifest")
    return parse(p.read_bytes(), MANIFEST_FILE)


def read_header_copy(folder: str | Path, metadata: dict | None = None) -> tuple[Any, str] | None:
    """``(parsed value, where)`` of the header copy: from the index metadata, else a single file's header."""
    folder = Path(folder)
    if metadata is None:
        index = folder / INDEX_FILE
        if index.is_file():
            data = parse(index.read_bytes(), INDEX_FILE)
            metadata = data.get("metadata") if isinstance(data, dict) else None
            where = INDEX_FILE
        elif (folder / SINGLE_FILE).is_file():
            metadata, where = read_header(folder / SINGLE_FILE).metadata, SINGLE_FILE
        else:
            return None
    else:
        where = "header"
    if not isinstance(metadata, dict) or HEADER_KEY not in metadata:
        return None
    value = metadata[HEADER_KEY]
    if isinstance(value, str):
        value = parse(value, f"the {HEADER_KEY} entry of {where}")
    return value, where


def is_pointer(value: Any) -> bool:
    return isinstance(value, dict) and "pointer" in value


def read_manifest(folder: str | Path, metadata: dict | None = None) -> tuple[dict, list[str]] | None:
    """The checkpoint's manifest (sidecar first, else the full header copy), validated; None if absent.

    Returns ``(manifest, warnings)``. A header pointer without its sidecar is an error. ``metadata``: the
    single weight file's header metadata when the file is not in the folder (a hub model not downloaded).
    """
    data = read_sidecar(folder)
    if data is None:
        found = read_header_copy(folder, metadata)
        if found is None:
            return None
        data, where = found
        if is_pointer(data):
            raise ManifestError(f"the header of {where} points to {MANIFEST_FILE}, which is missing",
                                f"copy {MANIFEST_FILE} back beside the weights")
        return data, validate_manifest(data, header_copy=True)
    return data, validate_manifest(data)

