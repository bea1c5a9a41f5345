"""surgeon prune MODEL --n N [--start S | --strategy similarity|deepest] -o OUT"""

from __future__ import annotations

from pathlib import Path

import click

from ..options import build, click_options
from ..prune import PruneOptions
from ._render import console, human_bytes, print_json, progress_bar, ranges, render_plan
from .heal import build_heal_settings, heal_click_options, run_prune_heal


@click.command("prune")
@click.argument("model", type=click.Path(path_type=Path))
@click_options(PruneOptions)
@heal_click_options()
@click.option("--json", "as_json", is_flag=True, help="Print the result (plan, block, output) as JSON.")
def prune_cmd(model: Path, as_json: bool, **kwargs) -> None:
    """Drop N consecutive layers of MODEL.

    The block is START..START+N-1 (0-based; START is the first dropped layer) when --start is
    given; otherwise --strategy picks it: `similarity` drops the block whose input and output
    residual streams are closest in angular distance (keeping the final layer; it runs the
    analysis on --data, or reads --analysis analysis.json), `deepest` drops layers L-1-N..L-2.
    """
    from ..prune import prune

    settings = build_heal_settings(kwargs)
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
        r = prune(opts, progress=phase("pruning", "bytes"), analysis_progress=phase("analyzing", "count"))
    finally:
        for bar in bars.values():
            bar.__exit__(None, None, None)
    if as_json:
        print_json({"plan": r.plan.to_dict(), "block": r.extra["block"],
                    "output": r.result.output if r.result else None})
        return
    b = r.block
    dist = f", angular distance {b.distance:.4f}" if b.distance is not None else ""
    c.print(f"block [bold]{b.start}..{b.start + b.n - 1}[/] ({b.strategy}{dist})")
    if b.analysis and b.analysis.get("data"):
        c.print(f"  measured on {b.analysis['data']}: {b.analysis.get('samples')} samples x {b.analysis.get('seq_len')} tokens")
    if opts.dry_run:
        render_plan(r.plan, c)
        return
    c.print(f"kept layers {ranges(list(r.plan.kept_layers))} -> renumbered 0..{len(r.plan.kept_layers) - 1}")
    c.print(f"[green]wrote[/] {r.result.output}: {len(r.plan.kept_layers)} layers, "
            f"{human_bytes(r.result.bytes_written)} in {r.result.seconds:.1f}s")
