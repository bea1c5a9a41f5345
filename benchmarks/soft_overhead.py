"""Time per step and peak memory of Sorted Fine-Tuning (8 exits) vs plain SFT, same model and batch.

    SURGEON_CACHE=/tmp/scache python benchmarks/soft_overhead.py [--model DIR] [--batch 2] [--seq 256]
        [--steps 3] [--rounds 2] [--threads 1] [--device cpu|cuda] [--cases ...] [--name soft_overhead]

Each case runs in its own fresh process: load the model for full fine-tuning (fp32), build one
AdamW optimizer, run one warm-up step, then ``--steps`` timed steps (forward, backward, optimizer
step) on the same random batch. Cases:

- ``sft_hf``: the model's own loss (``model(labels=...)``, the trainer's default ``causal_lm_loss``);
- ``sft``: surgeon's sorted loss with the single exit L (``surgeon soft --exits L``);
- ``soft8``: the sorted loss over 8 exits, ``--loss sum`` (chunked, fused linear + cross-entropy);
- ``soft8_stochastic``: one sampled exit per step (SortedNet Alg. 2);
- ``soft8_naive``: 8 exits from full-vocabulary logits of ``output_hidden_states`` (no chunking).

Peak memory: on CPU the process's peak RSS (``ru_maxrss``) and its rise over the RSS after loading
(``step_peak_bytes``); on CUDA ``torch.cuda.max_memory_allocated``. Time: the fastest step of the
fastest round (rounds alternate the cases, to spread the machine's load evenly).

Targets (issue 7): SoFT memory overhead <= 10% over SFT; SoFT time overhead <= the extra LM-head
FLOPs of the 7 extra exits (as a fraction of SFT's training FLOPs) + 5%. Writes
benchmarks/results/soft_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import write_result  # noqa: E402

CASES = ("sft_hf", "sft", "soft8", "soft8_stochastic", "soft8_naive")


def eight_exits(L: int) -> list[int]:
    """8 exits evenly spaced up to L (Sorted LLaMA's 12..40 by 4 on 40 layers; 9..30 by 3 on 30)."""
    step = L / 10
    return sorted({max(1, round(L - k * step)) for k in range(8)})


def worker(args) -> dict:
    import resource

    import torch
    from transformers import AutoModelForCausalLM

    from surgeon.soft.losses import SortedLoss, naive_exit_losses

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(dev)
    model.config.use_cache = False
    model.train()
    L = model.config.num_hidden_layers
    exits = eight_exits(L)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, model.config.vocab_size, (args.batch, args.seq), generator=g).to(dev)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    case = args.worker
    if case == "sft_hf":
        def loss_fn(step):
            return model(**batch, use_cache=False).loss
    elif case == "soft8_naive":
        def loss_fn(step):
            return sum(naive_exit_losses(model, batch, exits)) / len(exits)
    else:
        fn = SortedLoss([L] if case == "sft" else exits, "stochastic" if case.endswith("stochastic") else "sum")

        def loss_fn(step):
            return fn(model, {**batch, "step": step, "micro": 0})[0]

    def rss_now() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    base_rss = rss_now()
    if dev.type == "cuda":
        sync()
        base_cuda = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(args.steps + 1):
        sync()
        t = time.perf_counter()
        loss = loss_fn(step)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if step:  # step 0 warms up (and allocates the optimizer state)
            times.append(time.perf_counter() - t)
    out = {"case": case, "exits": [L] if case in ("sft", "sft_hf") else exits, "step_s": min(times),
           "step_s_all": times, "loss": float(loss)}
    if dev.type == "cuda":
        out["peak_bytes"] = torch.cuda.max_memory_allocated()
        out["step_peak_bytes"] = out["peak_bytes"] - base_cuda
    else:
        out["peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out["step_peak_bytes"] = out["peak_bytes"] - base_rss
    return out


def flops(config, seq: int) -> dict:
    """Training FLOPs per token (6 x weights per token + attention scores), and the LM head's share."""
    D, L, V = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    heads = config["num_attention_heads"]
    hd = config.get("head_dim") or D // heads
    kv = config.get("num_key_value_heads", heads)
    F = config["intermediate_size"]
    per_layer = D * hd * (2 * heads + 2 * kv) + 3 * D * F
    attn = 2 * 2 * (seq / 2) * heads * hd  # QK^T and AV over a causal half-window, forward
    head = D * V
    sft = 3 * (2 * per_layer * L + attn * L + 2 * head)
    return {"sft_per_token": sft, "head_per_token": 3 * 2 * head}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint folder (default: SmolLM2-135M from $SURGEON_CACHE)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--name", default="soft_overhead", help="result file benchmarks/results/NAME.json")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.model is None:
        cache = Path(os.environ.get("SURGEON_CACHE", Path.home() / ".cache" / "surgeon"))
        args.model = str(cache / "models" / "smollm2-135m-instruct")
    if args.worker:
        print(json.dumps(worker(args)))
        return
    cases = args.cases.split(",")
    best: dict[str, dict] = {}
    for rnd in range(args.rounds):
        order = cases if rnd % 2 == 0 else cases[::-1]
        for case in order:
            cmd = [sys.executable, __file__, "--worker", case, "--model", args.model, "--batch", str(args.batch),
                   "--seq", str(args.seq), "--steps", str(args.steps), "--threads", str(args.threads),
                   "--device", args.device]
            p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
            if p.returncode != 0:
                raise SystemExit(f"{case} failed:\n{p.stderr[-3000:]}")
            r = json.loads(p.stdout.strip().splitlines()[-1])
            print(f"round {rnd} {case:18s} {r['step_s']:.3f} s/step  peak {r['peak_bytes'] / 1e6:.0f} MB  "
                  f"step peak {r['step_peak_bytes'] / 1e6:.0f} MB", flush=True)
            if case not in best or r["step_s"] < best[case]["step_s"]:
                best[case] = {**r, "peak_bytes": min(r["peak_bytes"], best.get(case, r)["peak_bytes"]),
                              "step_peak_bytes": min(r["step_peak_bytes"], best.get(case, r)["step_peak_bytes"])}
    config = json.loads((Path(args.model) / "config.json").read_text())
    f = flops(config, args.seq)
    n_exits = len(best.get("soft8", {}).get("exits", [])) or 8
    extra_head = (n_exits - 1) * f["head_per_token"] / f["sft_per_token"]
    ratios = {}
    for base in ("sft", "sft_hf"):
        if base not in best:
            continue
        for case in cases:
            if case.startswith("soft8") and case in best:
                ratios[f"{case}_vs_{base}"] = {
                    "time": best[case]["step_s"] / best[base]["step_s"],
                    "peak_memory": best[case]["peak_bytes"] / best[base]["peak_bytes"],
                    "step_memory": best[case]["step_peak_bytes"] / max(1, best[base]["step_peak_bytes"]),
                }
    targets = {"time_ratio_max": 1 + extra_head + 0.05, "memory_ratio_max": 1.10,
               "extra_head_flops_fraction": extra_head}
    for base in ("sft", "sft_hf"):
        key = f"soft8_vs_{base}"
        if key in ratios:
            targets[f"{key}_time_ok"] = ratios[key]["time"] <= targets["time_ratio_max"]
            targets[f"{key}_memory_ok"] = ratios[key]["peak_memory"] <= targets["memory_ratio_max"]
    path = write_result(args.name, {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model": args.model, "batch": args.batch, "seq": args.seq, "device": args.device, "threads": args.threads,
        "flops": f, "cases": best, "ratios": ratios, "targets": targets,
    })
    print(json.dumps({"ratios": ratios, "targets": targets}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
