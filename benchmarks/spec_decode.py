"""Decoding speed of the sorted runtime on CPU: full greedy vs self-speculative vs confidence early exit.

    .venv/bin/python benchmarks/spec_decode.py                       # SmolLM2-135M-Instruct (imported once)
    .venv/bin/python benchmarks/spec_decode.py --model sorted-smollm2/ --name spec_decode_soft

For each mode, every prompt is generated (greedy, chat template) and tokens/s = new tokens / wall time
summed over prompts, prefill included. Modes run interleaved, round after round, and each round's
ratios are taken against the full-greedy run of the same round; the JSON reports the per-round medians.
Speculative output is compared token for token with full greedy (it must be identical); early exit
reports its agreement with full greedy (it is an approximation) and the tokens emitted per exit.
transformers' own greedy ``generate`` and its ``assistant_early_exit`` (layer-skip assisted decoding,
which keeps a separate draft cache and recomputes all layers when verifying) are measured as references.
Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import write_result  # noqa: E402

PROMPTS = [
    "Explain why the sky is blue in two sentences.",
    "Write a short story about a river that flows uphill.",
    "List three tips for learning a new language.",
]
# the thesis' thresholds (app. D.0.1, exits 12..36 of LLaMA-13B's 40 layers) mapped onto 30 layers
EARLY_EXIT = "9:0.95,12:0.95,15:0.9,18:0.9,21:0.8,24:0.8,27:0.7"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="checkpoint folder (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--draft-exits", default="6,10,15,20,25,28", help="candidate draft exits K")
    ap.add_argument("--early-exit", default=EARLY_EXIT, help="K:THRESHOLD pairs (or manifest thresholds)")
    ap.add_argument("--prompts", type=int, default=2, help="how many of the built-in prompts")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--dtype", default=None, choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--no-hf", action="store_true", help="skip transformers' generate references")
    ap.add_argument("--name", default="spec_decode", help="results file name")
    args = ap.parse_args(argv)

    import torch

    from surgeon.runtime import SortedModel

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is None:
        from surgeon.demo import ensure_demo_model

        args.model = ensure_demo_model()
    sm = SortedModel.from_pretrained(args.model, dtype=args.dtype)
    prompts = [sm.encode(p, chat=bool(getattr(sm.tokenizer, "chat_template", None))) for p in PROMPTS[: args.prompts]]
    drafts = [int(k) for k in args.draft_exits.split(",") if k.strip()]
    modes: dict[str, dict] = {"full": {}}
    modes.update({f"speculative_k{k}": {"draft_exit": k} for k in drafts})
    modes["early_exit"] = {"early_exit": args.early_exit}
    if not args.no_hf:
        modes["hf_greedy"] = {"backend": "hf"}
        modes[f"hf_assistant_early_exit_k{max(drafts)}"] = {"backend": "hf", "draft_exit": max(drafts)}
    n = args.max_new_tokens
    for kw in modes.values():  # warm-up: first calls pay one-off costs
        sm.generate(prompts[0], 3, **kw)

    load_before = os.getloadavg()
    rounds: list[dict[str, dict]] = []
    for _ in range(args.rounds):
        rnd: dict[str, dict] = {}
        for name, kw in modes.items():
            results = [sm.generate(p, n, **kw) for p in prompts]
            toks = sum(r.new_tokens for r in results)
            sec = sum(r.seconds for r in results)
            rnd[name] = {"tokens": toks, "seconds": sec, "tokens_per_s": toks / sec,
                         "outputs": [r.tokens for r in results], "results": results}
            print(f"{name:32s} {toks / sec:7.2f} tokens/s", file=sys.stderr)
        rounds.append(rnd)
    load_after = os.getloadavg()

    out_modes: dict[str, dict] = {}
    for name, kw in modes.items():
        per = [r[name] for r in rounds]
        entry = {"options": {k: v for k, v in kw.items()},
                 "tokens_per_s": statistics.median(p["tokens_per_s"] for p in per),
                 "speedup_vs_full": statistics.median(p["tokens_per_s"] / r["full"]["tokens_per_s"]
                                                      for p, r in zip(per, rounds)),
                 "tokens": per[0]["tokens"],
                 "identical_to_full": all(p["outputs"] == r["full"]["outputs"] for p, r in zip(per, rounds))}
        res = per[0]["results"]
        drafted = sum(r.drafted for r in res)
        if drafted:
            steps = sum(r.verify_steps for r in res)
            entry.update(acceptance_rate=sum(r.accepted for r in res) / drafted, drafted=drafted,
                         tokens_per_verify_pass=sum(r.new_tokens for r in res) / max(steps, 1))
        if name == "early_exit":
            counts: dict[str, int] = {}
            for r in res:
                for d, c in r.exit_counts.items():
                    counts[str(d)] = counts.get(str(d), 0) + c
            full_out = rounds[0]["full"]["outputs"]
            same = sum(sum(a == b for a, b in zip(o, f)) for o, f in zip(per[0]["outputs"], full_out))
            entry.update(exit_counts=counts, catchup_positions=sum(r.catchup_positions for r in res),
                         token_agreement_with_full=same / max(1, sum(len(f) for f in full_out)),
                         mean_exit_depth=sum(int(d) * c for d, c in counts.items()) / max(1, sum(counts.values())))
        out_modes[name] = entry
    best = max((m for m in out_modes if m.startswith("speculative")), key=lambda m: out_modes[m]["speedup_vs_full"],
               default=None)
    path = write_result(args.name, {
        "model": str(args.model), "num_layers": sm.num_layers, "dtype": str(sm.model.dtype),
        "torch_threads": torch.get_num_threads(), "prompts": len(prompts), "max_new_tokens": n,
        "rounds": args.rounds, "load_average_before": load_before, "load_average_after": load_after,
        "modes": out_modes, "best_speculative": best,
        "command": " ".join(["benchmarks/spec_decode.py", *(argv if argv is not None else sys.argv[1:])]),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    print(path)


if __name__ == "__main__":
    main()
