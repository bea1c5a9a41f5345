import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from surgeon.errors import CheckpointError
from surgeon.io.safetensors_header import MAX_HEADER_BYTES, read_header


def _write(path, header: bytes, data: bytes = b""):
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def test_reads_valid_file(tmp_path):
    p = tmp_path / "m.safetensors"
    save_file({"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}, str(p), metadata={"format": "pt"})
    h = read_header(p)
    assert h.tensors["a"].shape == (2, 3) and h.tensors["a"].dtype == "F32" and h.tensors["a"].nbytes == 24
    assert h.tensors["b"].dtype == "BF16" and h.tensors["b"].numel == 4
    assert h.metadata == {"format": "pt"}


def _entry(dtype="F32", shape=(2,), offs=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offs)}


# Each case: (header bytes, data bytes, substring of the error) and why it is invalid.
BAD = [
    (b"", b"", "header"),  # zero-length header is not a JSON object
    (b"[1, 2]", b"", "not a JSON object"),  # header must be an object
    (b"\xff\xfe{}", b"", "not UTF-8"),  # header must be UTF-8
    (b"{\"a\": ", b"", "not JSON"),  # truncated JSON
    (b"[" * 100000 + b"]" * 100000, b"", "nested too deeply"),  # deep JSON must not crash
    (json.dumps({"a": _entry(dtype="F17")}).encode(), b"\0" * 8, "unknown dtype"),
    (json.dumps({"a": _entry(shape=(-1,))}).encode(), b"\0" * 8, "invalid shape"),
    (json.dumps({"a": _entry(offs=(8, 0))}).encode(), b"\0" * 8, "invalid data_offsets"),
    (json.dumps({"a": _entry(offs=(0, 4))}).encode(), b"\0" * 8, "shape needs"),  # span != numel*itemsize
    (json.dumps({"a": _entry(offs=(0, 8))}).encode(), b"\0" * 4, "truncated"),  # data shorter than offsets
    (json.dumps({"a": _entry(), "b": _entry()}).encode(), b"\0" * 8, "overlaps"),  # two tensors, same bytes
    (json.dumps({"a": _entry(offs=(8, 16))}).encode(), b"\0" * 16, "gap"),  # bytes before the first tensor
    (json.dumps({"a": _entry()}).encode(), b"\0" * 12, "after the last tensor"),  # trailing bytes
    (json.dumps({"__metadata__": {"k": 1}}).encode(), b"", "__metadata__"),  # metadata values must be strings
]


@pytest.mark.parametrize("header,data,msg", BAD)
def test_rejects_invalid_headers(tmp_path, header, data, msg):
    p = _write(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(CheckpointError, match=msg):
        read_header(p)


def test_huge_declared_length_is_refused_before_reading(tmp_path):
    p = tmp_path / "huge.safetensors"
    p.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}")
    with pytest.raises(CheckpointError, match="above the"):
        read_header(p)


def test_declared_length_past_end(tmp_path):
    p = tmp_path / "short.safetensors"
    p.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(CheckpointError, match="truncated"):
        read_header(p)


def test_shorter_than_prefix(tmp_path):
    p = tmp_path / "tiny.safetensors"
    p.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="8-byte"):
        read_header(p)
