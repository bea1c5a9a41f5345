"""Build a sorted manifest from a checkpoint's headers and config: exits, their configs and costs.

Everything here is shape arithmetic (no tensor is read): an exit is turned into the same
:class:`~surgeon.surgery.plan.Plan` that depth or width surgery would execute, and its config and
costs are read off that plan. Measurements that need the weights (verification records, quality)
live in :mod:`surgeon.manifest.verify` and :func:`surgeon.eval.measure_exits`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..arch.registry import Family, resolve_family
from ..errors import UsageError
from ..exits import FULL, default_name, exit_name
from ..io.checkpoint import Checkpoint
from ..provenance import read_chain, sha256_json
from ..surgery.plan import Plan, plan_layers
from ..units import FLOAT_CODES, dtype_bytes, dtype_code, torch_name
from .model import FLOPS_FORMULA, FORMAT, FORMAT_VERSION, ManifestError

log = logging.getLogger(__name__)


def exit_plan(ckpt: Checkpoint, layers: Sequence[int], widths: dict | None = None, dtype: str | None = None,
              family: Family | None = None) -> Plan:
    """The plan that materializes an exit: its layers (renumbered 0..k-1), sliced to ``widths``."""
    if widths:
        from ..width.plan import plan_width  # first-k prefix slicing ("width-prefix")

        cfg = ckpt.text_config
        full_heads = cfg.get("num_attention_heads")
        plan = plan_width(ckpt, ffn=widths.get("ffn"), heads=widths.get("heads", full_heads), keep=list(layers),
                          operation="exit", dtype=dtype)
        kv = widths.get("kv_heads")
        got = plan.config.get("text_config", plan.config).get("num_key_value_heads")
        if kv is not None and kv != got:
            raise ManifestError(f"exit widths name {kv} KV heads but {widths.get('heads')} heads keep {got}",
                                "keep whole KV groups: kv_heads = heads / (num_attention_heads / num_key_value_heads)")
        return plan
    return plan_layers(ckpt, list(layers), "exit", dtype, family=family)


def _numel(shape) -> int:
    return math.prod(shape)


def exit_cost(plan: Plan, family: Family, kv_dtype: str) -> dict:
    """Parameters (embedding / layers / head), FLOPs per token and KV-cache bytes per token of an exit."""
    emb = layers = total = 0
    for op in plan.tensors:
        n = _numel(op.shape)
        total += n
        if family.split_layer_name(op.src):
            layers += n
        elif op.src.startswith(family.embed + "."):
            emb += n
    cfg = plan.config.get("text_config", plan.config) if "num_hidden_layers" not in plan.config else plan.config
    d_model, vocab = cfg["hidden_size"], cfg["vocab_size"]
    heads = cfg.get("num_attention_heads")
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or d_model // heads
    kv_per_layer = 2 * kv_heads * head_dim * dtype_bytes(kv_dtype)  # K and V of one token
    return {
        "parameters": {"embedding": emb, "layers": layers, "head": total - emb - layers, "total": total},
        "flops_per_token": 2 * (layers + d_model * vocab),
        "flops_formula": FLOPS_FORMULA,
        "kv_cache_bytes_per_token": kv_per_layer * cfg["num_hidden_layers"],
        "kv_cache_dtype": kv_dtype,
    }


def storage_dtype(ckpt: Checkpoint) -> str:
    """The dtype a runtime would keep the KV cache in: config ``dtype`` / ``torch_dtype``, else the weights'."""
    cfg = ckpt.text_config
    for k in ("dtype", "torch_dtype"):
        if isinstance(cfg.get(k), str) and cfg[k] in ("float32", "float", "bfloat16", "float16", "half", "float64"):
            return torch_name(cfg[k])
    counts = ckpt.dtypes
    top = max(counts, key=counts.get) if counts else "F32"
    return torch_name(top) if dtype_code(top) in FLOAT_CODES else "float32"


def tensor_inventory(ckpt: Checkpoint, family: Family) -> dict:
    """``base.tensors``: the per-layer tensor set (same in every layer) and the shared tensors."""
    per_layer: dict[int, dict[str, dict]] = {i: {} for i in range(ckpt.num_layers)}
    shared: dict[str, dict] = {}
    for name, info in ckpt.tensors.items():
        spec = {"dtype": info.dtype, "shape": list(info.shape)}
        split = family.split_layer_name(name)
        if split is None:
            shared[name] = spec
        else:
            per_layer[split[0]][split[1]] = spec
    first = per_layer[0]
    for i, tensors in per_layer.items():
        if tensors != first:
            raise ManifestError(f"layer {i} does not hold the same tensors (names, dtypes, shapes) as layer 0",
                                "format version 1 describes stacks of uniform layers only")
    return {"layer_prefix": family.layers + ".", "layer": dict(sorted(first.items())),
            "shared": dict(sorted(shared.items()))}


