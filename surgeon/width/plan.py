"""Width plans: gather FFN channels and attention heads per layer (SortedNet's nested width).

For every kept layer the plan gathers, per tensor role (see ``families.json``):

====================  ======================================================
q / k / v (+ bias)    rows of the kept query heads / kept KV heads
qkv (Phi-3, fused)    rows [q of kept heads | k of kept KV heads | v of kept KV heads]
o                     columns of the kept query heads (bias unchanged)
gate / up (+ bias)    rows of the kept FFN channels
gate_up (fused)       rows [gate of kept channels | up of kept channels]
down                  columns of the kept FFN channels (bias unchanged)
====================  ======================================================

Heads are kept in whole KV groups: with ``r = num_attention_heads / num_key_value_heads``, KV head
``j`` serves query heads ``j*r .. j*r+r-1`` (transformers' ``repeat_kv``), so dropping a KV head drops
its query heads with it. ``head_dim`` is written explicitly so it does not change with the head count.
The same machinery with full widths and permuted indices is ``sort-width``.

Widths are uniform across layers: the stock transformers configs of the registered families have
one ``intermediate_size`` and one head count for every layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..arch.registry import Family, resolve_family
from ..errors import UsageError
from ..io.checkpoint import Checkpoint
from ..surgery.plan import Plan, TensorOp, plan_layers


@dataclass(frozen=True)
class WidthSpec:
    """Kept widths (absolute): FFN channels per layer and KV heads per layer (query heads follow)."""

    ffn: int
    kv_heads: int
    heads: int
    full_ffn: int
    full_kv_heads: int
    full_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.full_heads // self.full_kv_heads

    def to_dict(self) -> dict:
        return {"ffn": self.ffn, "heads": self.heads, "kv_heads": self.kv_heads, "head_dim": self.head_dim}


def width_count(value: float | int | str | None, full: int, what: str) -> int:
    """A fraction in (0, 1] or an absolute count in 1..full -> absolute count."""
    if value is None:
        return full
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"cannot read --{what} {value!r}", "give a fraction in (0, 1] or a count") from None
    is_fraction = isinstance(value, float) or (isinstance(value, str) and ("." in value or "e" in value.lower()))
    if is_fraction or (0 < v < 1):
        if not 0 < v <= 1:
            raise UsageError(f"--{what} {value} is outside (0, 1]", f"give a fraction in (0, 1] or a count in 1..{full}")
        n = round(v * full)
        if n < 1:
            raise UsageError(f"--{what} {value} keeps nothing of {full}", "give a larger fraction")
        return n
    if v != int(v) or not 1 <= int(v) <= full:
        raise UsageError(f"--{what} {value} is outside 1..{full}", f"give a fraction in (0, 1] or a count in 1..{full}")
    return int(v)


def resolve_width(cfg: dict, ffn: float | int | str | None = None, heads: float | int | str | None = None) -> WidthSpec:
    """Turn fractions / counts into a :class:`WidthSpec`, checking GQA grouping."""
    nh = cfg.get("num_attention_heads")
    nkv = cfg.get("num_key_value_heads") or nh
    inter = cfg.get("intermediate_size")
    if not isinstance(inter, int) or not isinstance(nh, int):
        raise UsageError("config has no integer intermediate_size / num_attention_heads",
                         "width surgery needs a uniform-width decoder config")
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // nh
    k = width_count(ffn, inter, "ffn")
    h = width_count(heads, nh, "heads")
    r = nh // nkv
    if h % r:
        valid = ", ".join(str(r * g) for g in range(1, nkv + 1))
        raise UsageError(
            f"--heads {heads} keeps {h} of {nh} query heads, which splits a KV group "
            f"({nkv} KV heads, {r} query heads each)",
            f"keep whole groups: {valid} heads",
        )
    return WidthSpec(k, h // r, h, inter, nkv, nh, head_dim)


def _rows(heads: Sequence[int], head_dim: int, offset: int = 0) -> list[int]:
    return [offset + h * head_dim + d for h in heads for d in range(head_dim)]


def layer_selects(family: Family, spec: WidthSpec, ffn_idx: Sequence[int], kv_idx: Sequence[int]) -> dict[str, tuple]:
    """``module.param`` (relative to the layer) -> select tuple for that tensor."""
    D, r = spec.head_dim, spec.group_size
    q_heads = [g * r + i for g in kv_idx for i in range(r)]
    q_rows, kv_rows = _rows(q_heads, D), _rows(kv_idx, D)
    ffn_idx = list(ffn_idx)
    out: dict[str, tuple] = {}
    att, mlp = family.attention, family.ffn
    if "qkv" in att:
        nq = spec.full_heads * D
        nkv = spec.full_kv_heads * D
        rows = q_rows + [nq + i for i in kv_rows] + [nq + nkv + i for i in kv_rows]
        out[f"{att['qkv']}.weight"] = ((0, tuple(rows)),)
        out[f"{att['qkv']}.bias"] = ((0, tuple(rows)),)
    else:
        for role, rows in (("q", q_rows), ("k", kv_rows), ("v", kv_rows)):
            out[f"{att[role]}.weight"] = ((0, tuple(rows)),)
            out[f"{att[role]}.bias"] = ((0, tuple(rows)),)
    out[f"{att['o']}.weight"] = ((1, tuple(q_rows)),)
    if "gate_up" in mlp:
        rows = ffn_idx + [spec.full_ffn + i for i in ffn_idx]
        out[f"{mlp['gate_up']}.weight"] = ((0, tuple(rows)),)
        out[f"{mlp['gate_up']}.bias"] = ((0, tuple(rows)),)
    else:
        for role in ("gate", "up"):
            out[f"{mlp[role]}.weight"] = ((0, tuple(ffn_idx)),)
            out[f"{mlp[role]}.bias"] = ((0, tuple(ffn_idx)),)
    out[f"{mlp['down']}.weight"] = ((1, tuple(ffn_idx)),)
    return out


def plan_width(
    ckpt: Checkpoint,
    ffn: float | int | str | None = None,
    heads: float | int | str | None = None,
    keep: Sequence[int] | None = None,
    order: dict[int, dict[str, list[int]]] | None = None,
    operation: str = "extract",
    dtype: str | None = None,
    options: dict | None = None,
) -> Plan:
    """Plan keeping layers ``keep`` (default all) at the given widths.

    ``order`` (source layer -> {"ffn": channel order, "kv": KV-head order}) says which channels and
    heads come first; without it the first k channels / first g KV groups are kept. A full-width plan
    with an order is a pure permutation (``sort-width``).
    """
    cfg = ckpt.text_config
    fam = resolve_family(cfg, ckpt.tensors)
    spec = resolve_width(cfg, ffn, heads)
    keep = list(range(ckpt.num_layers)) if keep is None else list(keep)
    base = plan_layers(ckpt, keep, operation, dtype, dict(options or {}, width=spec.to_dict()), family=fam)
    order = order or {}
    new_ops: list[TensorOp] = []
    sel_cache: dict[int, dict] = {}
    for op in base.tensors:
        split = fam.split_layer_name(op.src)
        if split is None:
            new_ops.append(op)
            continue
        src_layer, rest = split
        if src_layer not in sel_cache:
            o = order.get(src_layer, {})
            ffn_idx = list(o.get("ffn", range(spec.full_ffn)))[: spec.ffn]
            kv_idx = list(o.get("kv", range(spec.full_kv_heads)))[: spec.kv_heads]
            _check_perm(o, spec, src_layer)
            sel_cache[src_layer] = layer_selects(fam, spec, ffn_idx, kv_idx)
        select = sel_cache[src_layer].get(rest, ())
        if not select:
            new_ops.append(op)
            continue
        shape = list(op.shape)
        for dim, idx in select:
            shape[dim] = len(idx)
        is_identity = all(list(idx) == list(range(op.shape[dim])) for dim, idx in select)
        new_ops.append(replace(op, shape=tuple(shape), select=() if is_identity else tuple(select)))
    new_cfg = dict(base.config)
    target = new_cfg.get("text_config") if "text_config" in new_cfg and "num_hidden_layers" not in new_cfg else new_cfg
    target.update(intermediate_size=spec.ffn, num_attention_heads=spec.heads,
                  num_key_value_heads=spec.kv_heads, head_dim=spec.head_dim)
    return replace(base, tensors=tuple(new_ops), config=new_cfg)


def _check_perm(o: dict, spec: WidthSpec, layer: int) -> None:
    for key, full in (("ffn", spec.full_ffn), ("kv", spec.full_kv_heads)):
        if key in o and sorted(o[key]) != list(range(full)):
            raise UsageError(f"the {key} order of layer {layer} is not a permutation of 0..{full - 1}",
                             "regenerate it with surgeon sort-width")
