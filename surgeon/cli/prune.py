"""surgeon prune MODEL --n N [--start S | --strategy similarity|deepest] -o OUT"""

from __future__ import annotations

from pathlib import Path

import click

from ..commands.heal import HealSettings
from ..commands.prune import PruneOptions
from ..options import build, click_options
from ._model import model_argument
from ._render import console, human_bytes, phase_bar, print_json, progress_bar, ranges, render_plan
from .heal import render_heal


@click.command("prune")
@model_argument
@click_options(PruneOptions)
@click_options(HealSettings, prefix="heal")
@click.option("--json", "as_json", is_flag=True, help="Print the result (plan, block, output) as JSON.")
def prune_cmd(model: Path, as_json: bool, **kwargs) -> None:
    """Drop N consecutive layers of MODEL.

    The block is START..START+N-1 (0-based; START is the first dropped layer) when --start is
    given; otherwise --strategy picks it: `similarity` drops the block whose input and output
    residual streams are closest in angular distance (keeping the final layer; it runs the
    analysis on --data, or reads --analysis analysis.json), `deepest` drops layers L-1-N..L-2.
    """
    from ..commands import prune

    settings = build(HealSettings, prefix="heal", **kwargs)
    opts = build(PruneOptions, model=model, **kwargs)
    if opts.heal and not opts.dry_run:
        return run_prune_heal(opts, settings, as_json)
    c = console()
    bars: dict[str, progress_bar] = {}

    def phase(name: str, unit: str):
        def update(done: int, total: int, label: str = "") -> None:
            if name not in bars:  # one live bar at a time: close the analysis bar before the write starts
                for bar in bars.values():
                    bar.__exit__(None, None, None)
                bars.clear()
                bars[name] = progress_bar(name, unit)
                bars[name].__enter__()
            bars[name].update(done, total, label)
        return update

    try:
        r = prune.run(opts, progress=phase("pruning", "bytes"), analysis_progress=phase("analyzing", "count"))
    finally:
        for bar in bars.values():
            bar.__exit__(None, None, None)
    if as_json:
        print_json({"plan": r.plan.to_dict(), "block": r.extra["block"],
                    "output": r.result.output if r.result else None})
        return
    render_prune(r, c, dry_run=opts.dry_run)


def render_prune(r, c, dry_run: bool = False) -> None:
    """The chosen block and what was written (or the plan, for a dry run)."""
    b = r.block
    dist = f", angular distance {b.distance:.4f}" if b.distance is not None else ""
    c.print(f"block [bold]{b.start}..{b.start + b.n - 1}[/] ({b.strategy}{dist})")
    if b.analysis and b.analysis.get("data"):
        c.print(f"  measured on {b.analysis['data']}: {b.analysis.get('samples')} samples x {b.analysis.get('seq_len')} tokens")
    if dry_run:
        render_plan(r.plan, c)
        return
    c.print(f"kept layers {ranges(list(r.plan.kept_layers))} -> renumbered 0..{len(r.plan.kept_layers) - 1}")
    c.print(f"[green]wrote[/] {r.result.output}: {len(r.plan.kept_layers)} layers, "
            f"{human_bytes(r.result.bytes_written)} in {r.result.seconds:.1f}s")


def run_prune_heal(opts, settings, as_json: bool) -> None:
    """``surgeon prune ... --heal SPEC``: one library call, then the prune line and the heal summary."""
    from ..commands.heal import prune_and_heal

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
