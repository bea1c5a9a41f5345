"""surgeon extract MODEL [--depth K | --layers LIST] [--ffn F] [--heads H] | --exit NAME | --max-params N -o OUT"""

from __future__ import annotations

from pathlib import Path

import click

from ..commands.extract import ExtractOptions
from ..options import build, click_options
from ._model import model_argument
from ._render import console, human_bytes, print_json, progress_bar, render_plan


@click.command("extract")
@model_argument
@click_options(ExtractOptions)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def extract_cmd(model: Path, as_json: bool, **kwargs) -> None:
    """Extract a sub-model of MODEL.

    Depth: the first --depth layers (or --layers) with the shared final norm and LM head. Width:
    the first --ffn channels and --heads attention heads of every kept layer (fractions or counts,
    uniform across layers; with GQA heads go in whole KV groups). Run `surgeon sort-width` first so
    the first channels and heads are the most important ones. Or pick an exit of the sorted
    manifest: --exit NAME (or a layer count), or the largest within --max-params / --max-flops.
    """
    from ..commands import extract

    opts = build(ExtractOptions, model=model, **kwargs)
    c = console()
    with progress_bar("extracting") as progress:
        r = extract.run(opts, progress=progress)
    if as_json:
        print_json({"plan": r.plan.to_dict(), "output": r.result.output if r.result else None})
        return
    if opts.dry_run:
        render_plan(r.plan, c)
        return
    w = r.plan.options.get("width")
    if w:
        c.print(f"width: {w['ffn']} FFN channels, {w['heads']} heads ({w['kv_heads']} KV heads) per layer")
    c.print(f"[green]wrote[/] {r.result.output}: {len(r.plan.kept_layers)} layers, "
            f"{human_bytes(r.result.bytes_written)} in {r.result.seconds:.1f}s")
