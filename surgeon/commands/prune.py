"""``surgeon prune``: drop a contiguous block of layers, chosen explicitly or by a strategy
(:mod:`surgeon.surgery.block`: ``similarity`` runs or reads the analysis, ``deepest``), and write
the pruned checkpoint; ``--heal SPEC`` heals it on the way (:func:`surgeon.commands.heal.prune_and_heal`)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..io.checkpoint import Checkpoint
from ..options import CalibrationOptions, OutputOptions, PlacementOptions, as_record, opt
from ..progress import Progress
from ..surgery.block import Block, block_from_analysis, deepest_block
from ..surgery.execute import ExecuteResult
from ..surgery.plan import Plan, plan_prune
from .output import write_output

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PruneOptions(OutputOptions, CalibrationOptions, PlacementOptions):
    model: Path = opt(help="Checkpoint folder.", cli=False)
    n: int | None = opt(None, "Number of consecutive layers to drop.")
    start: int | None = opt(None, "First dropped layer (0-based): drops START..START+N-1. Overrides --strategy.")
    strategy: str = opt("similarity", "How to choose the block when --start is not given.",
                        choices=("similarity", "deepest"))
    analysis: Path | None = opt(None, "analysis.json from `surgeon analyze` (similarity strategy).")
    allow_last: bool = opt(False, "Allow dropping the final layer (the paper shows it must be kept).")
    dry_run: bool = opt(False, "Print the plan and write nothing.")
    heal: str | None = opt(None, "Heal the pruned model on this data spec (QLoRA; tune with --heal-* options, see "
                                 "surgeon heal --help).")

    def __post_init__(self):
        if self.n is None:
            raise UsageError("--n is required", "give the number of layers to drop, e.g. --n 6")
        self.check_output("plan", dry_run=self.dry_run)
        self.check_calibration()
        self.check_placement()


@dataclass
class PruneResult:
    plan: Plan
    block: Block
    result: ExecuteResult | None = None
    extra: dict = field(default_factory=dict)


def choose_block(ckpt: Checkpoint, opts: PruneOptions, progress: Progress | None = None) -> Block:
    L = ckpt.num_layers
    n = opts.n
    if n < 1 or n >= L:
        raise UsageError(f"--n {n} is outside 1..{L - 1}", f"the model has {L} layers; drop fewer")
    if opts.start is not None:
        return Block(opts.start, n, "explicit")
    if opts.strategy == "deepest":
        return deepest_block(L, n)
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
    from ..analyze import compute_analysis

    res = compute_analysis(ckpt.path, opts.data, samples=opts.samples, seq_len=opts.seq_len, pack=opts.pack,
                           batch_size=opts.batch_size, offload=opts.offload, progress=progress, device=opts.device,
                           device_map=opts.device_map, max_memory=opts.max_memory)
    report = res.to_dict()
    block = block_from_analysis(report, opts.n, opts.allow_last, ckpt.num_layers)
    block.analysis = {**(block.analysis or {}), "data_source": res.data_source, "seconds": round(res.seconds, 3)}
    return block


def run(opts: PruneOptions, progress: Progress | None = None, analysis_progress: Progress | None = None) -> PruneResult:
    """Choose the block (explicit, similarity or deepest) and write the pruned checkpoint.

    ``analysis_progress(done, total, label)`` follows the similarity analysis when it runs;
    ``progress`` follows the bytes written. The chosen block, its angular distance and the data
    it was measured on are recorded in the output's provenance.
    """
    ckpt = Checkpoint.open(opts.model)
    block = choose_block(ckpt, opts, analysis_progress)
    options = as_record(opts)
    options["strategy"] = block.strategy
    plan = plan_prune(ckpt, block.start, block.n, opts.allow_last, opts.dtype, options)
    extra = {"block": asdict(block)}
    if opts.dry_run:
        return PruneResult(plan, block, None, extra)
    res = write_output(plan, opts.output, force=opts.force, max_shard_bytes=opts.max_shard_bytes,
                       extra_provenance=extra, progress=progress)
    return PruneResult(plan, block, res, extra)

