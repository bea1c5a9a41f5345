"""Exits of a checkpoint: which layers (and widths) a sub-model keeps, parsed, named and resolved one way.

An exit keeps decoder ``layers`` (original 0-based indices, increasing) and optionally reduced
``widths`` (``ffn`` channels; ``heads`` / ``kv_heads``), read through the shared final norm and
LM head. A *prefix* exit ``K`` keeps layers 0..K-1 at full width.

The one ``--exits`` grammar (:func:`parse_exits`)::

    all                         every prefix exit 1..L
    K[,K,...]                   prefix exits, e.g. 10,15,20
    K:ffn=F[:heads=H]           prefix K narrowed to the first F FFN channels / H heads (fractions or counts)
    NAME                        an exit of the checkpoint's sorted manifest (when its exits are given)
    NAME=I,J,...[;NAME=...]     explicit kept layers

The one resolver (:func:`resolve_exit`): a name, a layer count K, a narrowed prefix ``K:ffn=F``, an exit
spec, or a budget (``max_params`` / ``max_flops``: the largest manifest exit within it); with the
checkpoint's manifest read first, :func:`surgeon.manifest.resolve.resolve_checkpoint_exit`.
:func:`default_exits` is the Sorted LLaMA spread; :func:`exit_name` / :func:`default_name` name exits as the manifest does.
Layer lists in ``--layers`` form (``0-11,14``) are read by :func:`parse_layers`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .errors import UsageError

# Sorted LLaMA trains 8 sub-models; the smallest is a quarter of the depth.
DEFAULT_NUM_EXITS = 8
DEFAULT_FIRST_FRACTION = 0.25
FULL = "full"  # the manifest's name for the full model when no other name is given
_GRAMMAR_HINT = ("give layer counts (12,16,24), narrowed ones (24:ffn=0.5:heads=6), `all`, manifest exit names, "
                 "or NAME=I,J,... entries separated by ';'")


@dataclass
class ExitSpec:
    """One exit: kept ``layers``, optional ``widths`` (absolute counts) and its ``name`` (None: unnamed)."""

    name: str | None
    layers: list[int]
    widths: dict | None = None

    @property
    def depth(self) -> int | None:
        """K when this is the full-width prefix 0..K-1, else None."""
        return prefix_depth(self.layers) if not self.widths else None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def to_dict(self) -> dict:
        """The request form the manifest takes: ``{"name", "layers", "widths"?}``."""
        d = {"name": self.name or default_name(self.layers, self.widths), "layers": list(self.layers)}
        if self.widths:
            d["widths"] = dict(self.widths)
        return d

    @classmethod
    def of(cls, exit: ExitSpec | Mapping) -> ExitSpec:
        if isinstance(exit, ExitSpec):
            return exit
        return cls(exit.get("name"), [int(i) for i in exit["layers"]], dict(exit["widths"]) if exit.get("widths") else None)


def prefix_depth(layers: Sequence[int]) -> int | None:
    """K when ``layers`` is the prefix 0..K-1, else None."""
    layers = list(layers)
    return len(layers) if layers and layers == list(range(len(layers))) else None


def exit_name(n: int) -> str:
    """The manifest name of prefix exit ``n`` (``"depth-12"``)."""
    return f"depth-{n}"


def default_name(layers: Sequence[int], widths: Mapping | None = None) -> str:
    """``depth-K`` for a prefix, ``layers-K`` otherwise, then ``-ffnF-headsH-kv_headsG`` for widths."""
    layers = list(layers)
    base = exit_name(len(layers)) if prefix_depth(layers) else f"layers-{len(layers)}"
    if widths:
        base += "".join(f"-{k}{v}" for k, v in sorted(widths.items()))
    return base


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


def _depth(n: int, num_layers: int) -> int:
    if n < 1:
        raise UsageError(f"exit {n} keeps no layer", f"exits count layers from the input: use 1..{num_layers}")
    if n > num_layers:
        raise UsageError(f"exit {n} is deeper than the model ({num_layers} layers)", f"use exits between 1 and {num_layers}")
    return n


def _narrowed(item: str, num_layers: int, config: Mapping | None) -> ExitSpec:
    """``K:ffn=F[:heads=H]`` -> the prefix K with absolute widths."""
    k, *rest = item.split(":")
    opts = {}
    for r in rest:
        key, _, value = r.partition("=")
        if key.strip() not in ("ffn", "heads") or not value.strip():
            raise UsageError(f"cannot read --exits item {item!r}", "write widths as K:ffn=F:heads=H, e.g. 24:ffn=0.5")
        opts[key.strip()] = value.strip()
    try:
        depth = _depth(int(k), num_layers)
    except ValueError:
        raise UsageError(f"cannot read --exits item {item!r}", "write widths as K:ffn=F:heads=H, e.g. 24:ffn=0.5") from None
    from .width.plan import resolve_width

    spec = resolve_width(dict(config or {}), opts.get("ffn"), opts.get("heads"))
    widths = {"ffn": spec.ffn} if "ffn" in opts else {}
    if "heads" in opts:
        widths.update(heads=spec.heads, kv_heads=spec.kv_heads)
    return ExitSpec(None, list(range(depth)), widths)


def _explicit(text: str, num_layers: int) -> list[ExitSpec]:
    out = []
    try:
        for part in text.split(";"):
            name, layers = part.split("=", 1)
            out.append(ExitSpec(name.strip(), [int(x) for x in layers.split(",")]))
    except ValueError:
        raise UsageError(f"cannot read --exits {text!r}", _GRAMMAR_HINT) from None
    for e in out:
        bad = [i for i in e.layers if not 0 <= i < num_layers]
        if bad or not e.layers or not e.name:
            raise UsageError(f"exit {e.name!r} names layer {bad[0] if bad else None}, outside 0..{num_layers - 1}",
                             f"exits index the model's layers (0..{num_layers - 1})")
    return out


def parse_exits(spec: str | Iterable[int] | None, num_layers: int, config: Mapping | None = None,
                named: Mapping[str, ExitSpec] | None = None) -> list[ExitSpec] | None:
    """Read ``--exits`` (see module doc) against a ``num_layers``-layer model; None when ``spec`` is empty.

    ``spec`` is a string or a sequence of layer counts. ``config`` (the text config) resolves width
    fractions; ``named`` (name -> exit, e.g. from the sorted manifest) lets items name exits.
    Raises :class:`~surgeon.errors.UsageError` for an empty item, an unknown word, a count outside
    1..L, or an exit listed twice.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return None
    if not isinstance(spec, str):
        items: list = [int(x) for x in spec]
        text = ",".join(map(str, items))
    else:
        text = spec.strip()
        if text == "all":
            return [ExitSpec(exit_name(k), list(range(k))) for k in range(1, num_layers + 1)]
        if "=" in text and ":" not in text:
            return _explicit(text, num_layers)
        items = [p.strip() for p in text.split(",")]
    if not items:
        raise UsageError("--exits is empty", f"give at least one layer count between 1 and {num_layers}")
    out: list[ExitSpec] = []
    for part in items:
        if isinstance(part, int) or part.lstrip("-").isdigit():
            out.append(ExitSpec(None, list(range(_depth(int(part), num_layers)))))
        elif not part:
            raise UsageError(f"--exits {text!r} has an empty item", "give comma-separated layer counts, e.g. --exits 10,20,30")
        elif ":" in part:
            out.append(_narrowed(part, num_layers, config))
        elif named and part in named:
            out.append(ExitSpec.of(named[part]))
        else:
            names = f" or an exit name ({', '.join(named)})" if named else ""
            raise UsageError(f"--exits item {part!r} is not an integer{names}",
                             "give comma-separated layer counts, e.g. --exits 10,20,30")
    seen: set = set()
    for e in out:
        key = (tuple(e.layers), tuple(sorted((e.widths or {}).items())))
        if key in seen:
            raise UsageError(f"exit {e.name or e.num_layers} is listed twice in --exits", "list each exit once")
        seen.add(key)
    return out


