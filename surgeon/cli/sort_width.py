"""surgeon sort-width MODEL --data SPEC -o OUT"""

from __future__ import annotations

from pathlib import Path

import click

from ..commands.sort_width import SortWidthOptions
from ..options import build, click_options
from ._model import model_argument
from ._render import console, human_bytes, print_json, progress_bar


@click.command("sort-width")
@model_argument
@click_options(SortWidthOptions)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def sort_width_cmd(model: Path, as_json: bool, **kwargs) -> None:
    """Permute every layer's FFN channels and attention heads (whole KV groups) by importance.

    Importance is the mean |activation| on calibration data: per FFN channel the input of the down
    projection, per KV group the L2 norm of its query heads' attention output. The sorted model
    computes the same function (same logits); afterwards `surgeon extract --ffn K --heads H` keeps
    the most important channels and heads. The permutation is recorded in the output's provenance.
    """
    from ..commands import sort_width

    opts = build(SortWidthOptions, model=model, **kwargs)
    c = console()
    with progress_bar("sorting") as progress:
        r = sort_width.run(opts, progress=progress)
    moved = r.moved()
    if as_json:
        print_json({"output": r.result.output, "calibration": r.calibration, "moved": moved,
                    "order": {str(k): v for k, v in r.order.items()}})
        return
    c.print(f"calibrated on {r.calibration['samples']} sequences x {r.calibration['seq_len']} tokens "
            f"({r.importance.tokens} tokens of {r.calibration['data']})")
    c.print(f"positions changed: {moved['ffn']:.0%} of FFN channels, {moved['kv']:.0%} of KV heads")
    c.print(f"[green]wrote[/] {r.result.output}: {human_bytes(r.result.bytes_written)} in {r.result.seconds:.1f}s")
