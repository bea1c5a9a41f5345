"""Check a manifest against its checkpoint: tensors, config, header copy, and (``verify``) hashes.

:func:`check_checkpoint` is what ``surgeon manifest validate PATH [--verify]`` runs. PATH may be a
checkpoint folder, a ``sorted_manifest.json`` file, or a single safetensors file (its header copy).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..io.checkpoint import Checkpoint
from ..io.safetensors_header import read_header
from ..provenance import sha256_file, sha256_json
from .model import HEADER_KEY, MANIFEST_FILE, ManifestError
from .resolve import remote_header_metadata
from .store import header_form, is_pointer, parse, read_header_copy, read_sidecar
from .validate import safe_file_name, validate_manifest

log = logging.getLogger(__name__)


@dataclass
class ExitCheck:
    name: str
    num_layers: int
    parameters: int
    tensors: int
    verified: str | None = None  # "exact" / "close" / None when not verified


@dataclass
class ValidationReport:
    path: str
    source: str  # where the manifest was read from
    format_version: int
    exits: list[ExitCheck]
    warnings: list[str] = field(default_factory=list)
    header_copy: str = "absent"  # "copy" / "pointer" / "absent"
    hashes_verified: bool = False

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def exit_tensor_names(manifest: dict, exit: dict) -> list[str]:
    """The stored tensor names an exit reads: every shared tensor plus each kept layer's tensors."""
    t = manifest["base"]["tensors"]
    names = list(t["shared"])
    for i in exit["layers"]:
        names.extend(f"{t['layer_prefix']}{i}.{rel}" for rel in t["layer"])
    return names


def _fail(problem: str, hint: str = "regenerate the manifest with `surgeon manifest MODEL --in-place`"):
    raise ManifestError(f"sorted manifest: {problem}", hint)


def check_checkpoint(path: str | Path, verify: bool = False, loader: Callable | None = None) -> ValidationReport:
    """Validate the manifest of ``path`` (schema, tensors, config, header copy; hashes with ``verify``).

    ``verify`` also recomputes each exit's verification logits with ``loader`` (``surgeon.load``, or a
    callable with its signature ``(path, exit, dtype=)``), which it then requires.
    """
    from ..hub import local_folder, lookup

    repo = lookup(path)  # a hub model ID: its cache snapshot (every file downloaded only to --verify hashes)
    path = (local_folder(path) if verify else repo.folder) if repo is not None else Path(path)
    if verify and loader is None:
        raise TypeError("check_checkpoint(verify=True) loads each exit: pass loader=surgeon.load")
    if path.is_file() and path.suffix == ".safetensors":
        found = read_header_copy(path.parent, read_header(path).metadata)
        if found is None:
            _fail(f"{path.name} carries no {HEADER_KEY} entry in its header", "write one with `surgeon manifest`")
        data, _ = found
        if is_pointer(data):
            path = path.parent
        else:
            w = validate_manifest(data, header_copy=True)
            return ValidationReport(str(path), f"{path.name} header", data["format_version"],
                                    [ExitCheck(e["name"], len(e["layers"]), e["cost"]["parameters"]["total"],
                                               len(exit_tensor_names(data, e))) for e in data["exits"]], w, "copy")
    folder = path.parent if path.is_file() and path.name == MANIFEST_FILE else path
    data = read_sidecar(folder)
    if data is None:
        _fail(f"{folder} has no {MANIFEST_FILE}", "write one with `surgeon manifest MODEL --in-place`")
    warnings = validate_manifest(data)
    ckpt = Checkpoint.open(folder)
    base = data["base"]
    if base["num_layers"] != ckpt.num_layers:
        _fail(f"base.num_layers is {base['num_layers']} but config.json has {ckpt.num_layers} layers")
    if base["config_sha256"] != sha256_json(ckpt.config):
        _fail("config.json changed since the manifest was written (base.config_sha256 differs)")
    names = {f["name"] for f in data["weights"]["files"]}
    if names != set(ckpt.files):
        _fail(f"weights.files lists {sorted(names)} but the checkpoint's weight files are {sorted(ckpt.files)}")
    for f in data["weights"]["files"]:
        p = folder / safe_file_name(f["name"], "weights.files")
        size = ckpt.file_sizes[f["name"]]  # from the header read (a hub model's shard need not be downloaded)
        if size != f["bytes"]:
            _fail(f"{f['name']} is {size} bytes, the manifest says {f['bytes']}")
        if verify and sha256_file(p) != f["sha256"]:
            _fail(f"{f['name']} does not match its sha256 in the manifest", "the weights changed or are corrupt")
    checks = []
    for e in data["exits"]:
        expected = _exit_shapes(data, e)
        for name, spec in expected.items():
            info = ckpt.tensors.get(name)
            if info is None:
                _fail(f"exit {e['name']!r} needs tensor {name}, which the checkpoint lacks")
            if info.dtype != spec["dtype"] or list(info.shape) != spec["shape"]:
                _fail(f"tensor {name} is {info.dtype}{list(info.shape)}, the manifest says {spec['dtype']}{spec['shape']}")
        if e.get("widths"):
            _check_widths(ckpt, e)
        checks.append(ExitCheck(e["name"], len(e["layers"]), e["cost"]["parameters"]["total"], len(expected)))
    header = _check_header(folder, data, remote_header_metadata(ckpt))
    if header == "absent":
        warnings.append(f"no header copy ({HEADER_KEY}) beside {MANIFEST_FILE}; runtimes reading only the weights "
                        "will not see the exits")
    if verify:
        _verify_exits(folder, data, checks, loader)
    return ValidationReport(str(folder), MANIFEST_FILE, data["format_version"], checks, warnings, header, verify)


