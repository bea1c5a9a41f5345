"""The pruning curve (``surgeon sweep``): points, the answer, ``sweep.json`` and ``sweep.png``.

A point is the model with one contiguous block of ``n`` layers skipped, chosen by a strategy
(``similarity``: l*(n) of the angular-distance analysis; ``deepest``: the deepest block that keeps the
final layer), scored on held-out loss (also divided by ln(vocabulary), the loss of guessing uniformly,
as in Gromov et al.'s Fig. 3) and on each task's accuracy. The unpruned model (``strategy="none"``,
``n=0``) is the reference every point is compared with.

A task's score is its ``acc_norm`` (the harness's length-normalized choice) where the task reports one
(ARC, HellaSwag, PIQA, OpenBookQA, ...), else its ``acc`` (BoolQ, WinoGrande, MMLU); the mean accuracy
is the mean of the scores, its stderr sqrt(sum of squared stderrs) / number of tasks.

:func:`largest_cut` answers "how many layers can I drop": for each strategy, the largest swept ``n``
such that that point and every smaller swept ``n`` of the strategy keep the mean accuracy within
``tolerance`` (absolute) of the unpruned model's; then the strategy that drops the most (ties: the
higher mean accuracy, then the order given). Requiring every smaller ``n`` to pass keeps a noisy
recovery after a collapse from being taken for a safe cut. The mean that decides leaves out the tasks
the unpruned model is not more than ``tolerance`` above chance on (:func:`informative_tasks`): such a
task cannot show a collapse, and its floor hides the others' (on SmolLM2-135M, BoolQ's first 100
examples, 70% "yes", score 0.70 for a model cut to worse than uniform guessing that always says "yes").
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

JSON_NAME = "sweep.json"
PNG_NAME = "sweep.png"
FORMAT_VERSION = 1
REFERENCE = "none"  # the strategy name of the unpruned reference point


@dataclass
class CurvePoint:
    """One measured point of the curve (see module doc); ``tasks``: ``{task: harness metrics + score}``."""

    strategy: str
    n: int
    fraction: float
    dropped: list[int]
    loss: float
    normalized_loss: float
    tokens: int
    tasks: dict[str, dict] = field(default_factory=dict)
    mean_accuracy: float | None = None
    mean_accuracy_stderr: float | None = None
    distance: float | None = None  # angular distance d(l, l+n) of the block (similarity)
    command: str | None = None  # the `surgeon prune` line that writes this cut
    same_as: str | None = None  # the strategy whose identical block was measured (not measured twice)
    seconds: float = 0.0

    @property
    def key(self) -> tuple[str, int]:
        return self.strategy, self.n

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CurvePoint:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


def task_score(metrics: dict) -> dict:
    """``metrics`` (one task's harness result) with ``metric``, ``score`` and ``score_stderr`` added."""
    metric = "acc_norm" if metrics.get("acc_norm") is not None else "acc"
    return {**metrics, "metric": metric, "score": metrics.get(metric), "score_stderr": metrics.get(f"{metric}_stderr")}


def mean_accuracy(tasks: dict[str, dict]) -> tuple[float | None, float | None]:
    """Mean of the tasks' scores and its stderr (independent tasks), or (None, None) without tasks."""
    scores = [t["score"] for t in tasks.values() if t.get("score") is not None]
    if not scores or len(scores) != len(tasks):
        return None, None
    errs = [t.get("score_stderr") for t in tasks.values()]
    se = math.sqrt(sum(e * e for e in errs)) / len(errs) if all(isinstance(e, (int, float)) for e in errs) else None
    return sum(scores) / len(scores), se


def chance_levels(tasks: dict[str, dict]) -> dict[str, float | None]:
    """Each task's chance accuracy (as the harness bridge reports it) and their mean (``"mean"``)."""
    out = {k: t.get("chance") for k, t in tasks.items()}
    vals = [v for v in out.values() if v is not None]
    out["mean"] = sum(vals) / len(vals) if vals and len(vals) == len(tasks) else None
    return out


@dataclass
class Answer:
    """The largest cut within ``tolerance`` of the unpruned mean accuracy (see :func:`largest_cut`).

    ``tasks``: the tasks whose mean decides (``excluded``: those the unpruned model is not above chance on);
    ``unpruned`` and ``mean_accuracy`` are means over ``tasks``."""

    tolerance: float
    unpruned: float | None
    n: int | None = None
    strategy: str | None = None
    fraction: float | None = None
    dropped: list[int] = field(default_factory=list)
    mean_accuracy: float | None = None
    command: str | None = None
    tasks: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def informative_tasks(reference: CurvePoint, tolerance: float) -> tuple[list[str], list[str]]:
    """``(used, excluded)``: the tasks the unpruned model scores more than ``tolerance`` above chance on, and
    the others (as ``"task (score vs chance c)"``). A task at chance cannot show a collapse, and a broken model
    that always gives one answer scores that answer's share of the examples (BoolQ's "yes": 62%), so such a
    task would hide the collapse of the others in the mean."""
    used, excluded = [], []
    for t, m in reference.tasks.items():
        score, chance = m.get("score"), m.get("chance")
        if score is not None and chance is not None and score <= chance + tolerance:
            excluded.append(f"{t} ({score:.3f} vs chance {chance:.3f})")
        else:
            used.append(t)
    return used, excluded


def mean_of(point: CurvePoint, tasks: list[str]) -> float | None:
    scores = [point.tasks.get(t, {}).get("score") for t in tasks]
    return sum(scores) / len(scores) if scores and None not in scores else None


def largest_cut(points: list[CurvePoint], reference: CurvePoint | None, tolerance: float,
                strategies: list[str]) -> Answer:
    """The answer of the sweep (see module doc): on the mean accuracy of the :func:`informative_tasks`."""
    if reference is None or not reference.tasks:
        return Answer(tolerance, None, note="no task accuracy was measured (give --tasks): no answer from the loss "
                                            "alone, which moves smoothly where accuracy collapses (paper, Fig. 3)")
    used, excluded = informative_tasks(reference, tolerance)
    if not used:
        return Answer(tolerance, None, excluded=excluded,
                      note="the unpruned model is within the tolerance of chance on every task: these tasks cannot "
                           "tell the cuts apart; sweep tasks the model is good at")
    ref = mean_of(reference, used)
    note = (f"left out of the mean: {', '.join(excluded)}; the unpruned model is not above chance there, so the "
            "task cannot show a collapse") if excluded else ""
    best: tuple | None = None
    for rank, s in enumerate(strategies):
        ok = None
        for p in sorted((p for p in points if p.strategy == s and p.n > 0), key=lambda p: p.n):
            m = mean_of(p, used)
            if m is None or m < ref - tolerance:
                break
            ok = (p, m)
        if ok is not None and (best is None or (ok[0].n, ok[1], -rank) > best[0]):
            best = ((ok[0].n, ok[1], -rank), ok)
    if best is None:
        return Answer(tolerance, ref, n=0, fraction=0.0, mean_accuracy=ref, tasks=used, excluded=excluded,
                      note="; ".join(x for x in ("no swept cut keeps the mean accuracy within the tolerance: keep "
                                                 "every layer (or heal the cut, or sweep smaller n)", note) if x))
    p, m = best[1]
    return Answer(tolerance, ref, n=p.n, strategy=p.strategy, fraction=p.fraction, dropped=list(p.dropped),
                  mean_accuracy=m, command=p.command, tasks=used, excluded=excluded, note=note)


# ----------------------------------------------------------------------------------------- files
def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def dumps(record: dict) -> str:
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


STYLE = {"similarity": ("tab:blue", "o"), "deepest": ("tab:red", "s")}


def write_plot(record: dict, path: Path) -> None:
    """``sweep.png`` from a ``sweep.json`` record, laid out like the paper's Fig. 1(d) / 5: one panel per
    task and one for the mean accuracy (score vs fraction of layers dropped), one for the normalized
    held-out loss; a line per strategy (shaded: +-1 stderr), dashed lines for the unpruned model (black)
    and chance (gray); a dotted line at the answer's fraction."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io.atomic import write_file_atomic

    points = [CurvePoint.from_dict(p) for p in record["points"]]
    ref = next((p for p in points if p.strategy == REFERENCE), None)
    tasks = list(record.get("tasks") or [])
    answer = record.get("answer") or {}
    used = answer.get("tasks") or tasks
    panels = [*tasks, "mean"] if tasks else []
    panels.append("loss")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=110, squeeze=False)
    chance = dict(record.get("chance") or {})
    if used and all(chance.get(t) is not None for t in used):
        chance["mean"] = sum(chance[t] for t in used) / len(used)
    for ax, panel in zip(axes.flat, panels):
        for s in reversed(record["strategies"]):  # the first strategy drawn last, on top
            pts = sorted([p for p in points if p.strategy == s] + ([ref] if ref else []), key=lambda p: p.n)
            xs, ys, es = [], [], []
            for p in pts:
                y, e = _value(p, panel, used)
                if y is not None:
                    xs.append(p.fraction), ys.append(y), es.append(e or 0.0)
            if not xs:
                continue
            color, marker = STYLE.get(s, (None, "^"))
            ax.plot(xs, ys, marker=marker, color=color, markersize=3.5, lw=1.4, label=s)
            if panel != "loss" and any(es):
                ax.fill_between(xs, [y - e for y, e in zip(ys, es)], [y + e for y, e in zip(ys, es)],
                                color=color, alpha=0.15, lw=0)
        if ref is not None and _value(ref, panel, used)[0] is not None:
            ax.axhline(_value(ref, panel, used)[0], ls="--", color="black", lw=1, label="unpruned")
        level = 1.0 if panel == "loss" else chance.get(panel)
        if level is not None:
            ax.axhline(level, ls="--", color="gray", lw=1, label="chance" if panel != "loss" else "uniform guess")
        if panel != "loss" and answer.get("strategy") and answer.get("fraction"):
            ax.axvline(answer["fraction"], ls=":", color="green", lw=1, label=f"answer (n={answer['n']})")
        title = {"mean": "mean accuracy" + (f" ({', '.join(used)})" if set(used) != set(tasks) else ""),
                 "loss": "normalized held-out loss"}.get(panel, panel)
        if panel in tasks:
            metric = next((p.tasks[panel].get("metric") for p in points if panel in p.tasks), "acc")
            title += f" ({metric})"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("fraction of layers dropped", fontsize=8)
        ax.set_ylabel("loss / ln V" if panel == "loss" else "accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[len(panels) - 1 if not tasks else len(tasks)].get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: (record["strategies"] + labels).index(labels[i]))
    fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="lower center", ncol=len(labels),
               fontsize=8, frameon=False)
    options = record.get("options", {})
    fig.suptitle(f"{Path(str(record['model'])).name}: {record['num_layers']} layers, before healing"
                 + (f"; {options['limit']} examples per task" if options.get("limit") else "")
                 + (f"; {options['compute_dtype']}" if options.get("compute_dtype") else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_file_atomic(path, buf.getvalue())


def _value(p: CurvePoint, panel: str, used: list[str]) -> tuple[float | None, float | None]:
    if panel == "loss":
        return p.normalized_loss, None
    if panel == "mean":
        if set(used) != set(p.tasks):
            errs = [p.tasks.get(t, {}).get("score_stderr") for t in used]
            se = math.sqrt(sum(e * e for e in errs)) / len(errs) if used and None not in errs else None
            return mean_of(p, used), se
        return p.mean_accuracy, p.mean_accuracy_stderr
    t = p.tasks.get(panel)
    return (t.get("score"), t.get("score_stderr")) if t else (None, None)
