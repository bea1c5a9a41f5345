"""The sorted manifest as data: constants of format version 1 and typed views of a manifest.

The normative description is ``formats/sorted-manifest/SPEC.md``. The JSON object is the source
of truth; :class:`Manifest` and :class:`Exit` are typed views built from it by
:func:`Manifest.from_dict` (after :func:`~surgeon.manifest.validate.validate_manifest`) and turned
back into it by :meth:`Manifest.to_dict`, so round trips are exact.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointError

FORMAT = "sorted-manifest"
FORMAT_VERSION = 1  # bumped only for a structural change (see SPEC.md, "Versioning")
MANIFEST_FILE = "sorted_manifest.json"
HEADER_KEY = "sorted_manifest"  # key in a safetensors __metadata__ / the index's "metadata"
HEADER_LIMIT = 64 * 1024  # a compact copy larger than this is replaced by a pointer
KNOWN_FEATURES = frozenset({"width-prefix"})
# Multiply-accumulate = 2 FLOPs over every weight an exit multiplies per token: its layers plus the
# LM-head matmul (d_model * vocab, counted even when tied). Embedding lookup, norms and the
# context-dependent attention-score FLOPs are excluded (Kaplan et al. 2020, C_forward ~ 2N).
FLOPS_FORMULA = "2*(P_layers+d_model*vocab)"
METRICS = frozenset({"loss", "perplexity", "kl_full_exit", "top1_agreement"})


class ManifestError(CheckpointError):
    """A sorted manifest that is missing, malformed, or does not match its checkpoint."""


@dataclass
class Exit:
    """One valid exit: a sub-model made of ``layers`` (original 0-based indices, in order)."""

    name: str
    layers: list[int]
    config: dict
    cost: dict
    head: str = "shared"
    kv_prefix_compatible: bool = True
    widths: dict | None = None
    quality: list[dict] = field(default_factory=list)
    verification: dict | None = None
    extra: dict = field(default_factory=dict)  # unknown keys, kept so round trips are exact

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def parameters(self) -> int:
        return int(self.cost["parameters"]["total"])

    @property
    def flops_per_token(self) -> int:
        return int(self.cost["flops_per_token"])

    def to_dict(self) -> dict:
        d: dict[str, Any] = dict(copy.deepcopy(self.extra))
        d.update(name=self.name, layers=list(self.layers), config=copy.deepcopy(self.config),
                 cost=copy.deepcopy(self.cost), head=self.head, kv_prefix_compatible=self.kv_prefix_compatible,
                 quality=copy.deepcopy(self.quality))
        if self.widths is not None:
            d["widths"] = dict(self.widths)
        if self.verification is not None:
            d["verification"] = copy.deepcopy(self.verification)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Exit:
        known = {"name", "layers", "config", "cost", "head", "kv_prefix_compatible", "widths", "quality", "verification"}
        return cls(
            name=d["name"], layers=list(d["layers"]), config=copy.deepcopy(d["config"]), cost=copy.deepcopy(d["cost"]),
            head=d.get("head", "shared"), kv_prefix_compatible=bool(d.get("kv_prefix_compatible", False)),
            widths=dict(d["widths"]) if d.get("widths") is not None else None,
            quality=copy.deepcopy(d.get("quality") or []), verification=copy.deepcopy(d.get("verification")),
            extra={k: copy.deepcopy(v) for k, v in d.items() if k not in known},
        )


@dataclass
class Manifest:
    """A whole manifest. ``weights`` is None in a header copy (see SPEC.md, "Where it lives")."""

    base: dict
    exits: list[Exit]
    generator: dict
    provenance: dict = field(default_factory=dict)
    weights: dict | None = None
    required_features: list[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    def exit(self, name: str) -> Exit:
        for e in self.exits:
            if e.name == name:
                return e
        raise ManifestError(f"the manifest has no exit named {name!r}",
                            f"choose one of {', '.join(e.name for e in self.exits)}")

    @property
    def full(self) -> Exit:
        return self.exits[-1]

    def to_dict(self, with_weights: bool = True) -> dict:
        d: dict[str, Any] = dict(copy.deepcopy(self.extra))
        d.update(
            format=FORMAT, format_version=self.format_version, required_features=list(self.required_features),
            generator=copy.deepcopy(self.generator), base=copy.deepcopy(self.base),
            exits=[e.to_dict() for e in self.exits], provenance=copy.deepcopy(self.provenance),
        )
        if with_weights and self.weights is not None:
            d["weights"] = copy.deepcopy(self.weights)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        known = {"format", "format_version", "required_features", "generator", "base", "exits", "provenance", "weights"}
        return cls(
            base=copy.deepcopy(d["base"]), exits=[Exit.from_dict(e) for e in d["exits"]],
            generator=copy.deepcopy(d["generator"]), provenance=copy.deepcopy(d.get("provenance") or {}),
            weights=copy.deepcopy(d.get("weights")), required_features=list(d.get("required_features") or []),
            format_version=d["format_version"], extra={k: copy.deepcopy(v) for k, v in d.items() if k not in known},
        )
