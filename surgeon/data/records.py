"""Records from a data spec: ``{"text": ...}`` or ``{"instruction", "input", "output"}``.

Roles: ``train``, ``eval`` and ``all``. Hub specs with both splits serve ``train`` from the train
split and ``eval``/``all`` from the validation split (or the ``@SPLIT`` given). Local files and
train-only hub datasets (alpaca) hold out a deterministic slice: records 0, 20, 40, ... are
``eval``, the rest ``train``, and ``all`` is every record. So a held-out slice is never trained on.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Iterable, Iterator

from ..errors import DataError
from .spec import HELDOUT_EVERY, LOCAL_HINT, DataSpec, parse_data_spec

log = logging.getLogger(__name__)

ROLES = ("all", "train", "eval")
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")


def normalize_record(row: dict, where: str) -> dict:
    """``{"text"}`` or ``{"instruction", "input", "output"}`` from a raw row; DataError otherwise."""
    if not isinstance(row, dict):
        raise DataError(f"{where} is a {type(row).__name__}, not an object",
                        'each record must be {"text": ...} or {"instruction", "input", "output"}')
    text = row.get("text")
    if isinstance(text, str):
        return {"text": text}
    if isinstance(row.get("instruction"), str):
        return {"instruction": row["instruction"], "input": row.get("input") or "", "output": row.get("output") or ""}
    keys = ", ".join(sorted(map(str, row))[:8]) or "no fields"
    raise DataError(f"{where} has neither a text field nor an instruction field (it has {keys})",
                    'give records as {"text": ...} or {"instruction", "input", "output"}')


def _txt(spec: DataSpec) -> Iterator[dict]:
    text = _read_text(spec)
    for doc in _BLANK_LINES.split(text.replace("\r\n", "\n")):
        doc = doc.strip()
        if doc:
            yield {"text": doc}


def _read_text(spec: DataSpec) -> str:
    try:
        data = spec.path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {spec.path}: {e.strerror or e}", "check the path and its permissions") from None
    if not data.strip():
        raise DataError(f"{spec.path} is empty", "give a file with at least one document")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{spec.path} is not UTF-8 text (byte {e.start})", "convert the file to UTF-8") from None


def _jsonl(spec: DataSpec) -> Iterator[dict]:
    seen = False
    try:
        f = open(spec.path, encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot read {spec.path}: {e.strerror or e}", "check the path and its permissions") from None
    with f:
        lineno = 0
        while True:
            try:
                line = f.readline()
            except UnicodeDecodeError:
                raise DataError(f"{spec.path} line {lineno + 1} is not UTF-8", "convert the file to UTF-8") from None
            if not line:
                break
            lineno += 1
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise DataError(f"{spec.path} line {lineno} is not valid JSON ({e.__class__.__name__}: {str(e).splitlines()[0]})",
                                "fix or remove that line (one JSON object per line)") from None
            seen = True
            yield normalize_record(row, f"{spec.path} line {lineno}")
    if not seen:
        raise DataError(f"{spec.path} is empty", "give a .jsonl file with one JSON object per line")


def _json(spec: DataSpec) -> Iterator[dict]:
    text = _read_text(spec)
    try:
        data = json.loads(text)
    except ValueError as e:
        raise DataError(f"{spec.path} is not valid JSON ({str(e).splitlines()[0]})", "fix the file, or use .jsonl") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{spec.path} holds a JSON {type(data).__name__}, not a list of records",
                        'give a list like [{"instruction": ..., "input": ..., "output": ...}, ...]')
    if not data:
        raise DataError(f"{spec.path} is an empty list", "give at least one record")
    for i, row in enumerate(data):
        yield normalize_record(row, f"{spec.path} record {i}")


def _parquet(spec: DataSpec) -> Iterator[dict]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(spec.path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise DataError(f"cannot read {spec.path} as parquet ({e.__class__.__name__})", "check the file") from None
    names = set(pf.schema_arrow.names)
    cols = ["text"] if "text" in names else [c for c in ("instruction", "input", "output") if c in names]
    if not cols or cols[0] not in ("text", "instruction"):
        raise DataError(f"{spec.path} has no text or instruction column (it has {', '.join(sorted(names))})",
                        "give a parquet file with a text column, or instruction/input/output columns")
    if pf.metadata.num_rows == 0:
        raise DataError(f"{spec.path} is empty", "give a file with at least one row")
    for batch in pf.iter_batches(columns=cols, batch_size=1024):
        for i, row in enumerate(batch.to_pylist()):
            yield normalize_record(row, f"{spec.path} row {i}")


_READERS = {"txt": _txt, "jsonl": _jsonl, "json": _json, "parquet": _parquet}


def hub_offline_reason() -> str | None:
    """Why the dataset hub cannot be reached (None when it can): offline env vars or a quick probe."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint + "/api/datasets?limit=1", method="HEAD"),
                               timeout=float(os.environ.get("SURGEON_HUB_PROBE_TIMEOUT", "5")))
    except urllib.error.HTTPError:
        return None  # the server answered
    except Exception as e:  # noqa: BLE001 - any failure to connect means offline for us
        return f"{endpoint} is unreachable ({e.__class__.__name__})"
    return None


def _hub(spec: DataSpec, split: str) -> Iterator[dict]:
    reason = hub_offline_reason()
    if reason:
        raise DataError(f"cannot stream {spec.spec} from the Hugging Face hub: {reason}", LOCAL_HINT)
    import datasets

    try:
        ds = datasets.load_dataset(spec.name, spec.config, split=split, streaming=True)
    except Exception as e:  # noqa: BLE001 - datasets raises many types (connection, missing split, ...)
        msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise DataError(f"cannot load {spec.name} (split {split}) from the hub: {msg}",
                        f"check the name/config/@SPLIT, or {LOCAL_HINT}") from None
    for i, row in enumerate(ds):
        yield normalize_record(row, f"{spec.name} row {i}")


def _raw_records(spec: DataSpec, role: str) -> Iterator[dict]:
    if spec.is_local:
        return _READERS[spec.format](spec)
    return _hub(spec, spec.split_for(role))


def _select(records: Iterable[dict], role: str) -> Iterator[dict]:
    for i, r in enumerate(records):
        held = i % HELDOUT_EVERY == 0
        if role == "all" or (role == "eval") == held:
            yield r


def iter_records(spec: str | DataSpec, role: str = "all", *, shuffle: bool = False, seed: int = 0) -> Iterator[dict]:
    """Records of ``spec`` for ``role`` (``all`` / ``train`` / ``eval``), in file order.

    ``shuffle=True`` gives a seeded permutation of the same records (local files are read whole;
    hub streams are shuffled through a 10,000-record buffer).
    """
    if role not in ROLES:
        raise DataError(f"unknown data role {role!r}", f"use one of {', '.join(ROLES)}")
    spec = parse_data_spec(spec)
    if spec.is_local or not shuffle:
        records = _raw_records(spec, role)
        if spec.heldout_by_slice(role):
            records = _select(records, role)
        if shuffle:
            records = list(records)
            random.Random(seed).shuffle(records)
        yield from records
        return
    # shuffled hub stream: select the role first, then buffer-shuffle
    records = _raw_records(spec, role)
    if spec.heldout_by_slice(role):
        records = _select(records, role)
    rng, buf = random.Random(seed), []
    for r in records:
        buf.append(r)
        if len(buf) >= 10_000:
            yield buf.pop(rng.randrange(len(buf)))
    rng.shuffle(buf)
    yield from buf
