"""surgeon heal MODEL --data SPEC -o OUT [--quant nf4|none] [--method lora|full] [--steps N] ..."""

from __future__ import annotations

from pathlib import Path

import click

from ..commands.heal import HealOptions
from ..options import build, click_options
from ._model import model_argument
from ._render import console, phase_bar, print_json


def render_heal(r, c) -> None:
    """Print a HealResult: losses before/after, training speed, output."""
    t = r.train
    if r.after is not None:
        as_trained = f"; as trained {r.trained.loss:.4f}" if r.trained is not None else ""
        c.print(f"held-out loss  before {r.before.loss:.4f}  ->  after {r.after.loss:.4f}  "
                f"([bold]{r.improvement:+.4f}[/] nats{as_trained}) on {r.after.tokens} tokens")
    done = t.steps - t.resumed_from
    resumed = f" (resumed at step {t.resumed_from})" if t.resumed_from else ""
    c.print(f"trained {done} steps{resumed} in {t.seconds:.1f}s ({t.seconds_per_step:.2f} s/step, "
            f"{t.tokens / max(t.seconds, 1e-9):,.0f} tok/s); final train loss {t.losses[-1]:.4f}")
    if r.output is not None:
        c.print(f"[green]wrote[/] {r.output.output}" + (f" (adapter: {r.adapter})" if r.adapter else ""))


@click.command("heal")
@model_argument
@click_options(HealOptions)
@click.option("--json", "as_json", is_flag=True, help="Print the result (losses, training, output) as JSON.")
def heal_cmd(model: Path, as_json: bool, **kwargs) -> None:
    """Heal MODEL (e.g. a pruned checkpoint) with QLoRA and write a plain merged checkpoint.

    Defaults follow the pruning paper: 4-bit NF4 frozen base, LoRA rank 8 (alpha = rank,
    dropout 0.05) on the FFN projections, AdamW, warm-up then cosine, peak LR 3e-4. The held-out
    loss is measured before and after (on the written weights) and recorded in the provenance.
    Runs on CPU, one GPU, or several with `accelerate launch -m surgeon heal ...`.
    """
    from ..commands import heal

    opts = build(HealOptions, model=model, **kwargs)
    with phase_bar() as progress:
        r = heal.run(opts, progress=progress)
    if r.output is None:  # a non-main process under accelerate launch
        return
    if as_json:
        print_json(r.to_dict())
        return
    render_heal(r, console())
