"""``surgeon manifest``: measure a checkpoint's exits and write its sorted manifest; validate one.

``surgeon manifest MODEL`` (:func:`run`) writes a copy with ``-o`` (exit-aligned shards unless
``--no-align-shards``) or updates the model itself with ``--in-place`` (crash-safe,
:func:`surgeon.manifest.stamp.write_in_place`; with ``--align-shards`` MODEL is re-sharded, streaming,
into a temp folder that replaces it in one rename); ``--eval-data`` measures
each exit's quality with the metrics engine (:func:`surgeon.eval.measure_exits`: one loaded model,
every exit from the fewest passes). ``surgeon manifest validate`` is :func:`validate`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..exits import parse_exits, prefix_depth
from ..io.checkpoint import Checkpoint
from ..loading import load
from ..manifest.build import build_manifest, normalize_exits, quality_record_fields, quality_records
from ..manifest.check import ValidationReport, check_checkpoint
from ..manifest.model import ManifestError
from ..manifest.resolve import checkpoint_manifest
from ..manifest.stamp import write_in_place
from ..manifest.store import read_sidecar
from ..options import EvaluationOptions, OutputFolder, PlacementOptions, opt, with_default
from ..progress import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ManifestOptions(OutputFolder, EvaluationOptions, PlacementOptions):
    model: Path = opt(help="Checkpoint folder.", cli=False)
    output: Path | None = with_default(OutputFolder, "output", None, "Write a copy of MODEL with the manifest here.")
    in_place: bool = opt(False, "Write the manifest into MODEL itself (sidecar + header copy; weights untouched unless "
                                "--align-shards).")
    exits: str | None = opt(None, "Exits: layer counts `4,8,12` (narrowed: `24:ffn=0.5:heads=6`), `all`, or "
                                  "`NAME=I,J,...;...`. "
                                  "Default: the existing manifest's exits, else the full model.", metavar="SPEC")
    eval_data: str | None = with_default(EvaluationOptions, "eval_data", None,
                                         "Held-out data to measure each exit on (e.g. builtin:sotu, c4, file.txt).")
    eval_samples: int = with_default(EvaluationOptions, "eval_samples", 32, "Evaluation sequences.",
                                     flags=("--samples",))
    seq_len: int = with_default(EvaluationOptions, "seq_len", 256)
    eval_batch_size: int = with_default(EvaluationOptions, "eval_batch_size", 4, "Evaluation batch size.",
                                        flags=("--batch-size",))
    verify: bool | None = opt(None, "Record a verification hash per exit (loads each exit once, in fp32). Default: "
                                    "for models up to 150M parameters, like every surgeon output.")
    force: bool = with_default(OutputFolder, "force", False, "Replace a non-empty -o folder.")
    align_shards: bool | None = opt(None, "Exit-aligned shards (shared tensors in their own file, every prefix exit "
                                          "ending at a file boundary) so `surgeon view` can link any exit. Default: on "
                                          "with -o; with --in-place it re-shards MODEL (streaming, atomic).")

    def __post_init__(self):
        if self.in_place == (self.output is not None):
            raise UsageError("give exactly one of -o/--output and --in-place",
                             "write a copy with -o OUT, or update MODEL with --in-place")
        self.check_evaluation()
        self.check_placement()


@dataclass
class ManifestResult:
    output: str
    manifest: dict
    measured: bool
    data: dict = field(default_factory=dict)


def measure_quality(path: Path, exits: list[dict], opts: ManifestOptions, progress: Progress | None = None
                    ) -> tuple[dict[str, list[dict]], dict]:
    """Quality records per exit name (loss, perplexity, KL(full||exit), top-1 against the full exit,
    which ``exits`` lists last) on the held-out role of ``opts.eval_data``, and the data's description."""
    from ..data import parse_data_spec, training_examples
    from ..devices import compute_dtype, load_causal_lm, resolve_device
    from ..eval import measure_exits
    from ..eval.streamed import StreamedModel
    from ..exits import ExitSpec
    from ..tokenizer import load_tokenizer

    tok = load_tokenizer(path)
    examples = list(training_examples(opts.eval_data, tok, seq_len=opts.seq_len, role="eval",
                                      max_examples=opts.eval_samples))
    device = resolve_device(opts.device)
    # the stored dtype on CPU (what the records have always been measured in), bf16 compute on GPUs
    dtype = "auto" if device.type == "cpu" else compute_dtype(device)
    if opts.offload == "layer":  # one decoder layer in memory at a time
        model = StreamedModel(path, device=device, dtype=dtype)
    else:
        model = load_causal_lm(path, device=device, dtype=dtype, device_map=opts.device_map,
                               max_memory=opts.max_memory)
    quality, tokens = measure_exits(model, examples, [ExitSpec.of(e) for e in exits],
                                    batch_size=opts.eval_batch_size, progress=progress)
    full = exits[-1]["name"]
    common = quality_record_fields(data=opts.eval_data, tokens=tokens, seq_len=opts.seq_len, dtype=model.dtype,
                                   samples=len(examples))
    records = {e["name"]: quality_records(q, common, full) for e, q in zip(exits, quality)}
    described = {"data": opts.eval_data, "source": parse_data_spec(opts.eval_data).describe(), "role": "eval",
                 "samples": len(examples), "samples_requested": opts.eval_samples, "seq_len": opts.seq_len,
                 "num_tokens": sum(len(x["input_ids"]) for x in examples)}
    return records, described


