"""surgeon view MODEL --exit NAME -o DIR"""

from __future__ import annotations

from pathlib import Path

import click

from ..commands.view import ViewOptions
from ..options import build, click_options
from ._model import model_argument
from ._render import console, human_bytes, print_json


@click.command("view")
@model_argument
@click_options(ViewOptions)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def view_cmd(model: Path, as_json: bool, **kwargs) -> None:
    """Make DIR a plain Hugging Face checkpoint of one depth exit of MODEL.

    With exit-aligned shards (what surgeon writes for outputs with exits) the weights are hard links
    to MODEL's shard files: the view costs no disk, and any runtime (vLLM, MLX-LM, transformers,
    llama.cpp's converter) loads it as an ordinary model. Otherwise (unaligned source, another file
    system, an exit with widths) it is a streamed copy of the exit's tensors, and says why.
    """
    from ..commands import view

    opts = build(ViewOptions, model=model, **kwargs)
    r = view.run(opts)
    if as_json:
        print_json(r.to_dict())
        return
    c = console()
    if r.mode == "link":
        c.print(f"[green]view[/] {r.output}: exit {r.exit} ({r.layers} layers), {len(r.linked)} weight files "
                f"hard-linked from {r.source}; {human_bytes(r.bytes_added)} of new files")
    else:
        c.print(f"[yellow]copy[/] {r.output}: exit {r.exit} ({r.layers} layers), {human_bytes(r.bytes_added)} "
                f"written: {r.reason}")
