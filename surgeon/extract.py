"""``surgeon extract``: a depth sub-model (layers 0..K-1 + shared final norm and LM head)."""

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
    dtype: str | None = opt(None, "Convert floating weights while streaming.", choices=("bf16", "fp16", "fp32"))
    max_shard_size: str = opt("5GB", "Largest output shard.")
    dry_run: bool = opt(False, "Print the plan and write nothing.")
    force: bool = opt(False, "Replace a non-empty output folder.")

    def __post_init__(self):
        if self.depth is None:
            raise UsageError("nothing to extract", "give --depth K")
        if self.output is None and not self.dry_run:
            raise UsageError("-o/--output is required", "give an output folder, or use --dry-run")
        parse_size(self.max_shard_size, "--max-shard-size")


@dataclass
class ExtractResult:
    plan: Plan
    result: ExecuteResult | None


def build_plan(opts: ExtractOptions) -> Plan:
    ckpt = Checkpoint.open(opts.model)
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}
    return plan_extract_depth(ckpt, opts.depth, opts.dtype, options)


def extract(opts: ExtractOptions, progress: Progress | None = None) -> ExtractResult:
    plan = build_plan(opts)
    if opts.dry_run:
        return ExtractResult(plan, None)
    return ExtractResult(plan, execute(plan, opts.output, force=opts.force,
                                       max_shard_bytes=parse_size(opts.max_shard_size), progress=progress))
