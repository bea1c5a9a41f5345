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
