"""Exits of a checkpoint: prefix layer counts K, or names read from ``sorted_manifest.json``.

Any checkpoint has the prefix exits ``K`` = layers 0..K-1 + the shared final norm and LM head. When the
checkpoint has a sorted manifest, its exits are also reachable by name. The manifest package's
validated reader is tried first (sidecar or safetensors-header copy); a manifest it rejects is read
tolerantly from the sidecar (only ``exits[i].name`` and ``exits[i].layers`` are needed), so the runtime
works with any manifest version; entries it cannot use are skipped with a warning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import UsageError

log = logging.getLogger(__name__)

try:  # the manifest package owns the file name; fall back if it is not importable
    from ..manifest.model import MANIFEST_FILE
except Exception:  # noqa: BLE001 - any import problem means: use the documented name
    MANIFEST_FILE = "sorted_manifest.json"


def read_manifest_exits(path: str | Path, num_layers: int) -> dict[str, tuple[int, ...]]:
    """``name -> kept layers`` for the depth exits of ``path/sorted_manifest.json`` ({} when absent).

    Exits with reduced widths are skipped (the shared full-width weights cannot serve them; extract
    them with ``surgeon extract --exit NAME``), as are entries without a valid layer list.
    """
    data = None
    try:  # the manifest package's validated reader (sidecar, else the safetensors header copy)
        from ..manifest.store import read_manifest

        found = read_manifest(path)
        data = found[0] if found else None
    except Exception as e:  # noqa: BLE001 - an invalid or newer manifest: fall back to the tolerant reader
        log.info("manifest of %s did not validate (%s); reading its exits tolerantly", path, e)
    if data is None:
        f = Path(path) / MANIFEST_FILE
        if not f.is_file():
            return {}
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable %s: %s", f, e)
            return {}
    out: dict[str, tuple[int, ...]] = {}
    exits = data.get("exits") if isinstance(data, dict) else None
    for e in exits if isinstance(exits, list) else []:
        if not isinstance(e, dict):
            continue
        name, layers = e.get("name"), e.get("layers")
        ok = (isinstance(name, str) and isinstance(layers, list) and layers
              and all(isinstance(i, int) and 0 <= i < num_layers for i in layers)
              and all(b > a for a, b in zip(layers, layers[1:])))
        if not ok:
            log.warning("ignoring manifest exit %r: needs a name and increasing layers in 0..%d", name, num_layers - 1)
            continue
        if e.get("widths"):
            log.info("manifest exit %s has reduced widths; not served from the shared weights", name)
            continue
        out[name] = tuple(layers)
    return out


def resolve_exit(exit: int | str | None, num_layers: int, named: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The kept layers of ``exit``: None = the full model, K = layers 0..K-1, or a manifest exit name."""
    if exit is None:
        return tuple(range(num_layers))
    if isinstance(exit, str):
        if exit in named:
            return named[exit]
        if exit.strip().isdigit():
            exit = int(exit)
        else:
            names = ", ".join(sorted(named)) or "none: the checkpoint has no sorted manifest"
            raise UsageError(f"unknown exit {exit!r}", f"give a layer count 1..{num_layers} or a manifest exit ({names})")
    if isinstance(exit, bool) or not isinstance(exit, int) or not 1 <= exit <= num_layers:
        raise UsageError(f"exit {exit!r} is outside 1..{num_layers}", f"give a layer count between 1 and {num_layers}")
    return tuple(range(exit))


def prefix_depth(layers: tuple[int, ...]) -> int | None:
    """K when ``layers`` is the prefix 0..K-1, else None."""
    return len(layers) if layers == tuple(range(len(layers))) else None


def parse_thresholds(text: str) -> list[float] | dict[str, float]:
    """``'0.9,0.8'`` -> [0.9, 0.8] (one per manifest exit); ``'10:0.9,20:0.8'`` -> {'10': 0.9, '20': 0.8}."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if parts and all(":" in p for p in parts):
            return {k.strip(): float(v) for k, v in (p.split(":", 1) for p in parts)}
        return [float(p) for p in parts]
    except ValueError:
        raise UsageError(f"cannot read early-exit thresholds {text!r}",
                         "give one probability per exit (0.9,0.9) or EXIT:THRESHOLD pairs (10:0.9,20:0.8)") from None


def early_exit_plan(spec: list[float] | dict, num_layers: int, named: dict[str, tuple[int, ...]]
                    ) -> list[tuple[int, float]]:
    """``[(depth, threshold), ...]`` sorted by depth, ending with ``(num_layers, 1.0)`` (the full model).

    ``spec`` is a list of thresholds for the manifest's prefix exits (shallowest first, the full model
    excluded) or a mapping ``exit -> threshold`` (layer counts or manifest names). Early exit needs
    prefix exits: every exit's layers must be the first layers of the next one.
    """
    if isinstance(spec, str):
        spec = parse_thresholds(spec)
    if isinstance(spec, dict):
        pairs = [(resolve_exit(k if not str(k).isdigit() else int(k), num_layers, named), float(v))
                 for k, v in spec.items()]
    else:
        prefixes = sorted({d for d in (prefix_depth(v) for v in named.values()) if d and d < num_layers})
        if len(spec) != len(prefixes):
            raise UsageError(f"{len(spec)} thresholds for {len(prefixes)} intermediate prefix exits in the manifest",
                             "give one threshold per exit, or EXIT:THRESHOLD pairs such as 10:0.9,20:0.8")
        pairs = [(tuple(range(d)), t) for d, t in zip(prefixes, spec)]
    out: dict[int, float] = {}
    for layers, t in pairs:
        d = prefix_depth(layers)
        if d is None:
            raise UsageError(f"early exit needs prefix exits, but one keeps layers {list(layers)}",
                             "use exits made of the first K layers")
        if not 0.0 <= t <= 1.0:
            raise UsageError(f"threshold {t} is not a probability", "give thresholds in [0, 1]")
        if d < num_layers:
            out[d] = t
    return sorted(out.items()) + [(num_layers, 1.0)]
