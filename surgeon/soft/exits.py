"""Exits of a sorted model: sub-model ``n`` = decoder layers ``0..n-1`` + the shared final norm and LM head.

:func:`default_exits` spreads exits like Sorted LLaMA (which trained 8 sub-models of LLaMA-2-13B,
12..40 layers in steps of 4): every ``L/8``-th layer from ``L/4`` up to ``L``, always including ``L``. :func:`parse_exits`
turns ``"12,16,20"`` (or a sequence of ints) into a validated, strictly increasing tuple.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import UsageError

# Sorted LLaMA trains 8 sub-models; the smallest is a quarter of the depth.
DEFAULT_NUM_EXITS = 8
DEFAULT_FIRST_FRACTION = 0.25


def default_exits(num_layers: int) -> tuple[int, ...]:
    """Every ``L/8``-th layer from ``L/4`` to ``L`` (rounded, de-duplicated), always ending with ``L``.

    ``default_exits(40) == (10, 15, 20, 25, 30, 35, 40)``; for 32 layers: 8, 12, ..., 32;
    for a 6-layer toy model: 2, 3, 4, 5, 6 (rounding merges nothing below one layer apart).
    """
    if num_layers < 1:
        raise UsageError(f"the model has {num_layers} layers", "give a checkpoint with at least one decoder layer")
    step = num_layers / DEFAULT_NUM_EXITS
    out: list[int] = []
    k = DEFAULT_FIRST_FRACTION * num_layers
    while k < num_layers - 1e-9:
        n = max(1, int(k + 0.5))  # round half up
        if not out or n > out[-1]:
            out.append(n)
        k += step
    if not out or out[-1] != num_layers:
        out.append(num_layers)
    return tuple(out)


def parse_exits(spec: str | Iterable[int] | None, num_layers: int) -> tuple[int, ...]:
    """Validate exits against a ``num_layers``-layer model; ``None`` or ``""`` gives :func:`default_exits`.

    ``spec`` is a comma-separated string (``"10,15,20,25,30"``) or a sequence of ints. Raises
    :class:`~surgeon.errors.UsageError` for a non-integer, an exit of 0 or below, one above
    ``num_layers``, a duplicate, or exits not in increasing order. The last exit need not be
    ``L`` (the full model is then simply not trained as an exit); ``--exits L`` alone is plain SFT.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return default_exits(num_layers)
    if isinstance(spec, str):
        items: list[int] = []
        for part in spec.split(","):
            part = part.strip()
            if not part:
                raise UsageError(f"--exits {spec!r} has an empty item", "give comma-separated layer counts, e.g. --exits 10,20,30")
            try:
                items.append(int(part))
            except ValueError:
                raise UsageError(f"--exits item {part!r} is not an integer",
                                 "give comma-separated layer counts, e.g. --exits 10,20,30") from None
    else:
        items = [int(x) for x in spec]
    if not items:
        raise UsageError("--exits is empty", f"give at least one layer count between 1 and {num_layers}")
    for n in items:
        if n < 1:
            raise UsageError(f"exit {n} keeps no layer", f"exits count layers from the input: use 1..{num_layers}")
        if n > num_layers:
            raise UsageError(f"exit {n} is deeper than the model ({num_layers} layers)",
                             f"use exits between 1 and {num_layers}")
    seen: set[int] = set()
    for n in items:
        if n in seen:
            raise UsageError(f"exit {n} is listed twice in --exits", "list each exit once")
        seen.add(n)
    for a, b in zip(items, items[1:]):
        if b <= a:
            raise UsageError(f"--exits must increase ({a} is followed by {b})",
                             "list the exits from shallowest to deepest, e.g. --exits 10,20,30")
    return tuple(items)


def exit_name(n: int) -> str:
    """The manifest name of exit ``n`` (``"depth-12"``, as the manifest names prefix exits)."""
    return f"depth-{n}"


def manifest_exits(exits: Iterable[int]) -> list[dict]:
    """``[{"name": "depth-12", "layers": [0, ..., 11]}, ...]`` for the sorted manifest."""
    return [{"name": exit_name(n), "layers": list(range(n))} for n in exits]
