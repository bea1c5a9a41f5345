"""surgeon fix-gguf FILE.gguf --model DIR -o OUT.gguf"""

from __future__ import annotations

from pathlib import Path

import click

from ..commands.fix_gguf import FixGgufOptions
from ..options import build, click_options
from ._render import console, print_json


@click.command("fix-gguf")
@click.argument("gguf", type=click.Path(path_type=Path))
@click_options(FixGgufOptions)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def fix_gguf_cmd(gguf: Path, as_json: bool, **kwargs) -> None:
    """Add to a converted GGUF the per-layer metadata llama.cpp's converter leaves out.

    Gemma 3: llama.cpp assumes every 6th layer is global unless the file lists the pattern per
    layer; after pruning (or for a depth exit) that guess is wrong, and attention silently changes
    once the context exceeds the sliding window. This writes a copy with the pattern taken from
    MODEL's config.json (layer_types). Other families: says that nothing is missing.
    """
    from ..commands import fix_gguf

    r = fix_gguf.run(build(FixGgufOptions, gguf=gguf, **kwargs))
    if as_json:
        print_json(r.__dict__)
        return
    c = console()
    c.print(f"[green]wrote[/] {r.output}: {r.reason}" if r.output else f"{r.source}: {r.reason}; nothing written")
