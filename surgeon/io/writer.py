"""Streaming safetensors writer: shards laid out up front, tensors written one at a time.

Every output tensor's dtype and shape is known from the plan, so each shard's header is written
first and the data streamed after it: raw byte ranges are copied in chunks (no tensor is built),
converted or sliced tensors are materialized one at a time and dropped once written. A header can
reserve blank space so its ``__metadata__`` can be rewritten in place later (see
:func:`update_header_metadata`), which is how the sorted manifest rides in a single-file header.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from .safetensors_header import read_header

COPY_CHUNK = 1 << 24  # 16 MiB per read when copying raw bytes


@dataclass(frozen=True)
class OutTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def layout_shards(tensors: Sequence[OutTensor], max_shard_bytes: int) -> list[list[OutTensor]]:
    """Greedy, order-preserving split into shards of at most ``max_shard_bytes`` (a larger tensor gets its own)."""
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def shard_names(n: int) -> list[str]:
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def encode_header(tensors: Sequence[OutTensor], metadata: dict[str, str] | None, reserve: int = 0) -> bytes:
    """The header bytes (length prefix included), padded with spaces to a multiple of 8 (+ ``reserve``)."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    off = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [off, off + t.nbytes]}
        off += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    pad = (-(len(raw) + reserve)) % 8 + reserve
    raw += b" " * pad
    return struct.pack("<Q", len(raw)) + raw


class HashingWriter:
    """A write-only file that hashes (sha256) and counts every byte as it is written."""

    def __init__(self, f):
        import hashlib

        self._f, self._h, self.bytes = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        mv = memoryview(data).cast("B")
        self._h.update(mv)
        self.bytes += len(mv)
        return self._f.write(mv)

    def tell(self) -> int:
        return self.bytes

    def hexdigest(self) -> str:
        return self._h.hexdigest()


@dataclass(frozen=True)
class WrittenFile:
    """A file as written: its name, size and sha256 (hashed while writing: nothing is read back)."""

    name: str
    bytes: int
    sha256: str


def write_shards(
    folder: Path,
    tensors: Sequence[OutTensor],
    write_data: Callable[[OutTensor, object], None],
    max_shard_bytes: int,
    metadata: dict[str, str] | None = None,
    reserve: int = 0,
    single_file_metadata: dict[str, str] | None = None,
) -> tuple[list[str], dict[str, str], list[WrittenFile]]:
    """Write ``tensors`` into shards under ``folder``. ``write_data(t, fileobj)`` writes ``t.nbytes`` bytes.

    ``single_file_metadata`` is added to the header's ``__metadata__`` when everything fits one file.
    Returns (file names, weight_map, the files as written with their sha256). A single shard is
    ``model.safetensors``; more get an index written by the caller (see :func:`write_index`).
    """
    shards = layout_shards(tensors, max_shard_bytes)
    names = shard_names(len(shards))
    if len(shards) == 1 and single_file_metadata:
        metadata = {**(metadata or {}), **single_file_metadata}
    weight_map: dict[str, str] = {}
    written = []
    for fname, shard in zip(names, shards):
        path = folder / fname
        with open(path, "wb") as raw:
            f = HashingWriter(raw)
            f.write(encode_header(shard, metadata, reserve if len(shards) == 1 else 0))
            for t in shard:
                start = f.tell()
                write_data(t, f)
                if f.tell() - start != t.nbytes:
                    raise CheckpointError(f"internal error: wrote {f.tell() - start} bytes for {t.name}, expected {t.nbytes}",
                                          "please report this")
                weight_map[t.name] = fname
            raw.flush()
            os.fsync(raw.fileno())
        written.append(WrittenFile(fname, f.bytes, f.hexdigest()))
    return names, weight_map, written


def write_index(folder: Path, weight_map: dict[str, str], total_size: int, metadata: dict | None = None) -> None:
    meta = {"total_size": total_size}
    meta.update(metadata or {})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": meta, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n",
        encoding="utf-8",
    )


def copy_range(src_path: Path, begin: int, nbytes: int, out) -> None:
    """Copy ``nbytes`` from ``src_path`` at ``begin`` into the open file ``out``, in chunks."""
    with open(src_path, "rb") as f:
        f.seek(begin)
        left = nbytes
        while left:
            chunk = f.read(min(COPY_CHUNK, left))
            if not chunk:
                raise CheckpointError(f"{src_path.name} ended early while copying", "the source is truncated; re-download it")
            out.write(chunk)
            left -= len(chunk)


def write_tensor(t, out) -> None:
    """Write a torch tensor's bytes (little-endian, C order) without an intermediate copy."""
    t = t.detach().contiguous().cpu()
    if t.numel() == 0:
        return
    out.write(t.reshape(-1).view(__import__("torch").uint8).numpy().data)


def update_header_metadata(path: Path, metadata: dict[str, str]) -> bool:
    """Rewrite the ``__metadata__`` of a safetensors file in place, within its reserved space.

    Returns False (file untouched) when the new header does not fit the existing one.
    """
    header = read_header(path)
    obj: dict = {"__metadata__": metadata} if metadata else {}
    for name, info in sorted(header.tensors.items(), key=lambda kv: kv[1].begin):
        base = 8 + header.header_bytes
        obj[name] = {"dtype": info.dtype, "shape": list(info.shape), "data_offsets": [info.begin - base, info.end - base]}
    raw = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    if len(raw) > header.header_bytes:
        return False
    raw += b" " * (header.header_bytes - len(raw))
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())
    return True
