"""Read and validate a safetensors header without touching tensor data.

The format (https://github.com/huggingface/safetensors#format): 8 bytes little-endian u64 ``N``,
then ``N`` bytes of UTF-8 JSON mapping tensor names to ``{"dtype", "shape", "data_offsets"}``
(offsets relative to the byte buffer that follows the header) plus an optional ``__metadata__``
object of string to string. We parse it ourselves so that every malformed file ends in a
:class:`CheckpointError` that names the file, and so the declared length is bounded *before*
anything is allocated.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from ..units import DTYPE_TABLE

# Same bound as the safetensors crate: a header larger than this is refused before it is read.
MAX_HEADER_BYTES = 100_000_000

DTYPE_BYTES = {code: nbytes for code, (nbytes, _) in DTYPE_TABLE.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, from the header alone."""

    name: str
    dtype: str  # safetensors dtype string, e.g. "BF16"
    shape: tuple[int, ...]
    file: str  # file name relative to the checkpoint folder
    begin: int  # absolute byte offset in the file
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_bytes: int
    file_size: int


def _bad(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path.name} is not a valid safetensors file ({what})",
        "re-download or re-export the file; surgeon never reads a damaged file",
    )


def read_header(path: str | os.PathLike, name: str | None = None) -> SafetensorsHeader:
    """Parse and validate the header of one ``.safetensors`` file.

    Checks: the declared length fits the file and the bound, the JSON is an object, every entry
    has a known dtype, a shape of non-negative ints and offsets whose length matches
    ``numel * itemsize``, and the entries tile the data buffer exactly (no gaps, overlaps or
    trailing bytes), as the safetensors spec requires.
    """
    path = Path(path)
    name = name or path.name
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            n = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
            raw = f.read(n) if n <= MAX_HEADER_BYTES and 8 + n <= size else b""
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}", "check the path and its permissions") from None
    return parse_header(prefix + raw, size, name, path)


def parse_header(head: bytes, size: int, name: str, path: str | os.PathLike | None = None) -> SafetensorsHeader:
    """Parse and validate a header from ``head`` (the file's first ``8 + N`` bytes) and the file's ``size``:
    the same checks as :func:`read_header`, for a header read without the file (a hub range read)."""
    path = Path(path if path is not None else name)
    prefix = head[:8]
    if len(prefix) < 8:
        raise _bad(path, "shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", prefix)
    if n > MAX_HEADER_BYTES:
        raise _bad(path, f"declares a {n}-byte header, above the {MAX_HEADER_BYTES}-byte limit")
    if 8 + n > size:
        raise _bad(path, f"declares a {n}-byte header but the file has {size} bytes: truncated")
    raw = head[8:8 + n]
    if len(raw) != n:
        raise _bad(path, f"declares a {n}-byte header but only {len(raw)} bytes of it were read")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _bad(path, "header is not UTF-8") from None
    except RecursionError:
        raise _bad(path, "header JSON is nested too deeply") from None
    except ValueError as e:
        raise _bad(path, f"header is not JSON: {e.msg} at byte {e.pos}") from None
    if not isinstance(obj, dict):
        raise _bad(path, "header is not a JSON object")

    metadata = obj.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _bad(path, "__metadata__ must map strings to strings")

    data_start = 8 + n
    data_len = size - data_start
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for key, entry in obj.items():
        if not isinstance(entry, dict):
            raise _bad(path, f"entry {key!r} is not an object")
        dtype, shape, offs = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_BYTES:
            raise _bad(path, f"tensor {key!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise _bad(path, f"tensor {key!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(type(o) is int and o >= 0 for o in offs)
            or offs[0] > offs[1]
        ):
            raise _bad(path, f"tensor {key!r} has invalid data_offsets {offs!r}")
        expected = math.prod(shape) * DTYPE_BYTES[dtype]
        if offs[1] - offs[0] != expected:
            raise _bad(path, f"tensor {key!r} spans {offs[1] - offs[0]} bytes but its shape needs {expected}")
        if offs[1] > data_len:
            raise _bad(path, f"tensor {key!r} ends at byte {offs[1]} past the end of the data: truncated")
        spans.append((offs[0], offs[1], key))
        tensors[key] = TensorInfo(key, dtype, tuple(shape), name, data_start + offs[0], data_start + offs[1])

    spans.sort()
    cursor = 0
    for begin, end, key in spans:
        if begin != cursor:
            what = "overlaps another tensor" if begin < cursor else "leaves a gap before it"
            raise _bad(path, f"tensor {key!r} {what}")
        cursor = end
    if cursor != data_len:
        raise _bad(path, f"{data_len - cursor} bytes after the last tensor")
    return SafetensorsHeader(path, tensors, metadata, n, size)