def normalize_exits(ckpt: Checkpoint, exits: Sequence[dict] | None) -> list[dict]:
    """Check exit requests, add the full model when missing, sort by cost later."""
    L = ckpt.num_layers
    out: list[dict] = []
    names: set[str] = set()
    for e in exits or []:
        if not isinstance(e, dict) or "layers" not in e:
            raise UsageError(f"exit {e!r} has no layers", "give each exit as {'name': ..., 'layers': [...]}")
        layers = [int(i) for i in e["layers"]]
        bad = [i for i in layers if not 0 <= i < L]
        if bad or not layers:
            raise UsageError(f"exit {e.get('name')!r} names layer {bad[0] if bad else None}, outside 0..{L - 1}",
                             f"exits index the layers of the output model (0..{L - 1})")
        widths = e.get("widths") or None
        d = dict(e, layers=layers, name=e.get("name") or default_name(layers, widths))
        if widths is None:
            d.pop("widths", None)
        if d["name"] in names:
            raise UsageError(f"two exits are named {d['name']!r}", "give every exit its own name")
        names.add(d["name"])
        out.append(d)
    full = [e for e in out if e["layers"] == list(range(L)) and not e.get("widths")]
    if not full:
        name = FULL if FULL not in names else exit_name(L)
        out.append({"name": name, "layers": list(range(L))})
    return out


def build_manifest(
    path: str | Path | Checkpoint,
    exits: Sequence[dict] | None = None,
    provenance: list[dict] | None = None,
    verification: dict[str, dict] | None = None,
) -> dict:
    """The manifest dict of a checkpoint (without ``weights``; :func:`~.store.write_manifest` adds them).

    ``exits``: requests ``{"name", "layers", "widths"?, "quality"?}`` (default: the full model only).
    ``verification``: exit name -> verification record (see :mod:`.measure`).
    """
    ckpt = path if isinstance(path, Checkpoint) else Checkpoint.open(path)
    cfg = ckpt.text_config
    family = resolve_family(cfg, ckpt.tensors)
    kv_dtype = storage_dtype(ckpt)
    built = []
    for e in normalize_exits(ckpt, exits):
        plan = exit_plan(ckpt, e["layers"], e.get("widths"), family=family)
        d = {
            "name": e["name"], "layers": list(e["layers"]), "config": plan.config, "head": "shared",
            "kv_prefix_compatible": e["layers"] == list(range(len(e["layers"]))) and not e.get("widths"),
            "cost": exit_cost(plan, family, kv_dtype), "quality": list(e.get("quality") or []),
        }
        if e.get("widths"):
            d["widths"] = dict(e["widths"])
        if verification and e["name"] in verification:
            d["verification"] = verification[e["name"]]
        built.append(d)
    L = ckpt.num_layers
    # Cheapest first; the full model last (ties keep the request order).
    built.sort(key=lambda d: (d["layers"] == list(range(L)) and "widths" not in d, d["cost"]["flops_per_token"]))
    features = ["width-prefix"] if any("widths" in d for d in built) else []
    arch = (cfg.get("architectures") or ckpt.config.get("architectures") or [family.name])[0]
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "required_features": features,
        "generator": {"name": "surgeon", "version": __version__},
        "base": {
            "architecture": arch, "model_type": str(cfg.get("model_type") or family.name), "num_layers": L,
            "hidden_size": cfg["hidden_size"], "vocab_size": cfg["vocab_size"],
            "tie_word_embeddings": f"{family.lm_head}.weight" not in ckpt.tensors,
            "config_sha256": sha256_json(ckpt.config), "tensors": tensor_inventory(ckpt, family),
        },
        "exits": built,
        "provenance": {"operations": provenance if provenance is not None else read_chain(ckpt.path)},
    }


def quality_record_fields(*, data: str, tokens: int, seq_len: int, dtype, samples: int) -> dict:
    """The fields every quality entry of one measurement shares (SPEC §6.3), one meaning each, for
    ``surgeon manifest --eval-data`` and the exits ``soft`` writes alike:

    - ``data``: the data spec as given (``builtin:sotu``, ``c4``, a file path);
    - ``split``: ``"eval"``: the spec's held-out role (held-out slice of a file, validation split);
    - ``tokens``: the predicted tokens the metrics average over (labels that are not masked);
    - ``seq_len``: the requested tokens per sequence (``--seq-len``); every sequence measured is at most
      this long (text is cut into sequences of exactly it; an instruction example may be shorter);
    - ``dtype``: the dtype the model's weights were in while measured (``float32``, ``bfloat16``);
    - ``samples``: the number of sequences measured.
    """
    return {"data": data, "split": "eval", "tokens": max(int(tokens), 1), "seq_len": int(seq_len),
            "dtype": str(dtype).replace("torch.", ""), "samples": int(samples)}


def quality_records(q, common: dict, reference: str | None) -> list[dict]:
    """The manifest's quality entries of one :class:`~surgeon.eval.ExitQuality` (KL and top-1 only
    when measured against ``reference``, the full exit); ``common``: :func:`quality_record_fields`."""
    out = [dict(common, metric="loss", value=round(q.loss, 6)),
           dict(common, metric="perplexity", value=round(q.perplexity, 6))]
    if reference is not None and q.kl_full_exit is not None:
        out += [dict(common, metric="kl_full_exit", value=round(max(q.kl_full_exit, 0.0), 6), reference=reference),
                dict(common, metric="top1_agreement", value=round(q.top1_agreement, 6), reference=reference)]
    return out
