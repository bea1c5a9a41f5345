"""surgeon import-gguf FILE.gguf -o DIR"""

from __future__ import annotations

from pathlib import Path

import click

from ..commands.import_gguf import ImportOptions
from ..options import build, click_options
from ._render import console, human_count


@click.command("import-gguf")
@click.argument("gguf_file", type=click.Path(path_type=Path))
@click_options(ImportOptions)
def import_gguf_cmd(gguf_file: Path, **kwargs) -> None:
    """Dequantize GGUF_FILE (llama.cpp format) into a float safetensors checkpoint with tokenizer."""
    from ..commands import import_gguf

    r = import_gguf.run(build(ImportOptions, gguf_file=gguf_file, **kwargs))
    console().print(
        f"[green]imported[/] {r.architecture}, {r.num_layers} layers, {human_count(r.num_parameters)} parameters "
        f"({r.dtype}) -> {r.output}"
    )
