"""Validate a sorted manifest (a parsed JSON object) against SPEC.md: strict about what matters.

:func:`validate_manifest` raises :class:`~.model.ManifestError` for the first violation of a MUST
(missing required key, wrong type, a layer past the end, unsorted exits, a file outside the
folder, an unknown required feature, ...) and returns warnings for what a reader may ignore
(unknown keys, unknown metrics). It looks at the manifest alone; checks against the files of a
checkpoint live in :mod:`surgeon.manifest.check`.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import PurePosixPath
from typing import Any

from .model import FORMAT, FORMAT_VERSION, KNOWN_FEATURES, METRICS, ManifestError

_HINT = "regenerate it with `surgeon manifest MODEL`, or fix the file by hand (see formats/sorted-manifest/SPEC.md)"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_DTYPES = {"BOOL", "U8", "I8", "F8_E4M3", "F8_E5M2", "F8_E8M0", "I16", "U16", "F16", "BF16", "I32", "U32", "F32",
           "I64", "U64", "F64"}
WIDTH_KEYS = ("ffn", "heads", "kv_heads")

KEYS = {
    "top": ({"format", "format_version", "generator", "base", "exits"},
            {"required_features", "provenance", "weights", "view"}),
    "view": ({"source", "exit", "source_config_sha256"}, set()),
    "generator": ({"name", "version"}, set()),
    "base": ({"architecture", "model_type", "num_layers", "hidden_size", "vocab_size", "tie_word_embeddings",
              "config_sha256", "tensors"}, set()),
    "tensors": ({"layer_prefix", "layer", "shared"}, set()),
    "exit": ({"name", "layers", "config", "cost", "head", "kv_prefix_compatible", "quality"},
             {"widths", "verification"}),
    "cost": ({"parameters", "flops_per_token", "flops_formula", "kv_cache_bytes_per_token", "kv_cache_dtype"}, set()),
    "parameters": ({"embedding", "layers", "head", "total"}, set()),
    "quality": ({"metric", "value", "data", "split", "tokens", "seq_len", "dtype"}, {"samples", "reference"}),
    "verification": ({"token_ids", "logits_shape", "logits_dtype", "logits_sha256", "decimals", "argmax"},
                     {"top", "atol"}),
    "weights": ({"files"}, set()),
    "file": ({"name", "bytes", "sha256"}, set()),
}


def _fail(where: str, problem: str, hint: str = _HINT):
    raise ManifestError(f"sorted manifest: {where}: {problem}" if where else f"sorted manifest: {problem}", hint)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _keys(obj: Any, kind: str, where: str, warnings: list[str]) -> dict:
    if not isinstance(obj, dict):
        _fail(where, f"must be a JSON object, not {type(obj).__name__}")
    required, optional = KEYS[kind]
    for k in sorted(required):
        if k not in obj:
            _fail(where, f"missing required key {k!r}")
    for k in sorted(set(obj) - required - optional):
        warnings.append(f"{where or 'top level'}: unknown key {k!r} (ignored)")
    return obj


def _int(v: Any, where: str, minimum: int = 0) -> int:
    if not _is_int(v) or v < minimum:
        _fail(where, f"must be an integer >= {minimum}, not {v!r}")
    return v


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v:
        _fail(where, f"must be a non-empty string, not {v!r}")
    return v


def _sha(v: Any, where: str) -> None:
    if not isinstance(v, str) or not _SHA.match(v):
        _fail(where, "must be 64 lowercase hex digits (a sha256)")


def safe_file_name(name: Any, where: str) -> str:
    """A relative POSIX path inside the checkpoint folder (no absolute path, no '..', no backslash)."""
    _str(name, where)
    if os.path.isabs(name) or name.startswith("/") or "\\" in name or re.match(r"^[A-Za-z]:", name) \
            or ".." in PurePosixPath(name).parts:
        _fail(where, f"names {name!r}, outside the checkpoint folder",
              "a manifest may only name files inside its own folder (relative paths without '..')")
    return name


def _tensor_map(obj: Any, where: str) -> None:
    if not isinstance(obj, dict):
        _fail(where, "must be an object of tensor name -> {dtype, shape}")
    for name, spec in obj.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("dtype"), str) or spec["dtype"] not in _DTYPES or not isinstance(spec.get("shape"), list) \
                or not all(_is_int(d) and d >= 0 for d in spec["shape"]):
            _fail(f"{where}.{name}", "must be {\"dtype\": a safetensors dtype, \"shape\": [non-negative ints]}")


def validate_manifest(data: Any, header_copy: bool = False) -> list[str]:
    """Check ``data`` against format version 1; return warnings, raise :class:`ManifestError`.

    ``header_copy=True`` accepts the copy stored in a safetensors header, which has no ``weights``.
    """
    warnings: list[str] = []
    if not isinstance(data, dict):
        _fail("", f"must be a JSON object, not {type(data).__name__}")
    if "format_version" in data:
        v = data["format_version"]
        if not _is_int(v) or v < 1:
            _fail("format_version", f"must be a positive integer, not {v!r}")
        if v > FORMAT_VERSION:
            _fail("format_version", f"is {v}, newer than this reader ({FORMAT_VERSION})",
                  "upgrade surgeon (pip install -U surgeon) to read it")
    _keys(data, "top", "", warnings)
    if data["format"] != FORMAT:
        _fail("format", f"is {data['format']!r}, expected {FORMAT!r}")
    features = data.get("required_features", [])
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        _fail("required_features", "must be a list of strings")
    for f in features:
        if f not in KNOWN_FEATURES:
            _fail("required_features", f"requires feature {f!r}, which this reader does not implement",
                  "upgrade surgeon, or use a reader that implements it")
    gen = _keys(data["generator"], "generator", "generator", warnings)
    _str(gen["name"], "generator.name")
    _str(gen["version"], "generator.version")

    base = _keys(data["base"], "base", "base", warnings)
    L = _int(base["num_layers"], "base.num_layers", 1)
    for k in ("architecture", "model_type"):
        _str(base[k], f"base.{k}")
    _int(base["hidden_size"], "base.hidden_size", 1)
    _int(base["vocab_size"], "base.vocab_size", 1)
    if not isinstance(base["tie_word_embeddings"], bool):
        _fail("base.tie_word_embeddings", "must be true or false")
    _sha(base["config_sha256"], "base.config_sha256")
    tens = _keys(base["tensors"], "tensors", "base.tensors", warnings)
    _str(tens["layer_prefix"], "base.tensors.layer_prefix")
    _tensor_map(tens["layer"], "base.tensors.layer")
    _tensor_map(tens["shared"], "base.tensors.shared")

    exits = data["exits"]
    if not isinstance(exits, list) or not exits:
        _fail("exits", "must be a non-empty list (the full model is always an exit)")
    names: set[str] = set()
    prev_flops = -1
    for i, e in enumerate(exits):
        where = f"exits[{i}]"
        _keys(e, "exit", where, warnings)
        name = e["name"]
        if not isinstance(name, str) or not _NAME.match(name):
            _fail(f"{where}.name", f"{name!r} must match {_NAME.pattern}")
        where = f"exit {name!r}"
        if name in names:
            _fail(where, "the name is used twice", "give every exit its own name")
        names.add(name)
        _exit(e, where, L, features, warnings)
        flops = e["cost"]["flops_per_token"]
        if flops < prev_flops:
            _fail(where, "exits are not sorted by cost (flops_per_token must not decrease)",
                  "list exits from cheapest to the full model")
        prev_flops = flops
    last = exits[-1]
    if last["layers"] != list(range(L)) or last.get("widths") is not None:
        _fail(f"exit {last['name']!r}", f"the last exit must be the full model (layers 0..{L - 1}, no widths)",
              "add the full model as the last exit")

    if "provenance" in data and not isinstance(data["provenance"], dict):
        _fail("provenance", "must be an object")
    if "view" in data:  # this checkpoint is one exit of another (surgeon view), SPEC §4
        view = _keys(data["view"], "view", "view", warnings)
        _str(view["source"], "view.source")
        if not isinstance(view["exit"], str) or not _NAME.match(view["exit"]):
            _fail("view.exit", f"must be an exit name, not {view['exit']!r}")
        _sha(view["source_config_sha256"], "view.source_config_sha256")
    if "weights" in data:
        w = _keys(data["weights"], "weights", "weights", warnings)
        if not isinstance(w["files"], list) or not w["files"]:
            _fail("weights.files", "must be a non-empty list")
        seen = set()
        for j, f in enumerate(w["files"]):
            _keys(f, "file", f"weights.files[{j}]", warnings)
            safe_file_name(f["name"], f"weights.files[{j}].name")
            if f["name"] in seen:
                _fail(f"weights.files[{j}].name", f"{f['name']!r} is listed twice")
            seen.add(f["name"])
            _int(f["bytes"], f"weights.files[{j}].bytes")
            _sha(f["sha256"], f"weights.files[{j}].sha256")
    elif not header_copy:
        _fail("", "missing required key 'weights' (only the header copy may omit it)")
    return warnings


def _exit(e: dict, where: str, L: int, features: list[str], warnings: list[str]) -> None:
    layers = e["layers"]
    if not isinstance(layers, list) or not layers or not all(_is_int(i) for i in layers):
        _fail(f"{where}.layers", "must be a non-empty list of 0-based layer indices (integers, no ranges)")
    for i in layers:
        if not 0 <= i < L:
            _fail(where, f"names layer {i}, past the last layer ({L - 1})", "exits may only name layers 0..num_layers-1")
    if len(set(layers)) != len(layers):
        _fail(where, "names a layer twice")
    if not isinstance(e["config"], dict):
        _fail(f"{where}.config", "must be an object (a ready-to-load transformers config)")
    n = e["config"].get("num_hidden_layers", (e["config"].get("text_config") or {}).get("num_hidden_layers"))
    if n != len(layers):
        _fail(f"{where}.config", f"num_hidden_layers is {n!r} but the exit has {len(layers)} layers",
              "the exit's config must be sliced to its layers")
    if e["head"] != "shared":
        _fail(f"{where}.head", f"is {e['head']!r}; format version 1 defines only \"shared\"")
    if not isinstance(e["kv_prefix_compatible"], bool):
        _fail(f"{where}.kv_prefix_compatible", "must be true or false")
    if e["kv_prefix_compatible"] and layers != list(range(len(layers))):
        _fail(f"{where}.kv_prefix_compatible", "is true but the layers are not a prefix 0..k-1")
    widths = e.get("widths")
    if widths is not None:
        if "width-prefix" not in features:
            _fail(f"{where}.widths", "is set but required_features lacks \"width-prefix\"",
                  "add \"width-prefix\" to required_features so old readers refuse the manifest")
        if not isinstance(widths, dict) or not widths or set(widths) - set(WIDTH_KEYS) \
                or not all(_is_int(v) and v > 0 for v in widths.values()):
            _fail(f"{where}.widths", f"must map some of {', '.join(WIDTH_KEYS)} to positive integers")
    cost = _keys(e["cost"], "cost", f"{where}.cost", warnings)
    p = _keys(cost["parameters"], "parameters", f"{where}.cost.parameters", warnings)
    for k in ("embedding", "layers", "head", "total"):
        _int(p[k], f"{where}.cost.parameters.{k}")
    if p["total"] != p["embedding"] + p["layers"] + p["head"]:
        _fail(f"{where}.cost.parameters", "total is not embedding + layers + head")
    _int(cost["flops_per_token"], f"{where}.cost.flops_per_token")
    _str(cost["flops_formula"], f"{where}.cost.flops_formula")
    _int(cost["kv_cache_bytes_per_token"], f"{where}.cost.kv_cache_bytes_per_token")
    _str(cost["kv_cache_dtype"], f"{where}.cost.kv_cache_dtype")
    if not isinstance(e["quality"], list):
        _fail(f"{where}.quality", "must be a list (possibly empty)")
    for j, q in enumerate(e["quality"]):
        qw = f"{where}.quality[{j}]"
        _keys(q, "quality", qw, warnings)
        _str(q["metric"], f"{qw}.metric")
        if q["metric"] not in METRICS:
            warnings.append(f"{qw}: unknown metric {q['metric']!r} (kept, not interpreted)")
        v = q["value"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            _fail(f"{qw}.value", f"must be a finite number, not {v!r}")
        _str(q["data"], f"{qw}.data")
        if q["split"] is not None:
            _str(q["split"], f"{qw}.split")
        _int(q["tokens"], f"{qw}.tokens", 1)
        _int(q["seq_len"], f"{qw}.seq_len", 1)
        _str(q["dtype"], f"{qw}.dtype")
    ver = e.get("verification")
    if ver is not None:
        vw = f"{where}.verification"
        _keys(ver, "verification", vw, warnings)
        for k in ("token_ids", "logits_shape", "argmax"):
            if not isinstance(ver[k], list) or not ver[k] or not all(_is_int(x) and x >= 0 for x in ver[k]):
                _fail(f"{vw}.{k}", "must be a non-empty list of non-negative integers")
        _str(ver["logits_dtype"], f"{vw}.logits_dtype")
        _sha(ver["logits_sha256"], f"{vw}.logits_sha256")
        _int(ver["decimals"], f"{vw}.decimals")
        if len(ver["logits_shape"]) != 2 or ver["logits_shape"][0] != len(ver["token_ids"]):
            _fail(f"{vw}.logits_shape", "must be [number of token_ids, vocab_size]")
        if any(t >= ver["logits_shape"][1] for t in ver["token_ids"] + ver["argmax"]):
            _fail(f"{vw}", "a token id is not below vocab_size")
        if len(ver["argmax"]) != len(ver["token_ids"]):
            _fail(f"{vw}.argmax", "must hold one token per prompt position")
