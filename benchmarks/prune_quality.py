"""Held-out loss of SmolLM2-135M pruned by 6 layers: similarity-informed block vs the deepest block.

    python benchmarks/prune_quality.py [--n 6] [--samples 64] [--seq-len 256]

The paper's comparison before healing (Gromov et al., sec. 4.4, Fig. 5):
1. `surgeon analyze` on the *training* slice of builtin:sotu (the held-out passages are not seen),
   --samples x --seq-len tokens; l*(n) among the blocks that keep the final layer.
2. `surgeon prune --n N --analysis analysis.json` (similarity) and `--strategy deepest`
   (layers L-1-N..L-2), both written by the streaming executor.
3. Held-out loss (nats/token) of the unpruned model and of both pruned models on the eval slice
   of builtin:sotu (every 20th passage), packed into --seq-len blocks: the same data `surgeon eval
   --data builtin:sotu` uses.
Writes benchmarks/results/prune_quality.json.
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
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from surgeon.analyze import JSON_NAME, compute_analysis
    from surgeon.analyze.report import write_json
    from surgeon.commands.demo import ensure_demo_model
    from surgeon.commands.prune import PruneOptions
    from surgeon.commands.prune import run as prune
    from surgeon.data import training_examples
    from surgeon.eval import heldout_loss

    path = ensure_demo_model()
    tok = AutoTokenizer.from_pretrained(path)
    examples = list(training_examples("builtin:sotu", tok, seq_len=args.seq_len, role="eval"))

    def loss_of(folder: Path) -> dict:
        m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        r = heldout_loss(m, examples, batch_size=8)
        return {"layers": m.config.num_hidden_layers, **r.to_dict()}

    work = Path(tempfile.mkdtemp(prefix="surgeon-prune-quality-"))
    try:
        t = time.perf_counter()
        an = compute_analysis(path, "builtin:sotu", samples=args.samples, seq_len=args.seq_len, role="train")
        analysis_s = time.perf_counter() - t
        write_json(an, work / JSON_NAME)
        results = {"unpruned": loss_of(path)}
        blocks = {}
        for strategy in ("similarity", "deepest"):
            opts = PruneOptions(model=path, output=work / strategy, n=args.n, strategy=strategy,
                                analysis=work / JSON_NAME if strategy == "similarity" else None)
            r = prune(opts)
            blocks[strategy] = {"start": r.block.start, "layers": r.block.layers, "distance": r.block.distance}
            results[strategy] = loss_of(work / strategy)
            shutil.rmtree(work / strategy)
            print(strategy, blocks[strategy], results[strategy], flush=True)
        L = an.num_layers
        deep = an.angular_distance[args.n][L - 1 - args.n]
        res = {
            "model": "SmolLM2-135M-Instruct (fp32)", "n": args.n, "num_layers": L,
            "analysis": {"data": "builtin:sotu", "role": "train", "samples": an.samples, "seq_len": args.seq_len,
                         "seconds": analysis_s},
            "eval": {"data": "builtin:sotu", "role": "eval", "packed_seq_len": args.seq_len,
                     "sequences": len(examples), "tokens": results["unpruned"]["tokens"]},
            "blocks": blocks, "deepest_block_distance": deep, "loss": {k: v["loss"] for k, v in results.items()},
            "perplexity": {k: v["perplexity"] for k, v in results.items()}, "details": results,
        }
        res["similarity_better"] = res["loss"]["similarity"] < res["loss"]["deepest"]
        out = write_result("prune_quality", res)
        print(f"held-out loss: unpruned {res['loss']['unpruned']:.4f}, similarity {res['loss']['similarity']:.4f} "
              f"(block {blocks['similarity']['layers']}), deepest {res['loss']['deepest']:.4f} "
              f"(block {blocks['deepest']['layers']}); wrote {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
