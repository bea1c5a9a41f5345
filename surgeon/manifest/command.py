"""``surgeon manifest``: measure a checkpoint's exits and write its sorted manifest; validate one.

:func:`stamp` is the step every surgeon output ends with (``surgery.execute`` calls it inside the
temp folder, before the atomic rename); :func:`write_manifest_for` is the ``surgeon manifest MODEL``
command (a copy with ``-o``, or the model itself with ``--in-place``); :func:`validate_path` is
``surgeon manifest validate``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..io.checkpoint import INDEX_FILE, Checkpoint
from ..options import opt
from .build import build_manifest, normalize_exits
from .check import ValidationReport, check_checkpoint
from .model import MANIFEST_FILE, ManifestError
from .store import _stamp_header, header_value, pointer_value, read_sidecar, write_manifest

log = logging.getLogger(__name__)

# Verification loads each exit in float32 (4 bytes per parameter); above this size an output is
# written without it, keeping the streaming executor's about-one-tensor memory promise, and
# `surgeon manifest MODEL --in-place --verify` adds it when the memory is there.
VERIFY_MAX_PARAMETERS = 150_000_000


def stamp(folder: str | Path, exits: list[dict] | None = None, provenance: list[dict] | None = None,
          verify: bool | None = None, strict: bool = True) -> dict | None:
    """Build, verify and write the manifest of the checkpoint in ``folder``; returns the manifest.

    ``strict=False`` (what ``surgery.execute`` uses) turns a checkpoint that format version 1 cannot
    describe (e.g. non-uniform layers) into a warning and no manifest, and a model transformers
    cannot run into a manifest without verification records, instead of failing the whole output.
    """
    ckpt = Checkpoint.open(folder)
    exits = normalize_exits(ckpt, exits)
    try:
        build_manifest(ckpt, exits, provenance)  # structure first: fail before any model is loaded
    except ManifestError as e:
        if strict:
            raise
        log.warning("no sorted manifest written for %s: %s", folder, e)
        return None
    if verify is None:
        verify = ckpt.num_parameters <= VERIFY_MAX_PARAMETERS
    records = {}
    if verify:
        from .measure import verification_record

        vocab = ckpt.text_config["vocab_size"]
        try:
            records = {e["name"]: verification_record(folder, e, vocab) for e in exits}
        except Exception as e:  # noqa: BLE001 - only with strict=False; the manifest is still valid without
            if strict:
                raise
            log.warning("sorted manifest of %s written without verification records: %s", folder, e)
            records = {}
    return write_manifest(folder, build_manifest(ckpt, exits, provenance, records))


def _width_item(item: str, cfg: dict | None) -> tuple[int, dict | None]:
    """``K`` or ``K:ffn=F[:heads=H]`` -> (K, widths with absolute counts)."""
    k, *rest = item.split(":")
    if not rest:
        return int(k), None
    opts = {}
    for r in rest:
        key, _, value = r.partition("=")
        if key.strip() not in ("ffn", "heads") or not value.strip():
            raise UsageError(f"cannot read --exits item {item!r}", "write widths as K:ffn=F:heads=H, e.g. 24:ffn=0.5")
        opts[key.strip()] = value.strip()
    from ..width.plan import resolve_width

    spec = resolve_width(cfg or {}, opts.get("ffn"), opts.get("heads"))
    widths = {}
    if "ffn" in opts:
        widths["ffn"] = spec.ffn
    if "heads" in opts:
        widths.update(heads=spec.heads, kv_heads=spec.kv_heads)
    return int(k), widths


def parse_exits(text: str | None, num_layers: int, cfg: dict | None = None) -> list[dict] | None:
    """``--exits``: comma-separated layer counts (prefix exits), each optionally narrowed
    (``24:ffn=0.5:heads=6``: the first FFN channels / heads, fractions or counts), ``all`` (every
    prefix), or ``NAME=I,J,...`` entries separated by ``;`` (explicit kept layers)."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    if text == "all":
        return [{"name": f"depth-{k}", "layers": list(range(k))} for k in range(1, num_layers + 1)]
    out = []
    try:
        if "=" in text and ":" not in text:
            for part in text.split(";"):
                name, layers = part.split("=", 1)
                out.append({"name": name.strip(), "layers": [int(x) for x in layers.split(",")]})
        else:
            for item in text.split(","):
                k, widths = _width_item(item.strip(), cfg)
                if not 1 <= k <= num_layers:
                    raise UsageError(f"--exits names {k} layers, outside 1..{num_layers}", f"the model has {num_layers} layers")
                e = {"layers": list(range(k))}
                if widths:
                    e["widths"] = widths
                else:
                    e["name"] = f"depth-{k}"
                out.append(e)
    except ValueError:
        raise UsageError(f"cannot read --exits {text!r}",
                         "give layer counts (12,16,24), narrowed ones (24:ffn=0.5), `all`, "
                         "or NAME=I,J,... entries separated by ';'") from None
    return out


