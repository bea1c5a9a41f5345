"""``surgeon sweep``: the pruning curve of a model (Gromov et al., Fig. 1(d), 3 and 5) in one command.

One analysis pass on ``--data`` (:func:`surgeon.analyze.compute_analysis`, on the model the sweep
loads) gives l*(n) for every n; each (strategy, n) point is that model with the block skipped **in
memory** (:meth:`surgeon.runtime.stack.Stack.using`: dropped layers pass the residual stream through,
kept layers keep their index, so the KV cache, ``layer_types`` and ``num_hidden_layers`` stay valid; no
weight is copied and no checkpoint written), scored on held-out loss (:func:`surgeon.eval.measure_exits`
on the held-out role of ``--eval-data``, default ``--data``'s) and, with ``--tasks``, on each task's
accuracy (:func:`surgeon.eval.harness.evaluate_tasks`). The blocks are chosen by ``surgeon prune``'s own
functions (:mod:`surgeon.surgery.block`) from the ``analysis.json`` the sweep writes, so each point's
``surgeon prune ... --analysis OUT/analysis.json`` line writes exactly the cut that was measured.

Files in ``-o``: ``analysis.json`` and ``angular_distance.png`` (as ``surgeon analyze`` writes them),
``sweep.json`` (rewritten atomically after every point: an interrupted sweep keeps every finished
point, and ``--resume`` measures only the missing ones, refusing a folder swept with other measurement
options), and ``sweep.png`` at the end (:mod:`surgeon.eval.curve`).

Placement: ``--device``, ``--device-map auto`` (models bigger than one device; the harness runs on the
dispatched model) and ``--offload layer`` (one decoder layer in memory at a time) as in ``surgeon eval``;
the harness needs the whole model, so ``--offload layer`` sweeps the loss only (no ``--tasks``).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..eval.curve import JSON_NAME, PNG_NAME, REFERENCE, Answer, CurvePoint
from ..options import (
    CalibrationOptions,
    ComputeOptions,
    EvaluationOptions,
    OutputFolder,
    PlacementOptions,
    TaskOptions,
    flag_name,
    opt,
    with_default,
)
from ..progress import Progress

log = logging.getLogger(__name__)

STRATEGIES = ("similarity", "deepest")
DEFAULT_MAX_FRACTION = 0.5  # the paper's transitions fall at 20-55% of the layers
DEFAULT_POINTS = 20  # default step: ceil(L / 20), so about 10 values of n up to half the layers
# Mean accuracy may drop this much (absolute) below the unpruned model's. At --limit 100 a task's accuracy
# has a stderr of ~0.05 and the mean of 3-4 tasks ~0.025-0.03, so 0.05 is about two stderr (three at
# --limit 200): smaller drops are not told apart from noise, while the collapse the paper describes
# (to chance) is several times larger on any model clearly above chance.
DEFAULT_TOLERANCE = 0.05
# the options that change what a point measures: a --resume must give the same values
MEASUREMENT = ("data", "samples", "seq_len", "pack", "batch_size", "eval_data", "eval_samples", "eval_batch_size",
               "tasks", "task_data", "limit", "num_fewshot", "task_batch_size", "compute_dtype")
ANALYSIS_JSON, ANALYSIS_PNG = "analysis.json", "angular_distance.png"


@dataclass(frozen=True, kw_only=True)
class SweepOptions(OutputFolder, CalibrationOptions, EvaluationOptions, TaskOptions, ComputeOptions,
                   PlacementOptions):
    model: Path = opt(help="Checkpoint folder or hub model ID.", cli=False)
    output: Path | None = with_default(OutputFolder, "output", None, "Output folder: analysis.json, sweep.json (each "
                                       "point as it finishes), sweep.png.")
    force: bool = with_default(OutputFolder, "force", False, "Replace a non-empty output folder (a previous sweep "
                                                             "included).")
    seq_len: int = with_default(CalibrationOptions, "seq_len", 1024, "Tokens per calibration and held-out sequence.")
    eval_data: str | None = with_default(EvaluationOptions, "eval_data", None, "Held-out data for the loss (default: "
                                         "the held-out slice / validation split of --data).")
    tasks: str | None = with_default(TaskOptions, "tasks", None, "lm-evaluation-harness tasks scored at every point, "
                                     "comma-separated: arc_easy, arc_challenge, piqa, hellaswag, boolq, winogrande, "
                                     "openbookqa, sciq, mmlu (needs `pip install 'surgeon[eval]'`); without it the "
                                     "sweep measures the loss only.")
    task_batch_size: int = opt(8, "Requests per harness forward pass.")
    n: str | None = opt(None, "Block sizes to drop, comma-separated (0 = the unpruned model, always measured).",
                        metavar="N,N,...")
    max_fraction: float | None = opt(None, f"Sweep n = 0, STEP, 2 STEP, ... up to this fraction of the layers "
                                           f"(default {DEFAULT_MAX_FRACTION}).")
    step: int | None = opt(None, f"Step between block sizes (default: ceil(layers / {DEFAULT_POINTS})).")
    strategy: str = opt(",".join(STRATEGIES), "Block choices to sweep, comma-separated: similarity (l*(n) of the "
                                              "angular distance), deepest (the deepest block keeping the last layer).")
    tolerance: float = opt(DEFAULT_TOLERANCE, "The answer: the largest n whose mean accuracy stays within this "
                                              "(absolute, 0..1) of the unpruned model's.")
    resume: bool = opt(False, "Continue the sweep in -o: measure only the points it lacks (same measurement options).")

    def __post_init__(self):
        self.check_output_folder("sweep")
        self.check_calibration()
        self.check_evaluation()
        self.check_placement()
        if not 0.0 <= self.tolerance <= 1.0:
            raise UsageError(f"--tolerance {self.tolerance} is outside [0, 1]",
                             f"give the largest drop in mean accuracy to accept, e.g. --tolerance {DEFAULT_TOLERANCE}")
        if self.task_batch_size < 1:
            raise UsageError(f"--task-batch-size {self.task_batch_size} is below 1", "give 1 or more")
        if self.n is not None and (self.max_fraction is not None or self.step is not None):
            raise UsageError("--n lists the block sizes; --max-fraction/--step make a range", "give one of them")
        if self.max_fraction is not None and not 0.0 < self.max_fraction < 1.0:
            raise UsageError(f"--max-fraction {self.max_fraction} is outside (0, 1)", "e.g. --max-fraction 0.5")
        if self.step is not None and self.step < 1:
            raise UsageError(f"--step {self.step} is below 1", "give a step of 1 or more layers")
        if self.n is not None:
            self.block_sizes()
        self.strategies()
        if self.offload == "layer" and self.tasks:
            raise UsageError("--offload layer streams the model for the loss, but the harness needs the whole model",
                             "use --device-map auto (layers over the GPUs, CPU and disk) with --tasks, or drop --tasks "
                             "for a loss-only sweep")
        if self.resume and self.force:
            raise UsageError("--resume continues the sweep in -o and --force replaces it", "give one of them")
        self.check_task_options()  # the tasks and their data, before any model loads

    def strategies(self) -> list[str]:
        names = [s.strip().lower() for s in self.strategy.split(",") if s.strip()]
        bad = [s for s in names if s not in STRATEGIES]
        if bad or not names:
            raise UsageError(f"unknown --strategy {','.join(bad) or repr(self.strategy)}",
                             f"give one or both of {','.join(STRATEGIES)}")
        return list(dict.fromkeys(names))

    def block_sizes(self, num_layers: int | None = None) -> list[int]:
        """The swept n, 0 first; with ``num_layers``, checked against the model (every n below it)."""
        if self.n is not None:
            try:
                ns = [int(x) for x in self.n.split(",") if x.strip()]
            except ValueError:
                raise UsageError(f"--n {self.n!r} is not a list of layer counts", "e.g. --n 0,2,4,6") from None
            if not ns or min(ns) < 0:
                raise UsageError(f"--n {self.n!r} needs counts of 0 or more", "e.g. --n 0,2,4,6")
        elif num_layers is None:
            return []
        else:
            step = self.step or max(1, math.ceil(num_layers / DEFAULT_POINTS))
            top = int((self.max_fraction or DEFAULT_MAX_FRACTION) * num_layers + 1e-9)
            ns = list(range(0, top + 1, step))
        if num_layers is not None and max(ns) >= num_layers:
            raise UsageError(f"--n {max(ns)} is not below the model's {num_layers} layers",
                             f"give block sizes from 0 to {num_layers - 1}")
        return sorted({0, *ns})


@dataclass
class SweepResult:
    """What ``surgeon sweep`` measured (``record`` is the ``sweep.json`` content)."""

    record: dict
    reference: CurvePoint
    points: list[CurvePoint]
    answer: Answer
    files: list[str] = field(default_factory=list)
    measured: int = 0  # points measured by this run (the rest came from --resume)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {**self.record, "files": self.files, "measured": self.measured}


def measurement_record(opts: SweepOptions, tasks: list[str], dtype: str) -> dict:
    """The options that change what a point measures, as recorded in sweep.json (``--resume`` compares them)."""
    rec = {k: getattr(opts, k) for k in MEASUREMENT}
    rec.update(eval_data=opts.eval_data or opts.data, tasks=tasks, compute_dtype=dtype,
               task_data=None if opts.task_data is None else str(opts.task_data))
    return rec


def prune_command(opts: SweepOptions, strategy: str, n: int) -> str:
    """The ``surgeon prune`` line that writes the cut of point (strategy, n)."""
    from ..command_line import command_line
    from .prune import PruneOptions

    if strategy == "similarity":
        p = PruneOptions(model=opts.model, n=n, analysis=Path(opts.output) / ANALYSIS_JSON, output=Path("pruned"))
    else:
        p = PruneOptions(model=opts.model, n=n, strategy="deepest", output=Path("pruned"))
    return command_line(p)


def skipped(model, dropped: list[int], stack=None):
    """Context manager: ``model`` acting as itself with the layers ``dropped`` skipped (no copy; see module doc)."""
    from ..runtime.stack import Stack

    stack = stack or Stack(model)
    return stack.using(tuple(i for i in range(stack.num_layers) if i not in set(dropped)))


# ------------------------------------------------------------------------------------------- run
def run(opts: SweepOptions, progress: Progress | None = None,
        on_point: Callable[[CurvePoint], None] | None = None) -> SweepResult:
    """Analyze, measure every pending point (``on_point`` sees each as it finishes), answer, plot.

    Raises UsageError (options, n beyond the model, a --resume with other options), DataError (data,
    tasks, missing task data), CheckpointError, OutputError.
    """
    from ..io.checkpoint import Checkpoint

    t0 = time.time()
    ckpt = Checkpoint.open(opts.model)
    L = ckpt.num_layers
    grid = opts.block_sizes(L)
    strategies = opts.strategies()
    tasks = opts.check_task_options()
    out = Path(opts.output)
    record = _open_output(opts, out, Path(ckpt.path))
    options = measurement_record(opts, tasks, _dtype_name(opts))
    if record is not None:
        _check_resume(record, options, out)
    plan = _plan(grid, strategies)
    done = {} if record is None else _finished(record)
    pending = [k for k in plan if k not in done]
    state = _State(opts, ckpt, out, record, tasks, strategies, grid, t0)
    if pending:
        state.measure(pending, done, options, len(plan), progress, on_point)
    return state.finish(done)


def _dtype_name(opts: SweepOptions) -> str:
    from ..devices import compute_dtype, resolve_device
    from ..units import short_name

    return short_name(compute_dtype(resolve_device(opts.device), opts.compute_dtype))


def _plan(grid: list[int], strategies: list[str]) -> list[tuple[str, int]]:
    """The points in the order they are measured: the reference, then each n (ascending) per strategy."""
    return [(REFERENCE, 0)] + [(s, n) for n in grid if n > 0 for s in strategies]


def _finished(record: dict) -> dict[tuple[str, int], CurvePoint]:
    pts = [CurvePoint.from_dict(p) for p in record.get("points", [])]
    if record.get("reference"):
        pts.append(CurvePoint.from_dict(record["reference"]["unpruned"]))
    return {p.key: p for p in pts}


def _open_output(opts: SweepOptions, out: Path, source: Path) -> dict | None:
    """Check ``-o`` before any work: a new or empty folder, ``--force``, or ``--resume`` of a sweep there
    (returns its sweep.json record, checked later against these options)."""
    from ..eval.curve import read_json
    from ..io.atomic import check_output

    existing = out / JSON_NAME
    if opts.resume:
        if not existing.is_file():
            raise UsageError(f"--resume: {out} holds no {JSON_NAME}", "run the sweep without --resume first")
        check_output(out, source, force=True)
        try:
            return read_json(existing)
        except (OSError, ValueError) as e:
            raise UsageError(f"--resume: cannot read {existing} ({e.__class__.__name__})",
                             "give --force to start the sweep over") from None
    if out.is_dir() and any(out.iterdir()) and not opts.force and existing.is_file():
        from ..errors import OutputError

        raise OutputError(f"output {out} holds a sweep", "add --resume to continue it, --force to start over, "
                                                         "or choose another -o")
    check_output(out, source, force=opts.force)
    return None


class _State:
    """One sweep run: the loaded model, the analysis, the record written after every point."""

    def __init__(self, opts, ckpt, out, record, tasks, strategies, grid, t0):
        self.opts, self.ckpt, self.out, self.record = opts, ckpt, out, record
        self.tasks, self.strategies, self.grid, self.t0 = tasks, strategies, grid, t0
        self.base_seconds = float((record or {}).get("seconds") or 0.0)  # earlier runs of a resumed sweep
        self.report: dict | None = None
        self.measured = 0

    # -- measuring ------------------------------------------------------------------------------
    def measure(self, pending, done, options, total, progress, on_point) -> None:
        from ..analyze import compute_analysis
        from ..analyze.report import write_heatmap, write_json
        from ..data import parse_data_spec, training_examples
        from ..devices import compute_dtype, load_causal_lm, resolve_device
        from ..eval.curve import read_json
        from ..eval.streamed import StreamedModel
        from ..tokenizer import load_tokenizer

        opts, out = self.opts, self.out
        tok = load_tokenizer(Path(self.ckpt.path))
        device = resolve_device(opts.device)
        dtype = compute_dtype(device, opts.compute_dtype)
        spec = parse_data_spec(opts.eval_data or opts.data)
        examples = list(training_examples(spec, tok, seq_len=opts.seq_len, role="eval", max_examples=opts.eval_samples))
        streamed = opts.offload == "layer"
        if streamed:
            model = StreamedModel(self.ckpt.path, device=device, dtype=dtype)
        else:
            model = load_causal_lm(self.ckpt.path, device=device, dtype=dtype, device_map=opts.device_map,
                                   max_memory=opts.max_memory)
        if self.record is None:
            _fresh_folder(out, opts.force)
            self.record = self._new_record(options, spec.describe(), str(device))
        self.record["complete"] = False
        self._save()  # from here on the folder is a sweep --resume continues
        if (out / ANALYSIS_JSON).is_file() and self.record.get("analysis"):
            self.report = read_json(out / ANALYSIS_JSON)
        else:
            res = compute_analysis(self.ckpt.path, opts.data, samples=opts.samples, seq_len=opts.seq_len,
                                   pack=opts.pack, batch_size=opts.batch_size, dtype=opts.compute_dtype,
                                   offload=opts.offload, progress=_label(progress, "analyzing"), device=opts.device,
                                   device_map=opts.device_map, max_memory=opts.max_memory,
                                   loaded=None if streamed else model)
            write_json(res, out / ANALYSIS_JSON)
            write_heatmap(res, out / ANALYSIS_PNG)
            self.report = res.to_dict()
            self.record["analysis"] = {"file": ANALYSIS_JSON, "heatmap": ANALYSIS_PNG, "data_source": res.data_source,
                                       "samples": res.samples, "seq_len": res.seq_len, "seconds": round(res.seconds, 3)}
            self._save()
        self._measure_points(model, tok, examples, pending, done, total, progress, on_point)

    def _measure_points(self, model, tok, examples, pending, done, total, progress, on_point) -> None:
        from ..eval import measure_exits
        from ..eval.streamed import StreamedModel
        from ..exits import ExitSpec

        opts, L = self.opts, self.ckpt.num_layers
        streamed = isinstance(model, StreamedModel)
        blocks = {k: self.block(*k) for k in pending}
        mods = stack = None
        if not streamed:
            from ..eval.capture import exit_modules
            from ..runtime.stack import Stack

            mods, stack = exit_modules(model), Stack(model)

        def kept(k):
            return ExitSpec(None, [i for i in range(L) if i not in set(blocks[k][0])])

        twins = {}  # a point whose block an earlier point (finished or pending) already drops: measured once
        for i, k in enumerate(pending):
            seen = [p.key for p in done.values() if p.same_as is None] + pending[:i]
            twins[k] = next((o for o in seen if o[1] == k[1] and self.block(*o)[0] == blocks[k][0]), None)
        losses = {}
        if streamed:  # layer-major: every pending point in one pass over the checkpoint
            own = [k for k in pending if twins[k] is None]
            q, tokens = measure_exits(model, examples, [kept(k) for k in own], batch_size=opts.eval_batch_size,
                                      kl=False, progress=_label(progress, "held-out loss of every point"))
            losses = {k: (e.loss, tokens) for k, e in zip(own, q)}
        for k in pending:
            strategy, n = k
            if progress:
                progress(len(done), total, f"sweep {strategy} n={n}")
            dropped, distance = blocks[k]
            t = time.time()
            if twins[k] is not None:
                twin = done[twins[k]]
                point = CurvePoint(**{**twin.to_dict(), "strategy": strategy, "same_as": twin.strategy,
                                      "distance": distance, "command": prune_command(opts, strategy, n),
                                      "seconds": 0.0})
            else:
                if k in losses:
                    loss, tokens = losses[k]
                else:
                    q, tokens = measure_exits(model, examples, [kept(k)], batch_size=opts.eval_batch_size, kl=False,
                                              mods=mods)
                    loss = q[0].loss
                scores = {}
                if self.tasks:
                    from ..eval.harness import evaluate_tasks

                    with skipped(model, dropped, stack) as m:
                        scores = evaluate_tasks(m, tok, self.tasks, task_data=opts.task_data, limit=opts.limit,
                                                num_fewshot=opts.num_fewshot, batch_size=opts.task_batch_size)
                point = self.point(strategy, n, dropped, distance, loss, tokens, scores)
                point.seconds = round(time.time() - t, 3)
                self.measured += 1
            done[k] = point
            self._store(point)
            if on_point:
                on_point(point)
        if progress:
            progress(len(done), len(done), "sweep done")

    def block(self, strategy: str, n: int) -> tuple[list[int], float | None]:
        """The layers (strategy, n) drops, by prune's own block choice."""
        from ..surgery.block import block_from_analysis, deepest_block

        if strategy == REFERENCE:
            return [], None
        L = self.ckpt.num_layers
        b = block_from_analysis(self.report, n, False, L) if strategy == "similarity" else deepest_block(L, n)
        return b.layers, b.distance

    def point(self, strategy, n, dropped, distance, loss, tokens, scores) -> CurvePoint:
        from ..eval.curve import mean_accuracy, task_score

        L, V = self.ckpt.num_layers, self.vocab_size
        tasks = {t: task_score(m) for t, m in scores.items()}
        mean, se = mean_accuracy(tasks)
        cmd = None if strategy == REFERENCE else prune_command(self.opts, strategy, n)
        return CurvePoint(strategy=strategy, n=n, fraction=n / L, dropped=list(dropped), loss=loss,
                          normalized_loss=loss / math.log(V), tokens=tokens, tasks=tasks, mean_accuracy=mean,
                          mean_accuracy_stderr=se, distance=distance, command=cmd)

    @property
    def vocab_size(self) -> int:
        return int(self.ckpt.text_config.get("vocab_size") or 0) or 2

    # -- the record -----------------------------------------------------------------------------
    def _new_record(self, options: dict, eval_source: str, device: str) -> dict:
        from .. import __version__

        return {"format_version": 1, "surgeon_version": __version__, "model": str(self.opts.model),
                "num_layers": self.ckpt.num_layers, "vocab_size": self.vocab_size, "options": options,
                "eval_data_source": eval_source, "device": device, "tasks": self.tasks, "strategies": [],
                "grid": [], "analysis": None, "reference": None, "points": [], "complete": False, "seconds": 0.0,
                "metric": "score per task: acc_norm where the task reports it, else acc; mean accuracy: mean of the "
                          "scores; normalized loss: held-out loss / ln(vocab_size)"}

    def _store(self, point: CurvePoint) -> None:
        if point.strategy == REFERENCE:
            from ..eval.curve import chance_levels

            self.record["reference"] = {"unpruned": point.to_dict(), "chance": chance_levels(point.tasks)}
        else:
            pts = [p for p in self.record["points"] if (p["strategy"], p["n"]) != point.key]
            self.record["points"] = sorted([*pts, point.to_dict()], key=lambda p: (p["n"], p["strategy"]))
        self._save()

    def _save(self) -> None:
        from ..eval.curve import dumps
        from ..io.atomic import write_file_atomic

        r = self.record
        r["strategies"] = list(dict.fromkeys([*self.strategies, *r.get("strategies", [])]))
        r["grid"] = sorted({*self.grid, *r.get("grid", [])})
        r["seconds"] = round(self.base_seconds + time.time() - self.t0, 1)
        write_file_atomic(self.out / JSON_NAME, dumps(r))

    def finish(self, done: dict) -> SweepResult:
        from ..eval.curve import largest_cut, write_plot

        r = self.record
        ref = done[(REFERENCE, 0)]
        points = [done[k] for k in _plan(self.grid, self.strategies)[1:]]
        for p in points:  # written for this -o (a moved sweep folder resumed: its analysis.json's new path)
            p.command = prune_command(self.opts, p.strategy, p.n)
        r["points"] = [{**q, "command": prune_command(self.opts, q["strategy"], q["n"])} for q in r["points"]]
        answer = largest_cut(points, ref, self.opts.tolerance, self.strategies)
        r.update(answer=answer.to_dict(), tolerance=self.opts.tolerance, complete=True)
        self._save()
        plot = {**r, "chance": (r.get("reference") or {}).get("chance", {}),
                "points": [ref.to_dict(), *(p.to_dict() for p in points)], "strategies": self.strategies}
        write_plot(plot, self.out / PNG_NAME)
        files = [str(self.out / f) for f in (JSON_NAME, PNG_NAME, ANALYSIS_JSON, ANALYSIS_PNG)]
        return SweepResult(record=r, reference=ref,
                           points=points, answer=answer, files=files, measured=self.measured,
                           seconds=time.time() - self.t0)


def _check_resume(record: dict, options: dict, out: Path) -> None:
    old = record.get("options") or {}
    for key, value in options.items():
        if old.get(key) != value:
            flag = flag_name(SweepOptions, key)
            raise UsageError(f"--resume: {out} was swept with {flag} {_shown(old.get(key))}, not {_shown(value)}",
                             "give the same measurement options, or --force to start the sweep over")


def _shown(v) -> str:
    if isinstance(v, list):
        return ",".join(map(str, v)) or "(none)"
    return "(default)" if v is None else str(v)


def _fresh_folder(out: Path, force: bool) -> None:
    """Create ``out`` (with ``--force``: emptied first), once the model and data have loaded."""
    if force and out.is_dir():
        for p in out.iterdir():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _label(progress: Progress | None, label: str) -> Progress:
    def report(done: int, total: int, _unit: str = "") -> None:
        if progress:
            progress(done, total, label)
    return report
