"""Time of the similarity analysis vs one plain forward pass over the same tokens (SmolLM2-135M).

    python benchmarks/analyze_speed.py [--samples 32] [--seq-len 256] [--reps 2]

Loads SmolLM2-135M-Instruct (fp32) once, cuts --samples sequences of --seq-len tokens from the
shipped text (builtin:sotu), pads them into the same batches, then runs over all batches, --reps
times, interleaving the three per batch (rotating their order) so that the load of other processes
on a shared machine falls on all three alike:
- forward:  model(input_ids, attention_mask) -> logits (the plain causal-LM forward pass)
- base:     the base model alone (no LM head): the forward pass the analysis actually runs
- analysis: surgeon.analyze.similarity.layer_similarity (hooks on every decoder layer,
            angular-distance table, Block Influence)
Per pass: the summed wall time and process CPU time of each; the best pass of each is kept.
Target: analysis <= 1.15x forward.
Writes benchmarks/results/analyze_speed.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from surgeon.analyze.similarity import layer_similarity, make_batches
    from surgeon.commands.demo import ensure_demo_model
    from surgeon.data import calibration_samples

    path = ensure_demo_model()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    calib = calibration_samples("builtin:sotu", tok, samples=args.samples, seq_len=args.seq_len)
    batches = make_batches(calib.input_ids, args.batch_size)

    def forward(bs):
        with torch.inference_mode():
            for b in bs:
                model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                      use_cache=False)

    def base(bs):
        with torch.inference_mode():
            for b in bs:
                model.model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                            use_cache=False)

    def analysis(bs):
        layer_similarity(model, "model.layers", bs)

    methods = {"forward": forward, "analysis": analysis, "base": base}
    times: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    analysis(batches[:1])  # warm-up
    for rep in range(args.reps):
        wall_rep = dict.fromkeys(methods, 0.0)
        cpu_rep = dict.fromkeys(methods, 0.0)
        # Interleave per batch, rotating the order, so load from other processes hits all three alike.
        for i, b in enumerate(batches):
            names = list(methods)
            k = (i + rep) % len(names)
            for name in names[k:] + names[:k]:
                t, c = time.perf_counter(), time.process_time()
                methods[name]([b])
                wall_rep[name] += time.perf_counter() - t
                cpu_rep[name] += time.process_time() - c
        for name in methods:
            times[name].append(wall_rep[name])
            cpu[name].append(cpu_rep[name])
        print(" ".join(f"{n} wall {wall_rep[n]:.1f}s cpu {cpu_rep[n]:.1f}s" for n in methods), flush=True)
    best = {k: min(v) for k, v in times.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    res = {
        "model": "SmolLM2-135M-Instruct (fp32)", "data": "builtin:sotu", "samples": len(calib),
        "seq_len": args.seq_len, "tokens": calib.num_tokens, "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(), "reps": args.reps, "wall_s": times, "cpu_s": cpu, "best_wall_s": best,
        "best_cpu_s": best_cpu,
        "ratio_analysis_vs_forward": best["analysis"] / best["forward"],
        "ratio_analysis_vs_base_forward": best["analysis"] / best["base"],
        "cpu_ratio_analysis_vs_forward": best_cpu["analysis"] / best_cpu["forward"],
        "cpu_ratio_analysis_vs_base_forward": best_cpu["analysis"] / best_cpu["base"],
        "ratio_all_passes_analysis_vs_forward": sum(times["analysis"]) / sum(times["forward"]),
        "target_ratio_vs_forward": 1.15,
    }
    res["meets_target"] = res["ratio_analysis_vs_forward"] <= 1.15 and res["cpu_ratio_analysis_vs_forward"] <= 1.15
    out = write_result("analyze_speed", res)
    print(f"analysis / forward: wall {res['ratio_analysis_vs_forward']:.3f}, cpu {res['cpu_ratio_analysis_vs_forward']:.3f} "
          f"(vs the base model alone: wall {res['ratio_analysis_vs_base_forward']:.3f}, "
          f"cpu {res['cpu_ratio_analysis_vs_base_forward']:.3f}); wrote {out}")


if __name__ == "__main__":
    main()