def _check_widths(ckpt: Checkpoint, exit: dict) -> None:
    """A width exit must be sliceable from this checkpoint (counts in range, whole KV groups)."""
    from ..errors import UsageError
    from .build import exit_plan

    try:
        exit_plan(ckpt, exit["layers"], exit["widths"])
    except (UsageError, ManifestError) as e:
        _fail(f"exit {exit['name']!r} has widths {exit['widths']} this checkpoint cannot provide ({e.problem})")


def _exit_shapes(manifest: dict, exit: dict) -> dict[str, dict]:
    t = manifest["base"]["tensors"]
    out = {n: s for n, s in t["shared"].items()}
    for i in exit["layers"]:
        out.update({f"{t['layer_prefix']}{i}.{rel}": s for rel, s in t["layer"].items()})
    return out


def _check_header(folder: Path, data: dict, metadata: dict | None = None) -> str:
    found = read_header_copy(folder, metadata)
    if found is None:
        return "absent"
    value, where = found
    expected = header_form(data)
    if is_pointer(value):
        import hashlib

        if value.get("sha256") != hashlib.sha256(expected.encode("utf-8")).hexdigest():
            _fail(f"the header pointer in {where} does not match {MANIFEST_FILE} (stale copy)")
        return "pointer"
    if header_form(value) != expected:
        _fail(f"the header copy in {where} differs from {MANIFEST_FILE} (stale copy)")
    return "copy"


def _verify_exits(folder: Path, data: dict, checks: list[ExitCheck], load: Callable) -> None:
    import torch

    from .verify import compare_record, exit_logits

    for e, c in zip(data["exits"], checks):
        rec = e.get("verification")
        if rec is None:
            c.verified = "no record"
            continue
        model = load(folder, {"name": e["name"], "layers": e["layers"], "widths": e.get("widths")},
                     dtype=torch.float32)
        ok, how = compare_record(rec, exit_logits(model, rec["token_ids"]))
        del model
        if not ok:
            _fail(f"exit {e['name']!r} does not reproduce its verification record: {how}",
                  "the weights or the loader changed; re-measure with `surgeon manifest MODEL --in-place`")
        c.verified = how


def parse_manifest_bytes(raw: bytes, where: str = MANIFEST_FILE, header_copy: bool = False) -> tuple[dict, list[str]]:
    """Parse and validate manifest bytes (a sidecar, or with ``header_copy`` the copy from a header)."""
    data = parse(raw, where)
    return data, validate_manifest(data, header_copy=header_copy)
