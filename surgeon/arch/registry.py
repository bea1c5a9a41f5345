"""Look up what surgeon knows about a model family (``families.json``), or infer it with a warning."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from ..errors import ArchitectureError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """Everything surgeon needs to know about one decoder family."""

    name: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    layers: str  # prefix of the layer ModuleList, e.g. "model.layers"
    embed: str
    final_norm: str
    lm_head: str
    attention: dict[str, str]  # role -> module path inside a layer (q, k, v, o or qkv, o)
    ffn: dict[str, str]  # role -> module path inside a layer (gate, up, down or gate_up, down)
    fused: dict[str, tuple[str, ...]] = field(default_factory=dict)  # fused module -> stacked roles
    per_layer_lists: tuple[str, ...] = ()
    layer_threshold_keys: tuple[str, ...] = ()
    layer_index_keys: tuple[str, ...] = ()
    tail_count_keys: tuple[str, ...] = ()
    inferred: bool = False

    # -- tensor names
    def layer_prefix(self, i: int) -> str:
        return f"{self.layers}.{i}."

    @property
    def _layer_re(self) -> re.Pattern:
        return re.compile(re.escape(self.layers) + r"\.(\d+)\.(.+)$")

    def split_layer_name(self, tensor_name: str) -> tuple[int, str] | None:
        """``"model.layers.3.mlp.up_proj.weight"`` -> ``(3, "mlp.up_proj.weight")``; None outside layers."""
        m = self._layer_re.match(tensor_name)
        return (int(m.group(1)), m.group(2)) if m else None

    # -- modules
    @property
    def ffn_modules(self) -> tuple[str, ...]:
        """Leaf module names of the FFN projections (LoRA targets for healing)."""
        return tuple(p.rsplit(".", 1)[-1] for p in self.ffn.values())

    @property
    def config_layer_keys(self) -> tuple[str, ...]:
        """Every config key that this family knows to depend on layers."""
        return self.per_layer_lists + self.layer_threshold_keys + self.layer_index_keys + self.tail_count_keys


@lru_cache(maxsize=1)
def _table() -> dict:
    text = resources.files(__package__).joinpath("families.json").read_text(encoding="utf-8")
    return json.loads(text)


def family_names() -> list[str]:
    return [k for k in _table() if not k.startswith("_")]


def _build(name: str, entry: dict, inferred: bool = False) -> Family:
    common = _table()["_common"]

    def keys(k: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(common.get(k, []) + entry.get(k, [])))

    return Family(
        name=name,
        model_types=tuple(entry.get("model_types", [])),
        architectures=tuple(entry.get("architectures", [])),
        layers=entry["layers"],
        embed=entry["embed"],
        final_norm=entry["final_norm"],
        lm_head=entry["lm_head"],
        attention=dict(entry["attention"]),
        ffn=dict(entry["ffn"]),
        fused={k: tuple(v) for k, v in entry.get("fused", {}).items()},
        per_layer_lists=keys("per_layer_lists"),
        layer_threshold_keys=keys("layer_threshold_keys"),
        layer_index_keys=keys("layer_index_keys"),
        tail_count_keys=keys("tail_count_keys"),
        inferred=inferred,
    )


def get_family(name: str) -> Family:
    table = _table()
    if name not in table or name.startswith("_"):
        raise ArchitectureError(f"unknown family {name!r}", f"known families: {', '.join(family_names())}")
    return _build(name, table[name])


_ROLE_NAMES = {
    "q": ("q_proj",), "k": ("k_proj",), "v": ("v_proj",), "o": ("o_proj", "out_proj", "dense"),
    "qkv": ("qkv_proj", "query_key_value", "Wqkv"),
    "gate": ("gate_proj", "w1"), "up": ("up_proj", "w3"), "down": ("down_proj", "w2"),
    "gate_up": ("gate_up_proj",),
}


def _infer(config: dict, tensor_names: list[str]) -> Family:
    """Infer a family from tensor names of the form ``model.layers.{i}.<module>.weight``."""
    layer0 = [n[len("model.layers.0."):] for n in tensor_names if n.startswith("model.layers.0.")]
    modules = {n.rsplit(".", 1)[0] for n in layer0 if n.endswith(".weight")}

    def find(role: str) -> str | None:
        for m in sorted(modules):
            if m.rsplit(".", 1)[-1] in _ROLE_NAMES[role]:
                return m
        return None

    found = {r: find(r) for r in _ROLE_NAMES}
    if found["qkv"]:
        attention = {"qkv": found["qkv"], "o": found["o"]}
        fused = {found["qkv"]: ("q", "k", "v")}
    else:
        attention = {r: found[r] for r in ("q", "k", "v", "o")}
        fused = {}
    if found["gate_up"]:
        ffn = {"gate_up": found["gate_up"], "down": found["down"]}
        fused[found["gate_up"]] = ("gate", "up")
    else:
        ffn = {r: found[r] for r in ("gate", "up", "down")}
    if None in attention.values() or None in ffn.values():
        missing = [r for r, v in {**attention, **ffn}.items() if v is None]
        raise ArchitectureError(
            f"model_type {config.get('model_type')!r} is not a known family and its layers have no "
            f"recognizable {'/'.join(missing)} projection",
            f"known families: {', '.join(family_names())}; add an entry to surgeon/arch/families.json",
        )
    entry = {
        "model_types": [config.get("model_type", "")],
        "architectures": list(config.get("architectures") or []),
        "layers": "model.layers", "embed": "model.embed_tokens", "final_norm": "model.norm",
        "lm_head": "lm_head", "attention": attention, "ffn": ffn,
        "fused": {k: list(v) for k, v in fused.items()},
    }
    return _build(str(config.get("model_type") or "unknown"), entry, inferred=True)


def resolve_family(config: dict, tensor_names: Iterable[str] | None = None) -> Family:
    """Find the family of a (text) config. Unknown families with ``model.layers.{i}`` tensors are
    inferred with a warning; anything else raises :class:`ArchitectureError`."""
    model_type = config.get("model_type")
    archs = list(config.get("architectures") or [])
    table = _table()
    for name, entry in table.items():
        if name.startswith("_"):
            continue
        if model_type in entry.get("model_types", []) or any(a in entry.get("architectures", []) for a in archs):
            return _build(name, entry)
    names = list(tensor_names or [])
    if any(n.startswith("model.layers.0.") for n in names):
        fam = _infer(config, names)
        log.warning(
            "model_type %r is not in surgeon's registry; inferred its layout from tensor names "
            "(attention %s, FFN %s). Check the result, and consider adding it to families.json.",
            model_type, sorted(fam.attention.values()), sorted(fam.ffn.values()),
        )
        return fam
    if isinstance(config.get("text_config"), dict):
        raise ArchitectureError(
            f"{archs[0] if archs else model_type} is a multimodal wrapper",
            "surgeon operates on text decoders; save the language model on its own and point MODEL at it",
        )
    raise ArchitectureError(
        f"model_type {model_type!r} is not a known decoder family and has no model.layers.{{i}} tensors",
        f"known families: {', '.join(family_names())}",
    )


def unknown_layer_keys(config: dict, family: Family) -> list[str]:
    """Config keys that look per-layer (a list as long as the stack) but that the family does not
    declare. Surgery that changes the layer count refuses to guess how to rewrite them."""
    n = config.get("num_hidden_layers")
    known = set(family.config_layer_keys)
    return sorted(
        k for k, v in config.items()
        if isinstance(v, list) and n and len(v) == n and n > 1 and k not in known and k != "architectures"
    )