def run(opts: ManifestOptions, progress: Progress | None = None) -> ManifestResult:
    """Measure the exits of ``opts.model`` and write its manifest (into a copy, or in place)."""
    ckpt = Checkpoint.open(opts.model)
    if ckpt.hub is not None and opts.output is None:  # in place would rewrite the hub cache
        raise UsageError(f"{opts.model} is a hub model: surgeon does not write into the Hugging Face cache",
                         "give -o DIR to write a copy with its manifest")
    parsed = parse_exits(opts.exits, ckpt.num_layers, ckpt.text_config)
    exits = [e.to_dict() for e in parsed] if parsed is not None else None
    if exits is None:
        try:  # the one strict reader (manifest.resolve); an invalid manifest is what this command replaces
            old = checkpoint_manifest(ckpt)
        except ManifestError as e:
            log.warning("the existing manifest of %s is not valid (%s): its exits are not carried over; give "
                        "--exits to keep them", ckpt.path, e)
            old = None
        if old is not None:
            # keep the recorded quality unless it is measured again
            keys = ("name", "layers", "widths") if opts.eval_data else ("name", "layers", "widths", "quality")
            exits = [{k: e[k] for k in keys if k in e} for e in old["exits"]]
    exits = normalize_exits(ckpt, exits)
    described: dict = {}
    if opts.eval_data:
        order = [e["name"] for e in build_manifest(ckpt, exits)["exits"]]  # cheapest first, full last
        by_name = {e["name"]: e for e in exits}
        quality, described = measure_quality(ckpt.path, [by_name[n] for n in order], opts, progress)
        for e in exits:
            e["quality"] = quality[e["name"]]
    rewrite = opts.output is not None or opts.align_shards
    if rewrite:
        from ..surgery.plan import plan_layers
        from .output import write_output

        plan = plan_layers(ckpt, list(range(ckpt.num_layers)), "manifest",
                           options={"exits": opts.exits, "eval_data": opts.eval_data, "samples": opts.eval_samples,
                                    "seq_len": opts.seq_len, "align_shards": opts.align_shards is not False})
        target = opts.output if opts.output is not None else ckpt.path
        res = write_output(plan, target, force=opts.force, exits=exits, verify=opts.verify,
                           extra_provenance={"eval": described} if described else None,
                           align=opts.align_shards is not False, replace_source=opts.output is None)
        return ManifestResult(res.output, read_sidecar(res.output), bool(opts.eval_data), described)
    m = write_in_place(ckpt.path, exits, opts.verify, load)
    return ManifestResult(str(ckpt.path), m, bool(opts.eval_data), described)


@dataclass(frozen=True)
class ValidateOptions:
    cli_command = "manifest validate"  # not a field: the subcommand these options belong to (command_line.command_name)

    path: Path = opt(help="Checkpoint folder, sorted_manifest.json, or a .safetensors file.", cli=False)
    verify: bool = opt(False, "Also check file sha256s and recompute each exit's verification logits.")


def validate(opts: ValidateOptions) -> ValidationReport:
    """``surgeon manifest validate``: raise ManifestError on the first problem; warnings in the report."""
    return check_checkpoint(opts.path, verify=opts.verify, loader=load)


@dataclass(frozen=True)
class ShowOptions:
    cli_command = "manifest show"  # not a field: the subcommand these options belong to (command_line.command_name)

    path: Path = opt(help="Checkpoint folder with a sorted manifest.", cli=False)
    exit: str | None = opt(None, "Only this exit (a manifest exit name).", metavar="NAME")
    overrides: bool = opt(False, "Print, per prefix exit, the config keys that differ from the checkpoint's "
                                 "config.json: what to pass to from_pretrained(path, **overrides) or a runtime's "
                                 "config overrides (SGLang --json-model-override-args, vLLM hf_overrides).")


def config_overrides(base: dict, exit_config: dict) -> dict:
    """The top-level keys of ``exit_config`` whose values differ from ``base`` (whole values)."""
    return {k: v for k, v in exit_config.items() if base.get(k) != v}


def show(opts: ShowOptions) -> dict:
    """The manifest's exits (name -> {layers, cost, quality}) or, with ``overrides``, per prefix exit the
    config overrides that make a stock loader run that exit from the full checkpoint."""
    report = check_checkpoint(opts.path)  # a manifest that does not validate is an error here too
    folder = Path(report.path)
    m = checkpoint_manifest(folder if folder.is_dir() else folder.parent) or {}  # the same strict reader
    exits = {e["name"]: e for e in m.get("exits", [])}
    if opts.exit is not None and opts.exit not in exits:
        raise UsageError(f"{opts.path} has no exit named {opts.exit!r}", f"choose from {', '.join(exits)}")
    chosen = [exits[opts.exit]] if opts.exit else list(exits.values())
    if not opts.overrides:
        return {"path": str(opts.path), "format_version": report.format_version,
                "exits": {e["name"]: {k: e[k] for k in ("layers", "widths", "cost", "quality") if k in e} for e in chosen}}
    base = Checkpoint.open(opts.path).config
    out = {}
    for e in chosen:
        if e.get("widths") or prefix_depth(e["layers"]) is None:
            if opts.exit:
                raise UsageError(f"exit {e['name']!r} is not a full-width prefix: config overrides cannot slice tensors "
                                 "or skip middle layers", f"extract it: surgeon extract {opts.path} --exit {e['name']} -o DIR")
            continue
        out[e["name"]] = config_overrides(base, e["config"])
    return out
