"""surgeon generate MODEL --prompt TEXT [--exit K | --draft-exit K | --early-exit THRESHOLDS]"""

from __future__ import annotations

from pathlib import Path

import click

from ..commands.generate import GenerateOptions
from ..options import build, click_options
from ._model import model_argument
from ._render import console, print_json


@click.command("generate")
@model_argument
@click_options(GenerateOptions)
@click.option("--json", "as_json", is_flag=True, help="Print the tokens, text and statistics as JSON.")
def generate_cmd(model: Path, as_json: bool, **kwargs) -> None:
    """Generate text with MODEL, a sub-model of it (--exit), self-speculative decoding (--draft-exit)
    or confidence early exit (--early-exit). Exits share the loaded weights and one KV cache."""
    from ..commands import generate

    opts = build(GenerateOptions, model=model, **kwargs)
    rep = generate.run(opts)
    if as_json:
        print_json(rep.to_dict())
        return
    _render(rep)


def _render(rep) -> None:
    from rich.markup import escape
    from rich.table import Table

    c = console()
    r = rep.result
    c.print(f"[bold]{escape(rep.prompt)}[/]{escape(r.text or ' '.join(map(str, r.tokens)))}")
    t = Table(show_header=False, box=None, pad_edge=False)
    mode = r.mode + (f" (draft exit {r.draft_exit})" if r.draft_exit else "")
    if r.mode == "exit":
        mode += f" ({r.exit_layers} layers)"
    t.add_row("mode", mode)
    t.add_row("tokens", f"{r.new_tokens} new after {r.prompt_tokens} prompt tokens")
    t.add_row("speed", f"{r.tokens_per_s:.1f} tokens/s ({r.seconds:.2f}s, prefill {r.prefill_seconds:.2f}s)")
    if r.drafted:
        t.add_row("acceptance", f"{r.acceptance_rate:.1%} ({r.accepted}/{r.drafted} drafted tokens, "
                                f"{r.verify_steps} verify passes)")
    if r.exit_counts:
        counts = ", ".join(f"{d}: {n}" for d, n in sorted(r.exit_counts.items()))
        t.add_row("exits", f"{counts} (tokens per exit depth; mean depth {r.mean_exit_depth:.1f})")
    if rep.baseline is not None:
        same = "[green]identical output[/]" if rep.matches_baseline else "[yellow]different output[/]"
        t.add_row("vs full", f"{rep.speedup:.2f}x full greedy ({rep.baseline.tokens_per_s:.1f} tokens/s), {same}")
    c.print(t)