@dataclass(frozen=True)
class ManifestOptions:
    model: Path = opt(help="Checkpoint folder.", cli=False)
    output: Path | None = opt(None, "Write a copy of MODEL with the manifest here.", flags=("-o", "--output"))
    in_place: bool = opt(False, "Write the manifest into MODEL itself (sidecar + header copy; weights untouched).")
    exits: str | None = opt(None, "Exits: layer counts `4,8,12` (narrowed: `24:ffn=0.5:heads=6`), `all`, or "
                                  "`NAME=I,J,...;...`. "
                                  "Default: the existing manifest's exits, else the full model.", metavar="SPEC")
    eval_data: str | None = opt(None, "Held-out data to measure each exit on (e.g. builtin:sotu, c4, file.txt).",
                                metavar="SPEC")
    samples: int = opt(32, "Evaluation sequences.")
    seq_len: int = opt(256, "Tokens per evaluation sequence.")
    batch_size: int = opt(4, "Evaluation batch size.")
    verify: bool = opt(True, "Record a verification hash per exit (loads each exit once).")
    force: bool = opt(False, "Replace a non-empty -o folder.")

    def __post_init__(self):
        if self.in_place == (self.output is not None):
            raise UsageError("give exactly one of -o/--output and --in-place",
                             "write a copy with -o OUT, or update MODEL with --in-place")
        if self.samples < 1 or self.seq_len < 2 or self.batch_size < 1:
            raise UsageError("--samples, --batch-size must be >= 1 and --seq-len >= 2", "give larger values")


@dataclass
class ManifestResult:
    output: str
    manifest: dict
    measured: bool
    data: dict = field(default_factory=dict)


def _quality(model: Path, exits: list[dict], opts: ManifestOptions, progress) -> tuple[dict, dict]:
    from transformers import AutoTokenizer

    from ..data import calibration_samples
    from .measure import measure_quality

    tok = AutoTokenizer.from_pretrained(model)
    data = calibration_samples(opts.eval_data, tok, samples=opts.samples, seq_len=opts.seq_len, role="eval",
                               pack=True)
    q = measure_quality(model, exits, data, data_spec=opts.eval_data, split="eval",
                        batch_size=opts.batch_size, progress=progress)
    return q, data.describe()


