"""``surgeon prune``: drop a contiguous block of layers, chosen explicitly or by a strategy.

Strategies (the pruning paper, Gromov et al.):
- ``similarity`` (sec. 4.3): drop the block at l*(n), the start that minimizes the angular
  distance between the residual stream entering layer l and entering layer l+n, among blocks
  that keep the final layer (all blocks with ``allow_last``). Read from ``--analysis`` JSON or
  computed by running the analysis.
- ``deepest`` (sec. 4.4): drop layers L-1-n .. L-2, keeping the final layer.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .data.calibration import check_calibration_args
from .errors import UsageError
from .io.checkpoint import Checkpoint
from .options import opt
from .surgery.execute import DEFAULT_MAX_SHARD_BYTES, ExecuteResult, Progress, execute
from .surgery.plan import Plan, plan_prune
from .units import parse_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneOptions:
    model: Path = opt(help="Checkpoint folder.", cli=False)
    output: Path | None = opt(None, "Output checkpoint folder.", flags=("-o", "--output"))
    n: int | None = opt(None, "Number of consecutive layers to drop.")
    start: int | None = opt(None, "First dropped layer (0-based): drops START..START+N-1. Overrides --strategy.")
    strategy: str = opt("similarity", "How to choose the block when --start is not given.",
                        choices=("similarity", "deepest"))
    analysis: Path | None = opt(None, "analysis.json from `surgeon analyze` (similarity strategy).")
    allow_last: bool = opt(False, "Allow dropping the final layer (the paper shows it must be kept).")
    data: str = opt("c4", "Calibration data for the similarity analysis (see surgeon analyze --help).")
    samples: int = opt(256, "Calibration sequences for the similarity analysis.")
    seq_len: int = opt(1024, "Tokens per calibration sequence.")
    pack: bool = opt(False, "Concatenate calibration documents into --seq-len chunks.")
    batch_size: int = opt(8, "Sequences per forward pass of the analysis.")
    offload: str = opt("none", "`layer`: run the analysis one decoder layer at a time.", choices=("none", "layer"))
    dtype: str | None = opt(None, "Convert floating weights while streaming.", choices=("bf16", "fp16", "fp32"))
    max_shard_size: str = opt("5GB", "Largest output shard.")
    dry_run: bool = opt(False, "Print the plan and write nothing.")
    force: bool = opt(False, "Replace a non-empty output folder.")
    heal: str | None = opt(None, "Heal the pruned model on this data spec (QLoRA; tune with --heal-* options, see surgeon heal --help).")

    def __post_init__(self):
        if self.n is None:
            raise UsageError("--n is required", "give the number of layers to drop, e.g. --n 6")
        if self.output is None and not self.dry_run:
            raise UsageError("-o/--output is required", "give an output folder, or use --dry-run")
        parse_size(self.max_shard_size, "--max-shard-size")
        check_calibration_args(self.samples, self.seq_len, self.batch_size)


@dataclass
class Block:
    start: int
    n: int
    strategy: str
    distance: float | None = None
    analysis: dict | None = None  # where the distance came from (data, samples, seq_len, file)

    @property
    def layers(self) -> list[int]:
        return list(range(self.start, self.start + self.n))


@dataclass
class PruneResult:
    plan: Plan
    block: Block
    result: ExecuteResult | None = None
    extra: dict = field(default_factory=dict)


def block_from_analysis(analysis: dict, n: int, allow_last: bool, num_layers: int) -> Block:
    """Pick l*(n) from an analysis report (``best_keep_last`` unless ``allow_last``)."""
    if analysis.get("num_layers") != num_layers:
        raise UsageError(
            f"the analysis is for {analysis.get('num_layers')} layers but the model has {num_layers}",
            "rerun surgeon analyze on this model",
        )
    key = "best" if allow_last else "best_keep_last"
    entry = (analysis.get(key) or {}).get(str(n))
    if not isinstance(entry, dict) or "start" not in entry or "distance" not in entry:
        raise UsageError(f"the analysis has no {key} entry for n={n}", "rerun surgeon analyze on this model")
    source = {k: analysis.get(k) for k in ("data", "samples", "seq_len", "dtype") if k in analysis}
    return Block(int(entry["start"]), n, "similarity", float(entry["distance"]), source)


def choose_block(ckpt: Checkpoint, opts: PruneOptions, progress: Progress | None = None) -> Block:
    L = ckpt.num_layers
    n = opts.n
    if n < 1 or n >= L:
        raise UsageError(f"--n {n} is outside 1..{L - 1}", f"the model has {L} layers; drop fewer")
    if opts.start is not None:
        return Block(opts.start, n, "explicit")
    if opts.strategy == "deepest":
        if n > L - 1:
            raise UsageError(f"--n {n} leaves nothing but the final layer", f"choose --n below {L - 1}")
        return Block(L - 1 - n, n, "deepest")
    if opts.analysis is not None:
        try:
            report = json.loads(Path(opts.analysis).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read --analysis {opts.analysis}: {e.__class__.__name__}",
                             "give the analysis.json written by surgeon analyze") from None
        if not isinstance(report, dict):
            raise UsageError(f"--analysis {opts.analysis} is not an analysis report",
                             "give the analysis.json written by surgeon analyze")
        block = block_from_analysis(report, n, opts.allow_last, L)
        block.analysis = {**(block.analysis or {}), "file": str(opts.analysis)}
        return block
    return similarity_block(ckpt, opts, progress)


def similarity_block(ckpt: Checkpoint, opts: PruneOptions, progress: Progress | None = None) -> Block:
    """Run the angular-distance analysis on ``opts.data`` and pick l*(n) (nothing else is written)."""
    from .analyze import compute_analysis

    res = compute_analysis(ckpt.path, opts.data, samples=opts.samples, seq_len=opts.seq_len, pack=opts.pack,
                           batch_size=opts.batch_size, offload=opts.offload, progress=progress)
    report = res.to_dict()
    block = block_from_analysis(report, opts.n, opts.allow_last, ckpt.num_layers)
    block.analysis = {**(block.analysis or {}), "data_source": res.data_source, "seconds": round(res.seconds, 3)}
    return block


def prune(opts: PruneOptions, progress: Progress | None = None,
          analysis_progress: Progress | None = None) -> PruneResult:
    """Choose the block (explicit, similarity or deepest) and write the pruned checkpoint.

    ``analysis_progress(done, total, label)`` follows the similarity analysis when it runs;
    ``progress`` follows the bytes written. The chosen block, its angular distance and the data
    it was measured on are recorded in the output's provenance.
    """
    ckpt = Checkpoint.open(opts.model)
    block = choose_block(ckpt, opts, analysis_progress)
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}
    options["strategy"] = block.strategy
    plan = plan_prune(ckpt, block.start, block.n, opts.allow_last, opts.dtype, options)
    extra = {"block": asdict(block)}
    if opts.dry_run:
        return PruneResult(plan, block, None, extra)
    res = execute(plan, opts.output, force=opts.force,
                  max_shard_bytes=parse_size(opts.max_shard_size) if opts.max_shard_size else DEFAULT_MAX_SHARD_BYTES,
                  extra_provenance=extra, progress=progress)
    return PruneResult(plan, block, res, extra)
