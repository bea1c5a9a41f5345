"""surgeon heal MODEL --data SPEC -o OUT [--quant nf4|none] [--method lora|full] [--steps N] ..."""

from __future__ import annotations

from pathlib import Path

import click

from ..heal import HealOptions
from ..options import build, click_options
from ._render import console, print_json


class phase_bar:
    """A rich progress bar whose description follows the label (phase, loss, tokens/s) with an ETA."""

    def __enter__(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        c = console(stderr=True)
        self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           TextColumn("ETA"), TimeRemainingColumn(), console=c, transient=True, disable=not c.is_terminal)
        self._p.__enter__()
        self._phase = None
        self._task = None
        return self.update

    def update(self, done: int, total: int, label: str) -> None:
        phase = label.split()[0] if label else ""
        if phase != self._phase:
            if self._task is not None:
                self._p.remove_task(self._task)
            self._task = self._p.add_task(label, total=total)
            self._phase = phase
        self._p.update(self._task, completed=done, total=total, description=label)

    def __exit__(self, *exc):
        return self._p.__exit__(*exc)


def render_heal(r, c) -> None:
    """Print a HealResult: losses before/after, training speed, output."""
    t = r.train
    c.print(f"held-out loss  before {r.before.loss:.4f}  ->  after {r.after.loss:.4f}  "
            f"([bold]{r.improvement:+.4f}[/] nats; as trained {r.trained.loss:.4f}) on {r.after.tokens} tokens")
    done = t.steps - t.resumed_from
    resumed = f" (resumed at step {t.resumed_from})" if t.resumed_from else ""
    c.print(f"trained {done} steps{resumed} in {t.seconds:.1f}s ({t.seconds_per_step:.2f} s/step, "
            f"{t.tokens / max(t.seconds, 1e-9):,.0f} tok/s); final train loss {t.losses[-1]:.4f}")
    if r.output is not None:
        c.print(f"[green]wrote[/] {r.output.output}" + (f" (adapter: {r.adapter})" if r.adapter else ""))


@click.command("heal")
@click.argument("model", type=click.Path(path_type=Path))
@click_options(HealOptions)
@click.option("--json", "as_json", is_flag=True, help="Print the result (losses, training, output) as JSON.")
def heal_cmd(model: Path, as_json: bool, **kwargs) -> None:
    """Heal MODEL (e.g. a pruned checkpoint) with QLoRA and write a plain merged checkpoint.

    Defaults follow the pruning paper: 4-bit NF4 frozen base, LoRA rank 8 (alpha = rank,
    dropout 0.05) on the FFN projections, AdamW, warm-up then cosine, peak LR 3e-4. The held-out
    loss is measured before and after (on the written weights) and recorded in the provenance.
    Runs on CPU, one GPU, or several with `accelerate launch -m surgeon heal ...`.
    """
    from ..heal import heal

    opts = build(HealOptions, model=model, **kwargs)
    with phase_bar() as progress:
        r = heal(opts, progress=progress)
    if r.output is None:  # a non-main process under accelerate launch
        return
    if as_json:
        print_json(r.to_dict())
        return
    render_heal(r, console())


def heal_click_options(prefix: str = "heal"):
    """The :class:`~surgeon.heal.HealSettings` flags renamed ``--heal-*`` (for ``surgeon prune --heal``),
    so they never clash with the host command's own ``--seq-len`` / ``--batch-size``."""
    import dataclasses
    import typing

    from ..heal import HealSettings
    from ..options import click_options

    hints = typing.get_type_hints(HealSettings)
    specs = []
    for f in dataclasses.fields(HealSettings):
        md = dict(f.metadata, flags=None)
        specs.append((f"{prefix}_{f.name}", hints[f.name], dataclasses.field(default=f.default, metadata=md)))
    return click_options(dataclasses.make_dataclass("PrefixedHealSettings", specs, frozen=True))


def build_heal_settings(kwargs: dict, prefix: str = "heal"):
    """Pop the ``heal_*`` values from click's kwargs and build HealSettings from them."""
    from ..heal import HealSettings

    p = f"{prefix}_"
    values = {k[len(p):]: kwargs.pop(k) for k in list(kwargs) if k.startswith(p)}
    return HealSettings(**values)


def run_prune_heal(opts, settings, as_json: bool) -> None:
    """``surgeon prune ... --heal SPEC``: one library call, then the prune line and the heal summary."""
    from ..heal import prune_and_heal
    from ._render import ranges

    with phase_bar() as progress:
        p, r = prune_and_heal(opts, settings, progress)
    if r.output is None:
        return
    if as_json:
        print_json({"plan": p.plan.to_dict(), "block": p.extra["block"], "heal": r.to_dict(), "output": r.output.output})
        return
    c = console()
    b = p.block
    c.print(f"pruned block [bold]{b.start}..{b.start + b.n - 1}[/] ({b.strategy}); kept layers "
            f"{ranges(list(p.plan.kept_layers))}")
    render_heal(r, c)