def write_manifest_for(opts: ManifestOptions, progress=None) -> ManifestResult:
    """Measure the exits of ``opts.model`` and write its manifest (into a copy, or in place)."""
    ckpt = Checkpoint.open(opts.model)
    exits = parse_exits(opts.exits, ckpt.num_layers, ckpt.text_config)
    if exits is None:
        old = read_sidecar(ckpt.path)
        if isinstance(old, dict) and isinstance(old.get("exits"), list):
            # keep the recorded quality unless it is measured again
            keys = ("name", "layers", "widths") if opts.eval_data else ("name", "layers", "widths", "quality")
            exits = [{k: e[k] for k in keys if k in e} for e in old["exits"] if isinstance(e, dict)]
    exits = normalize_exits(ckpt, exits)
    described: dict = {}
    if opts.eval_data:
        from .build import build_manifest as _bm

        order = [e["name"] for e in _bm(ckpt, exits)["exits"]]  # cheapest first, full last
        by_name = {e["name"]: e for e in exits}
        quality, described = _quality(ckpt.path, [by_name[n] for n in order], opts, progress)
        for e in exits:
            e["quality"] = quality[e["name"]]
    if opts.output is not None:
        from ..surgery.execute import execute
        from ..surgery.plan import plan_layers

        plan = plan_layers(ckpt, list(range(ckpt.num_layers)), "manifest",
                           options={"exits": opts.exits, "eval_data": opts.eval_data, "samples": opts.samples,
                                    "seq_len": opts.seq_len})
        res = execute(plan, opts.output, force=opts.force, manifest_exits=exits, manifest_verify=opts.verify,
                      extra_provenance={"eval": described} if described else None)
        return ManifestResult(res.output, read_sidecar(res.output), bool(opts.eval_data), described)
    m = _write_in_place(ckpt.path, exits, opts.verify)
    return ManifestResult(str(ckpt.path), m, bool(opts.eval_data), described)


IN_PLACE_BACKUP = ".sorted_manifest.previous-"  # + a random suffix; empty = "there was no manifest"


def recover_in_place(folder: Path) -> bool:
    """Undo what a killed ``manifest --in-place`` left behind; returns True when it did something.

    While an in-place write runs, the previous sidecar lives in a backup file beside it (an empty
    backup means there was none). If the run died before its new sidecar was in place, the
    previous sidecar is restored and the header copy re-stamped from it (the same bytes the
    previous write produced), so the folder is the complete previous version again.
    """
    side = folder / MANIFEST_FILE
    did = False
    for t in sorted(folder.glob(IN_PLACE_BACKUP + "*")):
        did = True
        if side.exists():  # the new sidecar landed: the run had committed
            t.unlink()
            continue
        log.warning("restoring the manifest of %s from an interrupted `manifest --in-place` run", folder)
        previous = t.read_bytes()
        if previous:
            m = json.loads(previous)
            base = {k: v for k, v in m.items() if k != "weights"}
            _stamp_header(folder, header_value(base), pointer_value(base))
            os.replace(t, side)
        else:
            _stamp_header(folder, None)
            t.unlink()
    for leftover in (folder / (MANIFEST_FILE + ".tmp"), folder / (INDEX_FILE + ".tmp")):
        if leftover.exists():
            leftover.unlink()
            did = True
    return did


def _write_in_place(folder: Path, exits: list[dict], verify: bool) -> dict:
    """Back up the previous sidecar (so a crash can be undone by :func:`recover_in_place`), then stamp."""
    recover_in_place(folder)
    side = folder / MANIFEST_FILE
    fd, tmp = tempfile.mkstemp(prefix=IN_PLACE_BACKUP, dir=folder)
    with os.fdopen(fd, "wb") as f:
        if side.exists():
            f.write(side.read_bytes())
        f.flush()
        os.fsync(f.fileno())
    side.unlink(missing_ok=True)  # no sidecar = "not committed" until the new one lands
    try:
        m = stamp(folder, exits, None, verify)
    except BaseException:
        recover_in_place(folder)
        raise
    os.unlink(tmp)
    return m


@dataclass(frozen=True)
class ValidateOptions:
    path: Path = opt(help="Checkpoint folder, sorted_manifest.json, or a .safetensors file.", cli=False)
    verify: bool = opt(False, "Also check file sha256s and recompute each exit's verification logits.")


def validate_path(opts: ValidateOptions) -> ValidationReport:
    """``surgeon manifest validate``: raise ManifestError on the first problem; warnings in the report."""
    return check_checkpoint(opts.path, verify=opts.verify)
