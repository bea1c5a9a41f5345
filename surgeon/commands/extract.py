"""``surgeon extract``: a depth and/or width sub-model.

Depth: layers 0..K-1 (``--depth``) or an explicit list (``--layers``), with the shared final norm
and LM head. Width: the first k FFN channels (``--ffn``) and the first h attention heads in whole KV
groups (``--heads``) of every kept layer; run ``surgeon sort-width`` first so "first" means "most
important". Widths are uniform across layers (stock transformers configs have one
``intermediate_size`` and one head count).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UsageError
from ..exits import parse_layers
from ..io.checkpoint import Checkpoint
from ..options import OutputOptions, as_record, opt
from ..progress import Progress
from ..surgery.execute import ExecuteResult
from ..surgery.plan import Plan, plan_extract_depth
from ..units import parse_count
from .output import write_output


@dataclass(frozen=True, kw_only=True)
class ExtractOptions(OutputOptions):
    model: Path = opt(help="Checkpoint folder.", cli=False)
    depth: int | None = opt(None, "Keep layers 0..DEPTH-1 with the shared final norm and LM head.")
    layers: str | None = opt(None, "Keep these layers instead of a prefix, e.g. '0-11,14' (0-based, inclusive ranges).")
    ffn: str | None = opt(None, "Keep the first FFN channels of every layer: a fraction in (0, 1] or a count "
                                "(uniform across layers).")
    heads: str | None = opt(None, "Keep the first attention heads of every layer: a fraction or a count, in whole "
                                  "KV groups with GQA (uniform across layers).")
    exit: str | None = opt(None, "Extract this exit of the sorted manifest (a name, or a layer count; or a narrowed "
                                 "prefix K:ffn=F:heads=H).", metavar="NAME")
    max_params: str | None = opt(None, "Extract the largest manifest exit with at most this many parameters "
                                       "(e.g. 1.5e9, 135M).")
    max_flops: str | None = opt(None, "Extract the largest manifest exit with at most this many FLOPs per token.")
    dry_run: bool = opt(False, "Print the plan and write nothing.")

    def __post_init__(self):
        by_manifest = self.exit is not None or self.max_params is not None or self.max_flops is not None
        by_shape = not (self.depth is None and self.layers is None and self.ffn is None and self.heads is None)
        if not by_manifest and not by_shape:
            raise UsageError("nothing to extract", "give --depth K, --layers LIST, --ffn F, --heads H, --exit NAME "
                                                   "or --max-params N")
        if by_manifest and by_shape:
            raise UsageError("--exit/--max-params/--max-flops pick a manifest exit; --depth/--layers/--ffn/--heads "
                             "describe one", "give one kind")
        if self.exit is not None and (self.max_params is not None or self.max_flops is not None):
            raise UsageError("--exit names an exit and --max-params/--max-flops choose one by budget", "give one")
        if self.depth is not None and self.layers is not None:
            raise UsageError("--depth and --layers both choose the kept layers", "give one of them")
        self.check_output("plan", dry_run=self.dry_run)


@dataclass
class ExtractResult:
    plan: Plan
    result: ExecuteResult | None


def build_plan(opts: ExtractOptions) -> Plan:
    ckpt = Checkpoint.open(opts.model)
    options = as_record(opts)
    if opts.exit is not None or opts.max_params is not None or opts.max_flops is not None:
        return _plan_manifest_exit(ckpt, opts, options)
    if opts.ffn is None and opts.heads is None and opts.layers is None:
        return plan_extract_depth(ckpt, opts.depth, opts.dtype, options)
    from ..width import plan_width

    if opts.layers is not None:
        keep = parse_layers(opts.layers, ckpt.num_layers)
    elif opts.depth is not None:
        if not 1 <= opts.depth <= ckpt.num_layers:
            raise UsageError(f"--depth {opts.depth} is outside 1..{ckpt.num_layers}",
                             f"give a depth between 1 and {ckpt.num_layers}")
        keep = list(range(opts.depth))
    else:
        keep = None
    return plan_width(ckpt, opts.ffn, opts.heads, keep=keep, operation="extract", dtype=opts.dtype, options=options)


def _plan_manifest_exit(ckpt: Checkpoint, opts: ExtractOptions, options: dict) -> Plan:
    from ..manifest.build import exit_plan
    from ..manifest.resolve import resolve_checkpoint_exit

    budget = {k: parse_count(v, f"--{k.replace('_', '-')}") for k, v in
              (("max_params", opts.max_params), ("max_flops", opts.max_flops)) if v is not None}
    choice = resolve_checkpoint_exit(ckpt, opts.exit, **budget).exit
    plan = exit_plan(ckpt, choice.layers, choice.widths, opts.dtype)
    options = dict(options, exit=choice.name, exit_layers=choice.layers, exit_widths=choice.widths)
    return replace(plan, operation="extract", options=dict(plan.options, **options))


def nested_exits(plan: Plan) -> list[dict] | None:
    """Exits of the source manifest that are prefixes of an extracted prefix exit (still valid in the output)."""
    from ..manifest.resolve import checkpoint_manifest

    kept = list(plan.kept_layers)
    if plan.options.get("exit_widths") or plan.options.get("width") or kept != list(range(len(kept))):
        return None
    manifest = checkpoint_manifest(plan.source)
    if not manifest:
        return None
    return [{"name": e["name"], "layers": list(e["layers"]), "quality": [q for q in e.get("quality") or [] if "reference" not in q]}
            for e in manifest["exits"] if not e.get("widths") and e["layers"] == kept[:len(e["layers"])]]


def run(opts: ExtractOptions, progress: Progress | None = None) -> ExtractResult:
    """``surgeon extract``: plan the sub-model and stream it out (nothing written with ``dry_run``)."""
    plan = build_plan(opts)
    if opts.dry_run:
        return ExtractResult(plan, None)
    return ExtractResult(plan, write_output(plan, opts.output, force=opts.force, max_shard_bytes=opts.max_shard_bytes,
                                            progress=progress, exits=nested_exits(plan)))
