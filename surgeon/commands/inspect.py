"""``surgeon inspect``: what a checkpoint is, from its config and headers alone."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..arch.registry import resolve_family, unknown_layer_keys
from ..io.checkpoint import Checkpoint
from ..manifest.model import MANIFEST_FILE
from ..manifest.resolve import remote_header_metadata
from ..options import opt


@dataclass(frozen=True)
class InspectOptions:
    model: Path = opt(help="Checkpoint folder.", cli=False)


@dataclass
class ShardInfo:
    file: str
    tensors: int
    bytes: int


@dataclass
class InspectReport:
    path: str
    family: str
    family_inferred: bool
    architecture: str
    model_type: str
    num_layers: int
    hidden_size: int | None
    num_attention_heads: int | None
    num_key_value_heads: int | None
    head_dim: int | None
    intermediate_size: int | None
    vocab_size: int | None
    tie_word_embeddings: bool
    num_parameters: int
    parameters: dict[str, int]  # embedding / layers / final_norm / head / other
    weight_bytes: int
    folder_bytes: int
    dtypes: dict[str, int]  # stored dtype -> parameter count
    shards: list[ShardInfo]
    per_layer: dict[str, list] = field(default_factory=dict)
    layer_count_keys: dict[str, object] = field(default_factory=dict)
    layer_types: list[str] | None = None
    manifest: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _manifest_summary(path: Path, metadata: dict | None = None) -> dict | None:
    """The sorted manifest's exits (sidecar, else the header copy), or an ``error`` entry when invalid."""
    from ..manifest.model import ManifestError
    from ..manifest.store import read_manifest

    try:
        found = read_manifest(path, metadata)
    except (ManifestError, OSError) as e:
        return {"file": MANIFEST_FILE, "error": str(e)}
    if found is None:
        return None
    data, warnings = found
    return {
        "file": MANIFEST_FILE if (path / MANIFEST_FILE).is_file() else "header copy",
        "format_version": data["format_version"], "warnings": warnings,
        "exits": [{"name": e["name"], "num_layers": len(e["layers"]), "widths": e.get("widths"),
                   "parameters": e["cost"]["parameters"]["total"], "flops_per_token": e["cost"]["flops_per_token"]}
                  for e in data["exits"]],
        "view": data.get("view"),  # one exit of another checkpoint (surgeon view)
    }


def run(opts: InspectOptions) -> InspectReport:
    """``surgeon inspect``: describe ``opts.model`` from its config and headers, loading no tensor."""
    return inspect_checkpoint(opts.model)


def inspect_checkpoint(path: str | Path) -> InspectReport:
    """Describe a checkpoint folder without loading a tensor."""
    ckpt = Checkpoint.open(path)
    cfg = ckpt.text_config
    fam = resolve_family(cfg, ckpt.tensors)
    L = ckpt.num_layers

    parts = {"embedding": 0, "layers": 0, "final_norm": 0, "head": 0, "other": 0}
    for name, info in ckpt.tensors.items():
        if fam.split_layer_name(name):
            parts["layers"] += info.numel
        elif name.startswith(fam.embed + "."):
            parts["embedding"] += info.numel
        elif name.startswith(fam.final_norm + "."):
            parts["final_norm"] += info.numel
        elif name.startswith(fam.lm_head + "."):
            parts["head"] += info.numel
        else:
            parts["other"] += info.numel

    shards: dict[str, ShardInfo] = {f: ShardInfo(f, 0, ckpt.file_sizes[f]) for f in ckpt.files}
    for info in ckpt.tensors.values():
        shards[info.file].tensors += 1

    per_layer = {k: cfg[k] for k in fam.per_layer_lists if isinstance(cfg.get(k), list)}
    per_layer.update({k: cfg[k] for k in unknown_layer_keys(cfg, fam)})
    counts = {
        k: cfg[k]
        for k in fam.layer_threshold_keys + fam.layer_index_keys + fam.tail_count_keys
        if k in cfg
    }
    heads = cfg.get("num_attention_heads")
    hidden = cfg.get("hidden_size")
    head_dim = cfg.get("head_dim") or (hidden // heads if hidden and heads else None)
    # weight sizes from the headers (a hub model's shards need not be downloaded), the other files from disk
    folder_bytes = ckpt.weight_bytes + sum(p.stat().st_size for p in ckpt.path.iterdir()
                                           if p.is_file() and p.name not in ckpt.file_sizes)
    return InspectReport(
        path=ckpt.source if ckpt.hub is not None else str(ckpt.path),
        family=fam.name,
        family_inferred=fam.inferred,
        architecture=(cfg.get("architectures") or [fam.architectures[0] if fam.architectures else "?"])[0],
        model_type=str(cfg.get("model_type")),
        num_layers=L,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=cfg.get("num_key_value_heads", heads),
        head_dim=head_dim,
        intermediate_size=cfg.get("intermediate_size"),
        vocab_size=cfg.get("vocab_size"),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", f"{fam.lm_head}.weight" not in ckpt.tensors)),
        num_parameters=ckpt.num_parameters,
        parameters=parts,
        weight_bytes=ckpt.weight_bytes,
        folder_bytes=folder_bytes,
        dtypes=ckpt.dtypes,
        shards=list(shards.values()),
        per_layer=per_layer,
        layer_count_keys=counts,
        layer_types=cfg.get("layer_types") if isinstance(cfg.get("layer_types"), list) else None,
        manifest=_manifest_summary(ckpt.path, remote_header_metadata(ckpt)),
    )
