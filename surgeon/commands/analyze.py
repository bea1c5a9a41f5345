"""``surgeon analyze``: angular distances between layers, l*(n), Block Influence; analysis.json + heatmap."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..analyze.compute import compute_analysis
from ..analyze.report import JSON_NAME, PNG_NAME, AnalysisResult, write_heatmap, write_json
from ..options import CalibrationOptions, ComputeOptions, OutputFolder, PlacementOptions, opt, with_default
from ..progress import Progress


@dataclass(frozen=True, kw_only=True)
class AnalyzeOptions(OutputFolder, CalibrationOptions, ComputeOptions, PlacementOptions):
    model: Path = opt(help="Checkpoint folder.", cli=False)
    shuffle: bool = opt(False, "Shuffle the documents (seeded) before taking the first --samples.")
    seed: int = opt(0, "Seed for --shuffle.")
    role: str = opt("all", "Records to use: all (hub: validation split), train (local files: all but every 20th "
                    "record, which is held out for evaluation), eval.", choices=("all", "train", "eval"))
    output: Path = with_default(OutputFolder, "output", Path("analysis"),
                                "Output folder for analysis.json and angular_distance.png.",
                                flags=("-o", "--output", "--out"))
    force: bool = with_default(OutputFolder, "force", False, "Replace a non-empty output folder that holds other files.")

    def __post_init__(self):
        self.check_calibration()
        self.check_placement()


def run(opts: AnalyzeOptions, progress: Progress | None = None) -> AnalysisResult:
    """Run the analysis and write ``analysis.json`` + ``angular_distance.png`` to ``opts.output``.

    A folder holding only a previous analysis is replaced without ``--force``.
    """
    from ..io.atomic import atomic_output, check_output

    out = Path(opts.output)
    previous = out.is_dir() and {p.name for p in out.iterdir()} <= {JSON_NAME, PNG_NAME}
    check_output(out, Path(opts.model), force=opts.force or previous)  # fail before the forward pass
    res = compute_analysis(opts.model, opts.data, samples=opts.samples, seq_len=opts.seq_len, pack=opts.pack,
                           shuffle=opts.shuffle, seed=opts.seed, batch_size=opts.batch_size, dtype=opts.compute_dtype,
                           offload=opts.offload, role=opts.role, progress=progress, device=opts.device,
                           device_map=opts.device_map, max_memory=opts.max_memory)
    with atomic_output(out, Path(opts.model), force=opts.force or previous) as tmp:
        write_json(res, tmp / JSON_NAME)
        write_heatmap(res, tmp / PNG_NAME)
    res.files = [str(out / JSON_NAME), str(out / PNG_NAME)]
    return res
