"""surgeon inspect MODEL [--json]"""

from __future__ import annotations

from pathlib import Path

import click

from ._model import model_argument
from ._render import console, human_bytes, human_count, print_json


@click.command("inspect")
@model_argument
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect_cmd(model: Path, as_json: bool) -> None:
    """Describe MODEL (a checkpoint folder) from its config and headers, loading no tensor."""
    from ..commands import inspect

    r = inspect.run(inspect.InspectOptions(model=model))
    if as_json:
        d = r.to_dict()
        d["num_layers"] = r.num_layers
        print_json(d)
        return
    render_inspect(r, console())


def render_inspect(r, c) -> None:
    """The inspect table of an InspectReport."""
    from rich.table import Table

    t = Table(title=f"{r.path}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    fam = r.family + (" (inferred)" if r.family_inferred else "")
    t.add_row("family", f"{fam} - {r.architecture}")
    t.add_row("layers", str(r.num_layers))
    t.add_row("hidden / FFN", f"{r.hidden_size} / {r.intermediate_size}")
    t.add_row("heads / KV heads / head dim", f"{r.num_attention_heads} / {r.num_key_value_heads} / {r.head_dim}")
    t.add_row("vocab", f"{r.vocab_size} (tied embeddings: {'yes' if r.tie_word_embeddings else 'no'})")
    t.add_row("parameters", f"{r.num_parameters:,} ({human_count(r.num_parameters)})")
    t.add_row("  by part", ", ".join(f"{k} {human_count(v)}" for k, v in r.parameters.items() if v))
    t.add_row("dtypes", ", ".join(f"{k} {human_count(v)}" for k, v in r.dtypes.items()))
    t.add_row("weights on disk", f"{human_bytes(r.weight_bytes)} in {len(r.shards)} file(s) (folder {human_bytes(r.folder_bytes)})")
    for k, v in r.per_layer.items():
        t.add_row(k, _compact(v))
    for k, v in r.layer_count_keys.items():
        t.add_row(k, str(v))
    if r.manifest:
        exits = r.manifest.get("exits") or []
        t.add_row("sorted manifest", ", ".join(
            f"{e['name']} ({e['num_layers']} layers" + (f", {human_count(e['parameters'])}" if "parameters" in e else "") + ")"
            for e in exits) or r.manifest.get("error", str(r.manifest)))
        view = r.manifest.get("view")
        if view:
            t.add_row("view of", f"exit {view['exit']} of {view['source']} (weights hard-linked: surgeon view)")
    else:
        t.add_row("sorted manifest", "none")
    c.print(t)


def _compact(values: list) -> str:
    """Run-length summary of a per-layer list: 'sliding_attention x2, full_attention, ...'."""
    out, prev, n = [], object(), 0
    for v in values + [object()]:
        if v == prev:
            n += 1
            continue
        if n:
            out.append(f"{prev} x{n}" if n > 1 else str(prev))
        prev, n = v, 1
    s = ", ".join(out)
    return s if len(s) < 200 else s[:197] + "..."
