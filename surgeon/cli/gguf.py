"""surgeon import-gguf FILE.gguf -o DIR"""

from __future__ import annotations

from pathlib import Path

import click

from ._render import console, human_count


@click.command("import-gguf")
@click.argument("gguf_file", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output checkpoint folder.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="Float dtype of the dequantized weights (fp32 keeps GGUF values exactly).")
@click.option("--force", is_flag=True, help="Replace a non-empty output folder.")
def import_gguf_cmd(gguf_file: Path, output: Path, dtype: str, force: bool) -> None:
    """Dequantize GGUF_FILE (llama.cpp format) into a float safetensors checkpoint with tokenizer."""
    from ..gguf_import import import_gguf

    r = import_gguf(gguf_file, output, dtype=dtype, force=force)
    console().print(
        f"[green]imported[/] {r.architecture}, {r.num_layers} layers, {human_count(r.num_parameters)} parameters "
        f"({r.dtype}) -> {r.output}"
    )
