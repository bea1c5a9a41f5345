"""surgeon soft MODEL --data SPEC [--exits N,N,...] [--loss sum|stochastic] -o OUT"""

from __future__ import annotations

from pathlib import Path

import click

from ..commands.soft import SoftOptions
from ..options import build, click_options
from ._model import model_argument
from ._render import console, phase_bar, print_json


def render_soft(r, c) -> None:
    """Print a SoftResult: per-exit held-out loss before/after, training speed, output."""
    from rich.table import Table

    if r.after:
        before = {q.exit: q for q in r.before}
        t = Table("exit", "loss before", "loss after", "ppl after", "KL(full||exit) after", "top-1 agree",
                  title=f"held-out quality per exit ({r.eval_tokens} tokens)", title_justify="left")
        for q in r.after:
            b = before.get(q.exit)
            t.add_row(f"{q.exit}/{r.num_layers}", f"{b.loss:.4f}" if b else "-", f"{q.loss:.4f}", f"{q.perplexity:.2f}",
                      f"{q.kl_full_exit:.4f}", f"{q.top1_agreement:.1%}")
        c.print(t)
    if r.extra.get("width"):
        t = Table("exit", *[f"ffn {k} before/after" for k in r.extra["width"]],
                  title="held-out loss of the narrower FFN widths", title_justify="left")
        rows = {n: [] for n in r.exits}
        for res in r.extra["width"].values():
            b = {q["exit"]: q["loss"] for q in res["before"]}
            a = {q["exit"]: q["loss"] for q in res["after"]}
            for n in r.exits:
                rows[n].append(f"{b.get(n, float('nan')):.4f} / {a.get(n, float('nan')):.4f}")
        for n, cells in rows.items():
            t.add_row(f"{n}/{r.num_layers}", *cells)
        c.print(t)
    tr = r.train
    done = tr.steps - tr.resumed_from
    resumed = f" (resumed at step {tr.resumed_from})" if tr.resumed_from else ""
    c.print(f"trained {done} steps{resumed} with the {r.loss} loss over exits {', '.join(map(str, r.exits))} "
            f"in {tr.seconds:.1f}s ({tr.seconds_per_step:.2f} s/step); final train loss {tr.losses[-1]:.4f}")
    if r.output is not None:
        c.print(f"[green]wrote[/] {r.output.output}")


@click.command("soft")
@model_argument
@click_options(SoftOptions)
@click.option("--json", "as_json", is_flag=True, help="Print the result (per-exit losses, training, output) as JSON.")
def soft_cmd(model: Path, as_json: bool, **kwargs) -> None:
    """Sorted Fine-Tuning: train every prefix MODEL[:n] (n in --exits) to be a usable model.

    Sub-model n is the first n layers read through the shared final norm and LM head (no new
    parameters). Every step trains all exits from one forward pass (--loss sum, Sorted LLaMA
    eq. 1) or one sampled exit (--loss stochastic). --exits L alone is plain SFT, the baseline.
    --ffn-exits adds nested FFN widths (first k channels of every layer; one width sampled per
    micro-batch, SortedNet Alg. 2); the manifest then also lists the (depth, width) exits.
    The output is a plain merged checkpoint whose sorted manifest lists the trained exits.
    Runs on CPU, one GPU, or several with `accelerate launch -m surgeon soft ...`.

    The default loss keeps the full model: the deepest exit holds 95% of the weight and the
    other exits distil its distribution (--exit-weights anchor:0.95 --exit-loss kd). On
    SmolLM2-135M it costs the full model 0.044 nats against plain SFT's at 100 steps (the
    paper's uniform mean: 0.55) and 0.035 at 400 (uniform: 0.40; task accuracy within one
    stderr of SFT's), and puts exits 10-20 7.7-8.3 nats below SFT's at 100 steps (uniform:
    11.6-12.1) and 9.5-10.2 at 400. Its best draft exit (25) accepts 0.29 of its drafts at 100
    steps (uniform: 0.37; SFT: 0.24). On Qwen2.5-Coder-0.5B (lr 1e-5, 100 steps): the full
    model 0.004 nats from SFT's, exits 8-16 2.9-3.8 nats below SFT's, exit 20 accepts 0.36
    (SFT: 0.34). README, "SoFT frontier". For exits to serve or draft with:
    --exit-weights anchor:0.5; the paper's loss: --exit-weights uniform --exit-loss ce.
    """
    from ..commands import soft

    opts = build(SoftOptions, model=model, **kwargs)
    with phase_bar() as progress:
        r = soft.run(opts, progress=progress)
    if r.output is None:  # a non-main process under accelerate launch
        return
    if as_json:
        print_json(r.to_dict())
        return
    render_soft(r, console())
