"""Healing SmolLM2-135M after pruning 6 layers: held-out loss before/after and time per step.

    SURGEON_CACHE=/tmp/scache python benchmarks/heal_smollm2.py [--steps 100] [--variants nf4,none]

Prunes the real SmolLM2-135M-Instruct (30 layers) with ``--n 6`` at l*(6) from the similarity
analysis (32 x 128 tokens of the same text; ``--start`` overrides), then heals it on
``builtin:sotu`` (State of the Union prose; every 20th passage held out) for 100 steps of
4 x 256 tokens, rank 8, peak LR 3e-4, once per variant:
``nf4`` (QLoRA, the default), ``none`` (LoRA on float weights), ``none+logits`` /
``none+residual`` (plus the distillation losses against the unpruned model; same LR/steps).
Records for each: held-out loss of the unpruned model, the pruned model (before), the model
as trained, and the merged output (after); seconds per step and tokens/s. The ratio reported is
``improvement / 0.2`` (the acceptance bar is a drop of >= 0.2 nats) and step time vs ``none``.
Writes benchmarks/results/heal_smollm2.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-samples", type=int, default=48)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--start", type=int, default=None, help="default: l*(n) by surgeon's similarity analysis")
    ap.add_argument("--variants", default="nf4,none")
    ap.add_argument("--data", default="builtin:sotu")
    ap.add_argument("--name", default="heal_smollm2", help="result file name (benchmarks/results/NAME.json)")
    args = ap.parse_args()

    import torch

    from surgeon.commands.demo import ensure_demo_model
    from surgeon.commands.heal import HealOptions
    from surgeon.commands.heal import run as heal
    from surgeon.commands.prune import PruneOptions
    from surgeon.commands.prune import run as prune
    from surgeon.data import training_examples
    from surgeon.eval import heldout_loss

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = ensure_demo_model()
    work = Path(tempfile.mkdtemp(prefix="heal-bench-"))
    try:
        pruned = work / "pruned"
        pr = prune(PruneOptions(model=model, output=pruned, n=args.n, start=args.start, strategy="similarity",
                                data=args.data, samples=32, seq_len=128))
        # the unpruned model's held-out loss on the same blocks (context for the numbers)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model))
        eval_ex = list(training_examples(args.data, tok, seq_len=args.seq_len, role="eval", max_examples=args.eval_samples))
        full = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32)
        unpruned = heldout_loss(full, eval_ex).loss
        del full
        runs = {}
        for variant in args.variants.split(","):
            quant, _, distill = variant.partition("+")
            opts = HealOptions(model=pruned, output=work / f"healed-{variant}", data=args.data, quant=quant,
                               distill=distill or "none", steps=args.steps, batch_size=args.batch_size,
                               seq_len=args.seq_len, eval_samples=args.eval_samples, save_every=0)
            t0 = time.time()
            r = heal(opts, progress=lambda d, t, label, v=variant: print(f"\r{v}: {d}/{t} {label}    ", end="", file=sys.stderr))
            print(file=sys.stderr)
            runs[variant] = {
                "before": r.before.loss, "trained": r.trained.loss, "after": r.after.loss,
                "improvement_nats": r.improvement, "meets_0.2_nats": r.improvement >= 0.2,
                "improvement_over_bar": r.improvement / 0.2,
                "seconds_per_step": r.train.seconds_per_step, "tokens_per_s": r.train.tokens / r.train.seconds,
                "train_loss_first": r.train.losses[0], "train_loss_last": r.train.losses[-1],
                "eval_tokens": r.after.tokens, "total_seconds": time.time() - t0,
            }
            print(variant, runs[variant], file=sys.stderr)
        base = runs.get("none")
        if base:
            for rec in runs.values():
                rec["step_time_vs_none"] = rec["seconds_per_step"] / base["seconds_per_step"]
                rec["after_minus_none_after"] = rec["after"] - base["after"]
        path = write_result(args.name, {
            "command": " ".join(sys.argv), "model": "SmolLM2-135M-Instruct (30 layers, fp32)",
            "prune": {"n": args.n, "start": pr.block.start, "strategy": pr.block.strategy,
                      "angular_distance": pr.block.distance}, "data": args.data,
            "steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len, "rank": 8, "lr": 3e-4,
            "torch_threads": torch.get_num_threads(), "load_average_at_end": list(os.getloadavg()),
            "unpruned_loss": unpruned, "runs": runs,
        })
        print(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
