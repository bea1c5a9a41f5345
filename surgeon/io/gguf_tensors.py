"""A GGUF file's tensors, read and dequantized a block of rows at a time (gguf-py).

gguf-py's :class:`gguf.GGUFReader` parses the tensor table; its memory map of the file is dropped
once the table is read, and tensor bytes are read with ``pread`` into a fresh buffer instead: a
mapping's touched pages count towards the process's resident memory until it is unmapped, so reading
a whole file through one leaves the whole file resident. Here only the rows asked for are.

Values are gguf-py's ``gguf.quants.dequantize`` of the raw blocks, as transformers' GGUF loader
computes them (float32; blocks never span two rows, so a block of rows dequantizes on its own).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError


@dataclass(frozen=True)
class GgufTensor:
    """Where one tensor lives in the file and how it is stored (gguf-py's view of it)."""

    name: str
    ggml_type: int  # a gguf.GGMLQuantizationType value
    shape: tuple[int, ...]  # numpy order, rows first: the dequantized array's shape
    raw_shape: tuple[int, ...]  # numpy order, rows first; in bytes on the last axis for block types
    raw_dtype: np.dtype  # the items of raw_shape (uint8 for block types)
    offset: int  # from the start of the file
    nbytes: int

    @property
    def rows(self) -> int:
        """Rows along the first axis (1 for a 1-D tensor: read whole)."""
        return self.shape[0] if len(self.shape) > 1 else 1

    @property
    def type_name(self) -> str:
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType(self.ggml_type).name


class GgufTensors:
    """The tensor table of ``path`` and :meth:`read`, which dequantizes a block of rows of one tensor.

    Use as a context manager (the file stays open between reads)."""

    def __init__(self, path: str | Path):
        from gguf import GGUFReader

        self.path = Path(path)
        reader = GGUFReader(self.path)
        self.byte_swapped = reader.byte_order != "I"  # written on a machine of the other endianness
        self.architecture: str = reader.fields["general.architecture"].contents()
        self.tensors: dict[str, GgufTensor] = {
            t.name: GgufTensor(t.name, int(t.tensor_type), tuple(int(d) for d in reversed(t.shape.tolist())),
                               tuple(int(d) for d in t.data.shape), t.data.dtype, int(t.data_offset), int(t.n_bytes))
            for t in reader.tensors
        }
        del reader  # and with it the memory map: nothing of the file stays mapped
        self._fd: int | None = None

    def __enter__(self) -> GgufTensors:
        self._fd = os.open(self.path, os.O_RDONLY)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of tensor ``name``, dequantized (float32; a 1-D tensor is read whole)."""
        from gguf import GGMLQuantizationType, dequantize

        t = self.tensors[name]
        if self.byte_swapped:
            raise CheckpointError(f"{self.path.name} was written with the other byte order", "convert it on this machine")
        stop = t.rows if stop is None else stop
        row_bytes = t.nbytes // t.rows
        buf = np.empty((stop - start) * row_bytes, dtype=np.uint8)
        self._pread(buf, t.offset + start * row_bytes)
        shape = (stop - start, *t.raw_shape[1:]) if len(t.shape) > 1 else t.raw_shape
        raw = buf.view(t.raw_dtype).reshape(shape)
        try:
            return dequantize(raw, GGMLQuantizationType(t.ggml_type))
        except NotImplementedError:
            raise CheckpointError(f"{self.path.name} holds {t.type_name} tensors ({name}), which gguf-py cannot dequantize",
                                  "requantize it with llama.cpp to a common type (Q8_0, Q4_K_M, F16)") from None

    def _pread(self, buf: np.ndarray, offset: int) -> None:
        if self._fd is None:
            raise RuntimeError("GgufTensors.read outside its `with` block")
        view, done = memoryview(buf), 0
        while done < len(view):
            k = os.preadv(self._fd, [view[done:]], offset + done)
            if k == 0:
                raise CheckpointError(f"{self.path.name} ended early", "the file is truncated; download it again")
            done += k
