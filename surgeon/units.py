"""Parsing of human-friendly sizes and counts ("5GB", "1.5e9", "135M")."""

from __future__ import annotations

import re

from .errors import UsageError

_SIZE = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_COUNT = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_size(text: str | int, what: str = "size") -> int:
    """'5GB' -> 5_000_000_000, '512MiB' -> 536870912, 1000 -> 1000."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _SIZE:
        raise UsageError(f"cannot read {what} {text!r}", "use a number with an optional unit: 500MB, 5GB, 2GiB")
    value = int(float(m.group(1)) * _SIZE[m.group(2).upper()])
    if value <= 0:
        raise UsageError(f"{what} must be positive (got {text!r})", "use e.g. 5GB")
    return value


def parse_count(text: str | int | float, what: str = "count") -> int:
    """'1.5e9' -> 1500000000, '135M' -> 135000000."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]?)\s*", str(text))
    if not m or m.group(2).upper() not in _COUNT:
        raise UsageError(f"cannot read {what} {text!r}", "use a number like 1.5e9 or 135M")
    return int(float(m.group(1)) * _COUNT[m.group(2).upper()])


# --------------------------------------------------------------------------------------------- dtypes
# The one dtype table: safetensors code (what headers hold) -> (bytes per element, torch dtype name).
DTYPE_TABLE = {
    "BOOL": (1, "bool"), "U8": (1, "uint8"), "I8": (1, "int8"),
    "F8_E4M3": (1, "float8_e4m3fn"), "F8_E5M2": (1, "float8_e5m2"), "F8_E8M0": (1, "float8_e8m0fnu"),
    "I16": (2, "int16"), "U16": (2, "uint16"), "F16": (2, "float16"), "BF16": (2, "bfloat16"),
    "I32": (4, "int32"), "U32": (4, "uint32"), "F32": (4, "float32"),
    "I64": (8, "int64"), "U64": (8, "uint64"), "F64": (8, "float64"),
}
FLOAT_CODES = frozenset({"F64", "F32", "F16", "BF16"})
FLOAT_CHOICES = ("bf16", "fp16", "fp32")  # what every --dtype option accepts
_ALIASES = {
    "fp32": "F32", "float32": "F32", "f32": "F32", "float": "F32",
    "bf16": "BF16", "bfloat16": "BF16",
    "fp16": "F16", "float16": "F16", "f16": "F16", "half": "F16",
    "fp64": "F64", "float64": "F64", "f64": "F64", "double": "F64",
}
_BY_TORCH_NAME = {torch_name: code for code, (_, torch_name) in DTYPE_TABLE.items()}


def dtype_code(dtype) -> str:
    """The safetensors code of a dtype given as a user name (``bf16``), a code (``BF16``), a torch
    name (``bfloat16``, ``torch.bfloat16``) or a ``torch.dtype``. Raises UsageError when unknown."""
    key = str(dtype).removeprefix("torch.")
    code = _ALIASES.get(key.lower()) or (key.upper() if key.upper() in DTYPE_TABLE else _BY_TORCH_NAME.get(key))
    if code is None:
        raise UsageError(f"unknown dtype {dtype!r}", "use bf16, fp16 or fp32")
    return code


def dtype_bytes(dtype) -> int:
    """Bytes per element (``dtype``: anything :func:`dtype_code` reads)."""
    return DTYPE_TABLE[dtype_code(dtype)][0]


def torch_name(dtype) -> str:
    """``"bfloat16"`` for ``bf16`` / ``BF16`` / ``torch.bfloat16`` ..."""
    return DTYPE_TABLE[dtype_code(dtype)][1]


def torch_dtype(dtype):
    """The ``torch.dtype`` (imports torch); a ``torch.dtype`` passes through."""
    import torch

    return dtype if isinstance(dtype, torch.dtype) else getattr(torch, torch_name(dtype))


def short_name(dtype) -> str:
    """``fp32`` / ``bf16`` / ``fp16`` (the --dtype spelling) for a float dtype; the torch name otherwise."""
    code = dtype_code(dtype)
    return {"F32": "fp32", "BF16": "bf16", "F16": "fp16"}.get(code, DTYPE_TABLE[code][1])
