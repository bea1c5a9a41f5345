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
}


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


def _obj(v, kind, where):
    if not isinstance(v, dict):
        _bad(f"{where} must be an object")
    for k in REQUIRED.get(kind, []):
        if k not in v:
            _bad(f"{where or 'manifest'}: missing required key {k!r}")
    return v


def _safe(name):
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name \
            or re.match(r"^[A-Za-z]:", name) or ".." in name.split("/"):
        _bad(f"file {name!r} is outside the checkpoint folder")


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
    for k in sorted(set(m) - set(REQUIRED[""]) - {"required_features", "provenance", "weights"}):
        warnings.warn(f"sorted manifest: unknown key {k!r} ignored", stacklevel=2)
    if not isinstance(m["generator"], dict) or not all(isinstance(m["generator"].get(k), str) for k in ("name", "version")):
        _bad("generator must be {name, version} strings")
    base = _obj(m["base"], "base", "base")
    n_layers = _int(base["num_layers"], "base.num_layers", 1)
    if not isinstance(base["config_sha256"], str) or not SHA.match(base["config_sha256"]):
        _bad("base.config_sha256 must be a sha256")
    t = base["tensors"]
    if not isinstance(t, dict) or not isinstance(t.get("layer_prefix"), str) \
            or not all(isinstance(t.get(k), dict) for k in ("layer", "shared")):
        _bad("base.tensors must be {layer_prefix, layer, shared}")
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
    if exits[-1]["layers"] != list(range(n_layers)) or exits[-1].get("widths"):
        _bad("the last exit must be the full model")
    if "weights" not in m:
        if not header_copy:
            _bad("missing required key 'weights'")
        return m
    files = m["weights"].get("files") if isinstance(m["weights"], dict) else None
    if not isinstance(files, list) or not files:
        _bad("weights.files must be a non-empty list")
    for f in files:
        if not isinstance(f, dict):
            _bad("weights.files entries must be objects")
        _safe(f.get("name"))
        _int(f.get("bytes"), f"weights {f.get('name')} bytes")
        if not isinstance(f.get("sha256"), str) or not SHA.match(f["sha256"]):
            _bad(f"weights {f.get('name')}: sha256 must be 64 hex digits")
    return m


def _exit(e, n_layers, feats):
    where = f"exit {e['name']!r}"
    if not isinstance(e["name"], str) or not NAME.match(e["name"]):
        _bad(f"exit name {e['name']!r} is not allowed")
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
    p = cost["parameters"] if isinstance(cost["parameters"], dict) else _bad(f"{where}: parameters must be an object")
    parts = [_int(p.get(k), f"{where} parameters.{k}") for k in ("embedding", "layers", "head")]
    if sum(parts) != _int(p.get("total"), f"{where} parameters.total"):
        _bad(f"{where}: parameters.total is not embedding + layers + head")
    _int(cost["flops_per_token"], f"{where} flops_per_token")
    _int(cost["kv_cache_bytes_per_token"], f"{where} kv_cache_bytes_per_token")
    if not isinstance(e["quality"], list):
        _bad(f"{where}: quality must be a list")
    for q in e["quality"]:
        v = q.get("value") if isinstance(q, dict) else None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            _bad(f"{where}: quality values must be finite numbers")


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