def prefix_depths(exits: Sequence[ExitSpec], what: str = "--exits") -> tuple[int, ...]:
    """The layer counts of full-width prefix exits, which must increase (soft and eval train /
    measure prefixes only). Raises UsageError for a narrowed or non-prefix exit."""
    depths = []
    for e in exits:
        if e.depth is None:
            raise UsageError(f"{what} names {e.name or e.layers}, which is not a full-width prefix of layers",
                             "give layer counts K (layers 0..K-1); train widths with --ffn-exits")
        depths.append(e.depth)
    for a, b in zip(depths, depths[1:]):
        if b <= a:
            raise UsageError(f"{what} must increase ({a} is followed by {b})",
                             f"list the exits from shallowest to deepest, e.g. {what} 10,20,30")
    return tuple(depths)


def parse_depths(spec: str | Iterable[int] | None, num_layers: int) -> tuple[int, ...]:
    """Prefix exits only (``soft --exits``): increasing layer counts; empty gives :func:`default_exits`."""
    exits = parse_exits(spec, num_layers)
    return default_exits(num_layers) if exits is None else prefix_depths(exits)


def parse_layers(text: str, num_layers: int) -> list[int]:
    """``'0-11,14'`` -> ``[0, ..., 11, 14]``; strictly increasing, each in 0..num_layers-1."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise UsageError(f"cannot read --layers {text!r}", "give 0-based layers and inclusive ranges, e.g. 0-11,14") from None
    if not out or any(b <= a for a, b in zip(out, out[1:])):
        raise UsageError(f"--layers {text!r} is empty or not increasing", "list each layer once, in order, e.g. 0-11,14")
    bad = [i for i in out if not 0 <= i < num_layers]
    if bad:
        raise UsageError(f"--layers names layer {bad[0]}, but the model has {num_layers} (0..{num_layers - 1})",
                         "use 0-based indices below the layer count")
    return out


def resolve_exit(exit: str | int | ExitSpec | Mapping | None, num_layers: int, manifest_exits: Sequence[Mapping] = (),
                 *, config: Mapping | None = None, max_params: float | None = None, max_flops: float | None = None,
                 where: str = "the checkpoint") -> ExitSpec:
    """The exit a user asked for: a manifest name, a layer count K (layers 0..K-1), a narrowed prefix
    ``K:ffn=F[:heads=H]`` (needs the text ``config``), an exit spec or dict, None (the full model), or the
    largest manifest exit within ``max_params`` / ``max_flops``. A count or a narrowed prefix that is one
    of the manifest's exits gets its name.

    ``manifest_exits``: the manifest's exit dicts, cheapest first (with ``cost`` for budgets).
    Raises UsageError for an unknown name, a count outside 1..L, or a budget no exit fits.
    """
    exits = list(manifest_exits or [])
    budget = max_params is not None or max_flops is not None
    if exit is not None and budget:
        raise UsageError("give an exit or a budget, not both", "drop --exit, or drop --max-params/--max-flops")
    if budget:
        if not exits:
            raise UsageError(f"{where} has no sorted manifest to choose a budget from",
                             "write one with `surgeon manifest MODEL --in-place`, or give a layer count")
        fits = [e for e in exits
                if (max_params is None or e["cost"]["parameters"]["total"] <= max_params)
                and (max_flops is None or e["cost"]["flops_per_token"] <= max_flops)]
        if not fits:
            small = exits[0]
            raise UsageError(
                f"no exit fits the budget (the smallest, {small['name']!r}, has "
                f"{small['cost']['parameters']['total']:,} parameters and {small['cost']['flops_per_token']:,} FLOPs/token)",
                "raise --max-params / --max-flops")
        return ExitSpec.of(fits[-1])
    if exit is None:
        return ExitSpec(exits[-1]["name"] if exits else None, list(range(num_layers)))
    if isinstance(exit, (ExitSpec, Mapping)):
        return ExitSpec.of(exit)
    if isinstance(exit, str) and ":" in exit:
        if config is None:
            raise UsageError(f"exit {exit!r} narrows widths, which needs the checkpoint's config",
                             "resolve it against a checkpoint (surgeon.manifest.resolve.resolve_checkpoint_exit)")
        narrowed = _narrowed(exit.strip(), num_layers, config)
        for e in exits:
            if list(e["layers"]) == narrowed.layers and dict(e.get("widths") or {}) == narrowed.widths:
                return ExitSpec.of(e)
        return narrowed
    if isinstance(exit, str) and not exit.strip().isdigit():
        for e in exits:
            if e["name"] == exit:
                return ExitSpec.of(e)
        names = ", ".join(e["name"] for e in exits)
        raise UsageError(f"{where} has no exit named {exit!r}",
                         f"choose one of {names}" if names else f"give a layer count 1..{num_layers}, or write a manifest first")
    if isinstance(exit, bool):
        raise UsageError(f"exit {exit!r} is outside 1..{num_layers} layers", f"the model has {num_layers} layers")
    k = int(exit)
    if not 1 <= k <= num_layers:
        raise UsageError(f"exit {k} is outside 1..{num_layers} layers", f"the model has {num_layers} layers")
    for e in exits:
        if list(e["layers"]) == list(range(k)) and not e.get("widths"):
            return ExitSpec.of(e)
    return ExitSpec(None, list(range(k)))
