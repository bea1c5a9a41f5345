"""surgeon analyze MODEL --data c4 [--samples N --seq-len T] [--offload layer] [-o analysis/]"""

from __future__ import annotations

from pathlib import Path

import click

from ..commands.analyze import AnalyzeOptions
from ..options import build, click_options
from ._model import model_argument
from ._render import console, print_json, progress_bar


@click.command("analyze")
@model_argument
@click_options(AnalyzeOptions)
@click.option("--json", "as_json", is_flag=True, help="Print analysis.json to stdout instead of the table.")
def analyze_cmd(model: Path, as_json: bool, **kwargs) -> None:
    """Measure how much each block of layers changes the residual stream.

    For every block size n and first layer l: the angular distance between the last token's
    residual stream entering layer l and entering layer l+n (x_L is the last layer's output
    before the final norm), averaged over the calibration samples; the best block l*(n) (over
    all blocks, and over blocks that keep the final layer); and ShortGPT's Block Influence per
    layer. Writes analysis.json and angular_distance.png to -o/--output.
    """
    from ..commands import analyze

    opts = build(AnalyzeOptions, model=model, **kwargs)
    unit_label = "layers" if opts.offload == "layer" else "samples"
    with progress_bar(f"analyzing ({unit_label})", unit="count") as progress:
        r = analyze.run(opts, progress=progress)
    if as_json:
        print_json(r.to_dict())
        return
    render_analysis(r)


def render_analysis(r, c=None) -> None:
    """The l*(n) table, Block Influence and the files written."""
    from rich.table import Table

    c = c or console()
    L = r.num_layers
    t = Table("n", "l*(n) keeping final", "drop layers", "distance", "l*(n) any block", "distance",
              title=f"best blocks ({L} layers, {r.samples} samples x {r.seq_len} tokens, {r.data})",
              title_justify="left")
    for n in range(1, L):
        k = r.best_keep_last.get(n)
        b = r.best[n]
        t.add_row(str(n), str(k.start) if k else "-", f"{k.start}..{k.start + n - 1}" if k else "-",
                  f"{k.distance:.4f}" if k else "-", str(b.start) + (" (incl. final)" if b.start + n == L else ""),
                  f"{b.distance:.4f}")
    c.print(t)
    bi = r.block_influence
    low = sorted(range(L), key=lambda i: bi[i])[:5]
    c.print("block influence (1 - cos, all tokens): lowest at layers " + ", ".join(f"{i} ({bi[i]:.4f})" for i in low))
    c.print(f"[green]wrote[/] {', '.join(r.files)} in {r.seconds:.1f}s")
