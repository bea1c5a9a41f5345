"""Rewrite a config for a new layer selection: every key that describes layers follows.

``slice_layers_config(cfg, family, keep)`` returns the new config dict. ``keep`` lists the source
layer indices the output keeps, in output order (kept layers are renumbered 0..k-1).
"""

from __future__ import annotations

import copy
from typing import Any

from ..arch.registry import Family, unknown_layer_keys
from ..errors import ArchitectureError


def slice_layers_config(cfg: dict, family: Family, keep: list[int]) -> dict:
    L = cfg["num_hidden_layers"]
    new = copy.deepcopy(cfg)
    new["num_hidden_layers"] = len(keep)
    unknown = unknown_layer_keys(cfg, family)
    if unknown:
        raise ArchitectureError(
            f"config key {unknown[0]!r} looks per-layer (a list of {L} values) but surgeon does not know "
            f"how {family.name} uses it",
            "add it to the family's per_layer_lists (or another key class) in surgeon/arch/families.json",
        )
    for key in family.per_layer_lists:
        v = cfg.get(key)
        if v is None:
            continue
        if isinstance(v, list):
            if len(v) != L:
                raise ArchitectureError(
                    f"config {key} has {len(v)} entries but num_hidden_layers is {L}",
                    "fix config.json so they agree",
                )
            new[key] = [copy.deepcopy(v[i]) for i in keep]
        elif isinstance(v, str) and len(v) == L:  # pattern strings, e.g. hybrid_override_pattern
            new[key] = "".join(v[i] for i in keep)
    for key in family.layer_threshold_keys:
        if isinstance(cfg.get(key), int):
            new[key] = sum(1 for i in keep if i < cfg[key])
    for key in family.layer_index_keys:
        v = cfg.get(key)
        if isinstance(v, list):
            pos = {src: dst for dst, src in enumerate(keep)}
            new[key] = [pos[i] for i in v if i in pos]
    for key in family.tail_count_keys:
        if isinstance(cfg.get(key), int):
            new[key] = sum(1 for i in keep if i >= L - cfg[key])
    return new


def config_diff(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """Top-level keys whose values differ: key -> (old, new)."""
    keys = sorted(set(old) | set(new))
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}
