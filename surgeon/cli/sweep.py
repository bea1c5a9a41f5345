"""surgeon sweep MODEL --data CALIB [--tasks T,T --task-data DIR --limit N] [--n 0,2,4 | --max-fraction F --step K] -o sweep/"""

from __future__ import annotations

from pathlib import Path

import click

from ..commands.sweep import SweepOptions
from ..options import build, click_options
from ._model import model_argument
from ._render import console, print_json, ranges


@click.command("sweep")
@model_argument
@click_options(SweepOptions)
@click.option("--json", "as_json", is_flag=True, help="Print sweep.json to stdout instead of the table.")
def sweep_cmd(model: Path, as_json: bool, **kwargs) -> None:
    """The pruning curve of MODEL: held-out loss and task accuracy vs layers dropped.

    One angular-distance analysis on --data gives the best block l*(n) for every n; each point
    is the model with a block of n layers skipped in memory (no checkpoint written), chosen by
    each --strategy, scored on the held-out loss (also divided by ln(vocabulary)) and on each of
    --tasks. Writes sweep.json (after every point; --resume continues an interrupted sweep) and
    sweep.png (the pruning paper's Fig. 1(d)/5), and ends with the largest n whose mean accuracy
    stays within --tolerance of the unpruned model, with the `surgeon prune` line that makes it.
    """
    from ..commands import sweep
    from ._render import phase_bar

    opts = build(SweepOptions, model=model, **kwargs)
    err = console(stderr=True)

    def on_point(p) -> None:
        if not as_json:
            err.print(f"  {_name(p)}: loss {p.loss:.3f}" + ("" if p.mean_accuracy is None else
                                                          f", mean accuracy {p.mean_accuracy:.3f}")
                      + (f" (same block as {p.same_as})" if p.same_as else f" [{p.seconds:.0f}s]"))

    with phase_bar() as progress:
        r = sweep.run(opts, progress=progress, on_point=on_point)
    if as_json:
        print_json(r.to_dict())
        return
    render_sweep(r)


def _name(p) -> str:
    return "unpruned" if p.n == 0 else f"{p.strategy} n={p.n}"


def render_sweep(r, c=None) -> None:
    """The table of every point, the answer and the files written."""
    from rich.table import Table

    from ..eval.curve import mean_of

    c = c or console()
    if not c.is_terminal:  # a log or a pipe: keep the table's rows whole (a terminal wraps to its own width)
        c.width = max(c.width, 150)
    rec, ref = r.record, r.reference
    tasks = list(rec.get("tasks") or [])
    limit = rec["options"].get("limit")
    a = r.answer
    deciding = [f"mean w/o {', '.join(x.split(' (')[0] for x in a.excluded)}"] if a.excluded else []
    t = Table("strategy", "n", "drop", "layers", "loss", "loss/lnV", *tasks, "mean acc", *deciding, "Δ",
              title=f"{rec['model']}: {rec['num_layers']} layers; held-out {rec['options']['eval_data']}"
                    + (f"; tasks: {limit} examples each" if tasks and limit else ""), title_justify="left")
    chance = (rec.get("reference") or {}).get("chance") or {}
    for p in [ref, *r.points]:
        acc = [_pct(p.tasks.get(k, {}).get("score")) for k in tasks]
        mean = "-" if p.mean_accuracy is None else (f"{p.mean_accuracy:.3f}" + (
            f"±{p.mean_accuracy_stderr:.3f}" if p.mean_accuracy_stderr is not None else ""))
        decides = mean_of(p, a.tasks) if a.excluded else p.mean_accuracy
        extra = [_pct(decides)] if a.excluded else []
        delta = "-" if p is ref or decides is None or a.unpruned is None else f"{decides - a.unpruned:+.3f}"
        t.add_row("unpruned" if p is ref else p.strategy, str(p.n), f"{p.fraction:.0%}",
                  ranges(p.dropped) if p.dropped else "-", f"{p.loss:.3f}", f"{p.normalized_loss:.3f}", *acc,
                  mean, *extra, delta)
    if tasks:
        used = [chance.get(k) for k in a.tasks]
        t.add_row("chance", "", "", "", "", "1.000", *[_pct(chance.get(k)) for k in tasks], _pct(chance.get("mean")),
                  *([_pct(sum(used) / len(used))] if a.excluded and used and None not in used else []), "")
    c.print(t)
    over = "" if not a.excluded else f" (mean of {', '.join(a.tasks)})"
    if a.unpruned is None:
        c.print(f"[yellow]no answer:[/] {a.note}")
    elif a.strategy is None:
        c.print(f"[bold]answer:[/] no swept cut keeps the mean accuracy{over} within {a.tolerance} of the unpruned "
                f"{a.unpruned:.3f}: keep every layer, heal the cut, or sweep smaller n")
    else:
        c.print(f"[bold]answer:[/] drop n = {a.n} of {rec['num_layers']} layers ({a.fraction:.0%}; layers "
                f"{ranges(a.dropped)}, {a.strategy}): mean accuracy{over} {a.mean_accuracy:.3f} vs {a.unpruned:.3f} "
                f"unpruned (tolerance {a.tolerance})")
        c.print(f"  {a.command}", soft_wrap=True, markup=False)  # one line, to paste
    if a.excluded:
        c.print(f"[yellow]note:[/] left out of the mean: {', '.join(a.excluded)}: the unpruned model is not above "
                "chance there, so the task cannot show a collapse")
    c.print(f"[green]wrote[/] {', '.join(r.files)} ({r.measured} points measured by this run; "
            f"{rec['seconds']:.0f}s in all)")


def _pct(v) -> str:
    return "-" if v is None else f"{v:.3f}"
