"""Reference reader for the sorted manifest, format version 1 (see SPEC.md). Standard library only.

Copy this file into any tool. It finds the manifest of a checkpoint (the ``sorted_manifest.json``
sidecar, or the copy in a safetensors header / index metadata), validates it, and lists the tensor
names an exit needs::

    m = read_manifest("model/")                  # folder, sidecar, .safetensors or index file
    names = exit_tensors(m, "depth-12")          # or an int: the exit with that many layers
    python reference_reader.py model/ [EXIT]     # prints the names, one per line

Every problem raises :class:`ManifestError` (a ValueError); warnings go to ``warnings``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import sys
import warnings

FORMAT, VERSION, SIDECAR, KEY = "sorted-manifest", 1, "sorted_manifest.json", "sorted_manifest"
FEATURES = {"width-prefix"}
MAX_BYTES = 64 * 1024 * 1024
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA = re.compile(r"^[0-9a-f]{64}$")
REQUIRED = {
    "": ["format", "format_version", "generator", "base", "exits"],
    "base": ["architecture", "model_type", "num_layers", "hidden_size", "vocab_size", "tie_word_embeddings",
             "config_sha256", "tensors"],
    "exit": ["name", "layers", "config", "cost", "head", "kv_prefix_compatible", "quality"],
    "cost": ["parameters", "flops_per_token", "flops_formula", "kv_cache_bytes_per_token", "kv_cache_dtype"],
    "generator": ["name", "version"],
    "tensors": ["layer_prefix", "layer", "shared"],
    "parameters": ["embedding", "layers", "head", "total"],
    "quality": ["metric", "value", "data", "split", "tokens", "seq_len", "dtype"],
    "verification": ["token_ids", "logits_shape", "logits_dtype", "logits_sha256", "decimals", "argmax"],
    "weights": ["files"],
    "file": ["name", "bytes", "sha256"],
}
DTYPES = {"BOOL", "U8", "I8", "F8_E4M3", "F8_E5M2", "F8_E8M0", "I16", "U16", "F16", "BF16", "I32", "U32", "F32",
          "I64", "U64", "F64"}


class ManifestError(ValueError):
    """The manifest is missing, unreadable or invalid."""


def _parse(raw, where):
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text, parse_constant=lambda c: _bad(f"{where}: {c} is not a JSON number"))
    except UnicodeDecodeError:
        raise ManifestError(f"{where} is not UTF-8") from None
    except RecursionError:
        raise ManifestError(f"{where} nests too deeply") from None
    except ValueError as e:
        raise ManifestError(f"{where} is not valid JSON: {e}") from None


def _bad(msg):
    raise ManifestError(msg)


def _header_metadata(path):
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            _bad(f"{path} is shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > min(100_000_000, os.path.getsize(path) - 8):
            _bad(f"{path} declares a header of {n} bytes, larger than the file")
        header = _parse(f.read(n), path)
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else _bad(f"{path}: header is not an object")
    return meta if isinstance(meta, dict) else _bad(f"{path}: __metadata__ is not an object")


def read_manifest(path):
    """Find, parse and validate the manifest of ``path``; returns the dict."""
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    sidecar = os.path.join(folder, SIDECAR)
    if os.path.isdir(path) or os.path.basename(path) == SIDECAR:
        if not os.path.isfile(sidecar):
            index = os.path.join(folder, "model.safetensors.index.json")
            single = os.path.join(folder, "model.safetensors")
            return read_manifest(index if os.path.isfile(index) else single)
        if os.path.getsize(sidecar) > MAX_BYTES:
            _bad(f"{sidecar} is larger than {MAX_BYTES} bytes")
        with open(sidecar, "rb") as f:
            m = _parse(f.read(), sidecar)
        validate(m)
        return m
    if path.endswith(".json"):
        with open(path, "rb") as f:
            index = _parse(f.read(), path)
        meta = index.get("metadata") if isinstance(index, dict) else None
    else:
        meta = _header_metadata(path)
    if not isinstance(meta, dict) or KEY not in meta:
        _bad(f"{path} carries no {KEY!r} entry and {folder} has no {SIDECAR}")
    value = meta[KEY]
    m = _parse(value, f"{path} {KEY}") if isinstance(value, str) else value
    if isinstance(m, dict) and "pointer" in m:
        if not os.path.isfile(sidecar):
            _bad(f"{path} points to {SIDECAR}, which is missing")
        with open(sidecar, "rb") as f:
            full = _parse(f.read(), sidecar)
        if not isinstance(full, dict) or hashlib.sha256(header_text(full).encode()).hexdigest() != m.get("sha256"):
            _bad(f"{SIDECAR} does not match the pointer in {path} (stale copy)")
        validate(full)
        return full
    validate(m, header_copy=True)
    return m


def header_text(m):
    """The compact header form: without ``weights``, sorted keys, no whitespace."""
    return json.dumps({k: v for k, v in m.items() if k != "weights"}, sort_keys=True, separators=(",", ":"))


def _int(v, where, lo=0):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        _bad(f"{where} must be an integer >= {lo}, not {v!r}")
    return v


def _str(v, where):
    if not isinstance(v, str) or not v:
        _bad(f"{where} must be a non-empty string, not {v!r}")
    return v


def _sha(v, where):
    if not isinstance(v, str) or not SHA.match(v):
        _bad(f"{where} must be a sha256 (64 lowercase hex digits)")


def _obj(v, kind, where):
    if not isinstance(v, dict):
        _bad(f"{where or 'manifest'} must be an object")
    for k in REQUIRED.get(kind, []):
        if k not in v:
            _bad(f"{where or 'manifest'}: missing required key {k!r}")
    return v


def _safe(name):
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name \
            or re.match(r"^[A-Za-z]:", name) or ".." in name.split("/"):
        _bad(f"file {name!r} is outside the checkpoint folder")


def _tensors(t, where):
    if not isinstance(t, dict):
        _bad(f"{where} must map tensor names to {{dtype, shape}}")
    for name, spec in t.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("dtype"), str) or spec["dtype"] not in DTYPES \
                or not isinstance(spec.get("shape"), list) \
                or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in spec["shape"]):
            _bad(f"{where}.{name} must be {{dtype: a safetensors dtype, shape: [non-negative ints]}}")


def validate(m, header_copy=False):
    """Raise ManifestError if ``m`` breaks a MUST of SPEC.md; warn on unknown top-level keys."""
    _obj(m, "", "")
    if _int(m["format_version"], "format_version", 1) > VERSION:
        _bad(f"format_version {m['format_version']} is newer than this reader ({VERSION})")
    if m["format"] != FORMAT:
        _bad(f"format is {m['format']!r}, not {FORMAT!r}")
    feats = m.get("required_features", [])
    if not isinstance(feats, list) or any(not isinstance(f, str) or f not in FEATURES for f in feats):
        _bad(f"required_features {feats!r} names a feature this reader does not implement")
    for k in sorted(set(m) - set(REQUIRED[""]) - {"required_features", "provenance", "weights", "view"}):
        warnings.warn(f"sorted manifest: unknown key {k!r} ignored", stacklevel=2)
    gen = _obj(m["generator"], "generator", "generator")
    _str(gen["name"], "generator.name")
    _str(gen["version"], "generator.version")
    base = _obj(m["base"], "base", "base")
    n_layers = _int(base["num_layers"], "base.num_layers", 1)
    _str(base["architecture"], "base.architecture")
    _str(base["model_type"], "base.model_type")
    _int(base["hidden_size"], "base.hidden_size", 1)
    _int(base["vocab_size"], "base.vocab_size", 1)
    if not isinstance(base["tie_word_embeddings"], bool):
        _bad("base.tie_word_embeddings must be true or false")
    _sha(base["config_sha256"], "base.config_sha256")
    t = _obj(base["tensors"], "tensors", "base.tensors")
    _str(t["layer_prefix"], "base.tensors.layer_prefix")
    _tensors(t["layer"], "base.tensors.layer")
    _tensors(t["shared"], "base.tensors.shared")
    exits = m["exits"]
    if not isinstance(exits, list) or not exits:
        _bad("exits must be a non-empty list")
    names, prev = set(), -1
    for e in exits:
        _exit(_obj(e, "exit", "exit"), n_layers, feats)
        if e["name"] in names:
            _bad(f"exit name {e['name']!r} is used twice")
        names.add(e["name"])
        if e["cost"]["flops_per_token"] < prev:
            _bad(f"exit {e['name']!r}: exits are not sorted by cost")
        prev = e["cost"]["flops_per_token"]
    if exits[-1]["layers"] != list(range(n_layers)) or exits[-1].get("widths") is not None:
        _bad("the last exit must be the full model")
    if "provenance" in m and not isinstance(m["provenance"], dict):
        _bad("provenance must be an object")
    if "view" in m:
        v = m["view"]
        if not isinstance(v, dict):
            _bad("view must be an object")
        for k in ("source", "exit"):
            _str(v.get(k), f"view.{k}")
        _sha(v.get("source_config_sha256"), "view.source_config_sha256")
    if "weights" not in m:
        if not header_copy:
            _bad("missing required key 'weights'")
        return m
    w = _obj(m["weights"], "weights", "weights")
    files = w["files"]
    if not isinstance(files, list) or not files:
        _bad("weights.files must be a non-empty list")
    seen = set()
    for f in files:
        _obj(f, "file", "weights.files entry")
        _safe(f["name"])
        if f["name"] in seen:
            _bad(f"weights: file {f['name']!r} is listed twice")
        seen.add(f["name"])
        _int(f["bytes"], f"weights {f['name']} bytes")
        _sha(f["sha256"], f"weights {f['name']}: sha256")
    return m


def _exit(e, n_layers, feats):
    if not isinstance(e["name"], str) or not NAME.match(e["name"]):
        _bad(f"exit name {e['name']!r} is not allowed")
    where = f"exit {e['name']!r}"
    layers = e["layers"]
    if not isinstance(layers, list) or not layers:
        _bad(f"{where}: layers must be a non-empty list")
    for i in layers:
        if _int(i, f"{where} layer") >= n_layers:
            _bad(f"{where} names layer {i}, past the last layer ({n_layers - 1})")
    if len(set(layers)) != len(layers):
        _bad(f"{where} names a layer twice")
    cfg = e["config"]
    if not isinstance(cfg, dict) or cfg.get("num_hidden_layers", (cfg.get("text_config") or {}).get("num_hidden_layers")) != len(layers):
        _bad(f"{where}: config.num_hidden_layers must be {len(layers)}")
    if e["head"] != "shared" or not isinstance(e["kv_prefix_compatible"], bool):
        _bad(f"{where}: head must be 'shared' and kv_prefix_compatible a boolean")
    if e["kv_prefix_compatible"] and layers != list(range(len(layers))):
        _bad(f"{where}: kv_prefix_compatible but the layers are not a prefix")
    if e.get("widths") is not None:
        if "width-prefix" not in feats:
            _bad(f"{where} has widths but required_features lacks 'width-prefix'")
        w = e["widths"]
        if not isinstance(w, dict) or not w or set(w) - {"ffn", "heads", "kv_heads"}:
            _bad(f"{where}: widths must use ffn/heads/kv_heads")
        for k, v in w.items():
            _int(v, f"{where} widths.{k}", 1)
    cost = _obj(e["cost"], "cost", f"{where} cost")
    p = _obj(cost["parameters"], "parameters", f"{where} cost.parameters")
    parts = [_int(p[k], f"{where} parameters.{k}") for k in ("embedding", "layers", "head")]
    if sum(parts) != _int(p["total"], f"{where} parameters.total"):
        _bad(f"{where}: parameters.total is not embedding + layers + head")
    _int(cost["flops_per_token"], f"{where} flops_per_token")
    _str(cost["flops_formula"], f"{where} flops_formula")
    _int(cost["kv_cache_bytes_per_token"], f"{where} kv_cache_bytes_per_token")
    _str(cost["kv_cache_dtype"], f"{where} kv_cache_dtype")
    if not isinstance(e["quality"], list):
        _bad(f"{where}: quality must be a list")
    for q in e["quality"]:
        _obj(q, "quality", f"{where} quality entry")
        _str(q["metric"], f"{where} quality metric")
        v = q["value"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            _bad(f"{where}: quality values must be finite numbers")
        _str(q["data"], f"{where} quality data")
        if q["split"] is not None:
            _str(q["split"], f"{where} quality split")
        _int(q["tokens"], f"{where} quality tokens", 1)
        _int(q["seq_len"], f"{where} quality seq_len", 1)
        _str(q["dtype"], f"{where} quality dtype")
    ver = e.get("verification")
    if ver is not None:
        _obj(ver, "verification", f"{where} verification")
        for k in ("token_ids", "logits_shape", "argmax"):
            if not isinstance(ver[k], list) or not ver[k] or any(isinstance(x, bool) or not isinstance(x, int) or x < 0
                                                                   for x in ver[k]):
                _bad(f"{where}: verification.{k} must be a non-empty list of non-negative integers")
        _str(ver["logits_dtype"], f"{where} verification.logits_dtype")
        _sha(ver["logits_sha256"], f"{where} verification.logits_sha256")
        _int(ver["decimals"], f"{where} verification.decimals")
        shape = ver["logits_shape"]
        if len(shape) != 2 or shape[0] != len(ver["token_ids"]) or len(ver["argmax"]) != len(ver["token_ids"]):
            _bad(f"{where}: verification must hold [len(token_ids), vocab] logits and one argmax per position")
        if any(t >= shape[1] for t in ver["token_ids"] + ver["argmax"]):
            _bad(f"{where}: a verification token id is not below vocab_size")


def find_exit(m, exit):
    """The exit named ``exit``, or (an int) the exit with that many layers and no widths."""
    for e in m["exits"]:
        if e["name"] == exit or (isinstance(exit, int) and len(e["layers"]) == exit and not e.get("widths")):
            return e
    _bad(f"no exit {exit!r}; exits: {', '.join(e['name'] for e in m['exits'])}")


def exit_tensors(m, exit):
    """The stored tensor names the exit reads: the shared tensors and each kept layer's tensors."""
    e = find_exit(m, exit)
    t = m["base"]["tensors"]
    return list(t["shared"]) + [f"{t['layer_prefix']}{i}.{rel}" for i in e["layers"] for rel in t["layer"]]


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: reference_reader.py PATH [EXIT]")
    try:
        manifest = read_manifest(sys.argv[1])
        if len(sys.argv) == 2:
            print("\n".join(f"{e['name']}: {len(e['layers'])} layers" for e in manifest["exits"]))
        else:
            arg = sys.argv[2]
            print("\n".join(exit_tensors(manifest, int(arg) if arg.isdigit() else arg)))
    except (ManifestError, OSError) as err:
        sys.exit(f"error: {err}")
