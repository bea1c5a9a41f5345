"""Streaming safetensors writer: shards laid out up front, tensors written one at a time.

Every output tensor's dtype and shape is known from the plan, so each shard's header is written
first and the data streamed after it: raw byte ranges are copied in chunks (no tensor is built),
converted or sliced tensors are materialized one at a time and dropped once written. A header can
reserve blank space so its ``__metadata__`` can be rewritten in place later (see
:func:`update_header_metadata`), which is how the sorted manifest rides in a single-file header.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from .safetensors_header import read_header

COPY_CHUNK = 1 << 20  # 1 MiB per read when copying or hashing raw bytes


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


def exit_aligned_layout(layer_of: Callable[[str], int | None], boundaries: Sequence[int]):
    """A shard layout (``(tensors, max_shard_bytes) -> shards``) in which the shared tensors (those
    ``layer_of`` maps to None: embedding, final norm, LM head) fill the first file(s) and every
    boundary ``k`` (an exit's layer count) falls between two files: the shared files plus the files
    holding layers ``< k`` are exactly the tensors of the first ``k`` layers, so an exit's folder can
    be made of hard links (``surgeon view``). Within a group, shards are split at ``max_shard_bytes``."""
    import bisect

    ends = sorted(set(int(b) for b in boundaries))

    def layout(tensors: Sequence[OutTensor], max_shard_bytes: int) -> list[list[OutTensor]]:
        shared = [t for t in tensors if layer_of(t.name) is None]
        groups: dict[int, list[OutTensor]] = {}
        for t in tensors:
            i = layer_of(t.name)
            if i is not None:
                groups.setdefault(bisect.bisect_right(ends, i), []).append(t)
        shards = layout_shards(shared, max_shard_bytes) if shared else []
        for g in sorted(groups):
            shards.extend(layout_shards(groups[g], max_shard_bytes))
        return shards or [[]]

    return layout


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
    """A write-only output file that hashes (sha256) and counts every byte written to it.

    Hashing runs on the file's own helper thread (hashlib releases the GIL), so it overlaps the
    writes and the other files; jobs run in order, so the digest is that of the file's bytes.
    :meth:`copy_from` copies a byte range of another file inside the kernel (``copy_file_range``:
    no trip through user space) and hashes the same range from the source on the helper thread.
    :meth:`close` queues the fsync behind the hashing and returns at once; :meth:`result` waits.
    """

    def __init__(self, path: Path):
        import hashlib
        from concurrent.futures import ThreadPoolExecutor

        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self._h, self.bytes = hashlib.sha256(), 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="surgeon-hash")
        self._jobs: list = []
        self._kernel_copy = hasattr(os, "copy_file_range")

    def write(self, data) -> int:
        mv = memoryview(data).cast("B")
        job = self._pool.submit(self._h.update, mv)  # hashed while it is written; caller keeps data alive
        self._write_all(mv)
        job.result()
        self.bytes += len(mv)
        return len(mv)

    def copy_from(self, src_path: Path, begin: int, nbytes: int) -> None:
        """Append ``nbytes`` of ``src_path`` from offset ``begin``."""
        with open(src_path, "rb") as src:
            done = 0
            while done < nbytes and self._kernel_copy:
                try:
                    k = os.copy_file_range(src.fileno(), self._fd, nbytes - done, begin + done)
                except OSError as e:
                    if done or e.errno not in _NO_KERNEL_COPY:
                        raise
                    self._kernel_copy = False  # another file system or an old kernel: copy in chunks
                    break
                if k == 0:
                    break
                done += k
            if done < nbytes and not self._kernel_copy:
                src.seek(begin + done)
                while done < nbytes:
                    chunk = src.read(min(COPY_CHUNK, nbytes - done))
                    if not chunk:
                        break
                    self._write_all(chunk)
                    done += len(chunk)
            if done < nbytes:
                raise CheckpointError(f"{Path(src_path).name} ended early while copying", "the source is truncated; re-download it")
        self._jobs.append(self._pool.submit(self._hash_range, Path(src_path), begin, nbytes))
        self.bytes += nbytes

    def _write_all(self, data) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            view = view[os.write(self._fd, view):]

    def _hash_range(self, path: Path, begin: int, nbytes: int) -> None:
        buf = memoryview(bytearray(min(COPY_CHUNK, nbytes) or 1))
        fd = os.open(path, os.O_RDONLY)
        try:
            done = 0
            while done < nbytes:
                k = os.preadv(fd, [buf[: nbytes - done]], begin + done)
                if k == 0:
                    raise CheckpointError(f"{path.name} ended early while copying", "the source is truncated; re-download it")
                self._h.update(buf[:k])
                done += k
        finally:
            os.close(fd)

    def tell(self) -> int:
        return self.bytes

    def close(self) -> None:
        """Queue the fsync (behind the hashing) and the close; returns without waiting."""
        self._jobs.append(self._pool.submit(os.fsync, self._fd))
        self._jobs.append(self._pool.submit(self._close_fd))
        self._pool.shutdown(wait=False)

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def result(self) -> str:
        """Wait for the hashing, fsync and close; the file's sha256 (re-raises what they raised)."""
        self._pool.shutdown(wait=True)
        for job in self._jobs:
            job.result()
        return self._h.hexdigest()

    def abort(self) -> None:
        """Stop after the queued jobs and close the file (on an error: the caller removes the output)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._close_fd()


_NO_KERNEL_COPY = {getattr(errno, n) for n in ("EXDEV", "ENOSYS", "EINVAL", "EOPNOTSUPP", "ENOTSUP", "EBADF", "EPERM")
                   if hasattr(errno, n)}


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
    layout: Callable | None = None,
) -> tuple[list[str], dict[str, str], list[WrittenFile]]:
    """Write ``tensors`` into shards under ``folder``. ``write_data(t, fileobj)`` writes ``t.nbytes`` bytes.

    ``single_file_metadata`` is added to the header's ``__metadata__`` when everything fits one file.
    ``layout``: how tensors are split into files (default :func:`layout_shards`; see
    :func:`exit_aligned_layout`).
    Returns (file names, weight_map, the files as written with their sha256). A single shard is
    ``model.safetensors``; more get an index written by the caller (see :func:`write_index`).
    """
    shards = (layout or layout_shards)(tensors, max_shard_bytes)
    names = shard_names(len(shards))
    if len(shards) == 1 and single_file_metadata:
        metadata = {**(metadata or {}), **single_file_metadata}
    weight_map: dict[str, str] = {}
    files: list[HashingWriter] = []
    try:
        for fname, shard in zip(names, shards):
            f = HashingWriter(folder / fname)
            files.append(f)
            f.write(encode_header(shard, metadata, reserve if len(shards) == 1 else 0))
            for t in shard:
                start = f.tell()
                write_data(t, f)
                if f.tell() - start != t.nbytes:
                    raise CheckpointError(f"internal error: wrote {f.tell() - start} bytes for {t.name}, expected {t.nbytes}",
                                          "please report this")
                weight_map[t.name] = fname
            f.close()  # its hashing and fsync finish in the background while the next shard is written
        written = [WrittenFile(fname, f.bytes, f.result()) for fname, f in zip(names, files)]
    except BaseException:
        for f in files:
            f.abort()
        raise
    return names, weight_map, written


def write_index(folder: Path, weight_map: dict[str, str], total_size: int, metadata: dict | None = None) -> None:
    meta = {"total_size": total_size}
    meta.update(metadata or {})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": meta, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n",
        encoding="utf-8",
    )


def copy_range(src_path: Path, begin: int, nbytes: int, out: HashingWriter) -> None:
    """Copy ``nbytes`` from ``src_path`` at ``begin`` into ``out`` (see :meth:`HashingWriter.copy_from`)."""
    out.copy_from(src_path, begin, nbytes)


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
