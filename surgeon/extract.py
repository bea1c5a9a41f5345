"""``surgeon extract``: a depth and/or width sub-model.

Depth: layers 0..K-1 (``--depth``) or an explicit list (``--layers``), with the shared final norm
and LM head. Width: the first k FFN channels (``--ffn``) and the first h attention heads in whole KV
groups (``--heads``) of every kept layer; run ``surgeon sort-width`` first so "first" means "most
important". Widths are uniform across layers (stock transformers configs have one
``intermediate_size`` and one head count).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UsageError
from .io.checkpoint import Checkpoint
from .options import opt
from .surgery.execute import ExecuteResult, Progress, execute
from .surgery.plan import Plan, plan_extract_depth
from .units import parse_size


@dataclass(frozen=True)
class ExtractOptions:
    model: Path = opt(help="Checkpoint folder.", cli=False)
    output: Path | None = opt(None, "Output checkpoint folder.", flags=("-o", "--output"))
    depth: int | None = opt(None, "Keep layers 0..DEPTH-1 with the shared final norm and LM head.")
    layers: str | None = opt(None, "Keep these layers instead of a prefix, e.g. '0-11,14' (0-based, inclusive ranges).")
    ffn: str | None = opt(None, "Keep the first FFN channels of every layer: a fraction in (0, 1] or a count "
                                "(uniform across layers).")
    heads: str | None = opt(None, "Keep the first attention heads of every layer: a fraction or a count, in whole "
                                  "KV groups with GQA (uniform across layers).")
    dtype: str | None = opt(None, "Convert floating weights while streaming.", choices=("bf16", "fp16", "fp32"))
    max_shard_size: str = opt("5GB", "Largest output shard.")
    dry_run: bool = opt(False, "Print the plan and write nothing.")
    force: bool = opt(False, "Replace a non-empty output folder.")

    def __post_init__(self):
        if self.depth is None and self.layers is None and self.ffn is None and self.heads is None:
            raise UsageError("nothing to extract", "give --depth K, --layers LIST, --ffn F or --heads H")
        if self.depth is not None and self.layers is not None:
            raise UsageError("--depth and --layers both choose the kept layers", "give one of them")
        if self.output is None and not self.dry_run:
            raise UsageError("-o/--output is required", "give an output folder, or use --dry-run")
        parse_size(self.max_shard_size, "--max-shard-size")


@dataclass
class ExtractResult:
    plan: Plan
    result: ExecuteResult | None


def parse_layers(text: str, num_layers: int) -> list[int]:
    """``'0-11,14'`` -> ``[0, ..., 11, 14]``; strictly increasing, each in 0..num_layers-1."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise UsageError(f"cannot read --layers {text!r}", "give 0-based layers and inclusive ranges, e.g. 0-11,14") from None
    if not out or any(b <= a for a, b in zip(out, out[1:])):
        raise UsageError(f"--layers {text!r} is empty or not increasing", "list each layer once, in order, e.g. 0-11,14")
    bad = [i for i in out if not 0 <= i < num_layers]
    if bad:
        raise UsageError(f"--layers names layer {bad[0]}, but the model has {num_layers} (0..{num_layers - 1})",
                         "use 0-based indices below the layer count")
    return out


def build_plan(opts: ExtractOptions) -> Plan:
    ckpt = Checkpoint.open(opts.model)
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}
    if opts.ffn is None and opts.heads is None and opts.layers is None:
        return plan_extract_depth(ckpt, opts.depth, opts.dtype, options)
    from .width import plan_width

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


def extract(opts: ExtractOptions, progress: Progress | None = None) -> ExtractResult:
    plan = build_plan(opts)
    if opts.dry_run:
        return ExtractResult(plan, None)
    return ExtractResult(plan, execute(plan, opts.output, force=opts.force,
                                       max_shard_bytes=parse_size(opts.max_shard_size), progress=progress))
