"""surgeon eval MODEL --exit K | --all-exits (--data SPEC | --tasks T,T [--task-data DIR]) [--json]"""

from __future__ import annotations

from pathlib import Path

import click

from ..commands.eval import EvalOptions
from ..options import build, click_options
from ._model import model_argument
from ._render import console, print_json, progress_bar


@click.command("eval")
@model_argument
@click_options(EvalOptions)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def eval_cmd(model: Path, as_json: bool, **kwargs) -> None:
    """Held-out loss and perplexity of depth sub-models of MODEL.

    Sub-model K is the first K layers read through the shared final norm and LM head; all exits
    come from one forward pass per batch. Also reports KL(full || exit) in nats per token and how
    often the exit's top-1 token matches the full model's (--no-kl skips both).

    --tasks scores each exit on lm-evaluation-harness tasks instead (accuracy, normalized accuracy, their
    standard errors, and chance), with --task-data DIR reading the benchmark data from disk, offline.
    """
    from ..commands import eval as eval_cmd

    opts = build(EvalOptions, model=model, **kwargs)
    if opts.tasks:
        tr = eval_cmd.run_harness(opts)
        if as_json:
            print_json(tr.to_dict())
        else:
            render_tasks(tr)
        return
    with progress_bar("evaluating", unit="sequences") as progress:
        r = eval_cmd.run(opts, progress=progress)
    if as_json:
        print_json(r.to_dict())
        return
    from rich.table import Table

    c = console()
    t = Table("exit", "layers", "loss", "perplexity", "KL(full||exit)", "top-1 agree",
              title=f"{r.model} on {r.data}: {r.tokens} tokens, {r.sequences} sequences", title_justify="left")
    for q in r.exits:
        t.add_row(str(q.exit), f"{q.exit}/{r.num_layers}", f"{q.loss:.4f}", f"{q.perplexity:.2f}",
                  "-" if q.kl_full_exit is None else f"{q.kl_full_exit:.4f}",
                  "-" if q.top1_agreement is None else f"{q.top1_agreement:.1%}")
    c.print(t)


def render_tasks(r) -> None:
    """One table per exit: task, split, metric, value +- stderr, examples, chance."""
    from rich.table import Table

    c = console()
    source = r.task_data or "the harness's hub data"
    for label, results in r.exits.items():
        t = Table("task", "split", "metric", "value", "n", "chance", title_justify="left",
                  title=f"{r.model}, exit {label} ({r.layers[label]}/{r.num_layers} layers) on {source}")
        for task, res in results.items():
            for m in ("acc", "acc_norm"):
                if res.get(m) is None:
                    continue
                err = res.get(f"{m}_stderr")
                t.add_row(task, res.get("split") or "-", m, f"{res[m]:.3f}" + ("" if err is None else f" ± {err:.3f}"),
                          str(res["n"]), "-" if res.get("chance") is None else f"{res['chance']:.3f}")
        c.print(t)
    c.print(f"{r.seconds:.1f} s" + (f", --limit {r.limit}" if r.limit else ""))
