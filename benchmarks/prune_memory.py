"""Peak RSS and wall time of pruning a ~1.5 GB multi-shard checkpoint: surgeon vs the naive route vs cp.

    python benchmarks/prune_memory.py [--size-layers 24] [--keep-files]

Builds a Llama-shaped fp32 checkpoint (hidden 1024, FFN 4096, 24 layers, ~1.6 GB in 300 MB shards),
then, each in a fresh process with the page cache warmed the same way, ``--repeat`` rounds with the cases
alternating (best wall time, highest peak RSS of the rounds):
- surgeon:  `surgeon prune MODEL --start 12 --n 6 -o OUT` (streaming executor)
- naive:    transformers from_pretrained, delete layers in memory, save_pretrained
- cp:       `cp -r` of the same folder (the floor for moving the bytes)
Writes benchmarks/results/prune_memory.json. Targets: surgeon peak RSS < 700 MB; time <= naive.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import measure, write_result  # noqa: E402

NAIVE = r"""
import sys, torch
from transformers import AutoModelForCausalLM
from surgeon.surgery.inmemory import keep_layers_in_memory
src, out, start, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
m = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
L = m.config.num_hidden_layers
keep_layers_in_memory(m, [i for i in range(L) if not start <= i < start + n])
m.save_pretrained(out, max_shard_size="300MB")
"""


def warm(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--ffn", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep-files", action="store_true")
    args = ap.parse_args()

    from surgeon.testing import make_tiny_checkpoint

    work = Path(tempfile.mkdtemp(prefix="surgeon-bench-"))
    try:
        src = make_tiny_checkpoint(
            "llama", work / "src", num_layers=args.layers, hidden_size=args.hidden, intermediate_size=args.ffn,
            num_attention_heads=16, num_key_value_heads=8, head_dim=64, max_shard_size="300MB",
        )
        size = sum(p.stat().st_size for p in src.glob("*.safetensors"))
        start, n = args.layers // 2, args.layers // 4
        surgeon_bin = str(Path(sys.executable).with_name("surgeon"))
        cases = {
            "surgeon": [surgeon_bin, "prune", str(src), "--start", str(start), "--n", str(n), "-o", str(work / "out-surgeon"),
                        "--max-shard-size", "300MB"],
            "naive": [sys.executable, "-c", NAIVE, str(src), str(work / "out-naive"), str(start), str(n)],
            "cp": ["cp", "-r", str(src), str(work / "out-cp")],
        }
        runs: dict[str, list[dict]] = {name: [] for name in cases}
        for round_ in range(args.repeat):
            for name, cmd in cases.items():
                warm(src)
                subprocess.run(["sync"])
                res = measure(cmd)
                out_dir = work / f"out-{name}"
                res["output_bytes"] = sum(p.stat().st_size for p in out_dir.glob("*.safetensors"))
                runs[name].append(res)
                if not args.keep_files or round_ < args.repeat - 1:
                    shutil.rmtree(out_dir, ignore_errors=True)
        results = {name: {"wall_s": min(r["wall_s"] for r in rs), "wall_s_runs": [r["wall_s"] for r in rs],
                          "peak_rss_bytes": max(r["peak_rss_bytes"] for r in rs),
                          "output_bytes": rs[-1]["output_bytes"], "rc": 0}
                   for name, rs in runs.items()}
        s, nv, cp = results["surgeon"], results["naive"], results["cp"]
        data = {
            "repeat": args.repeat,
            "checkpoint": {"bytes": size, "layers": args.layers, "shards": len(list(src.glob("*.safetensors"))),
                           "hidden": args.hidden, "ffn": args.ffn, "dropped": [start, start + n - 1]},
            "results": results,
            "ratios": {
                "surgeon_rss_over_naive": s["peak_rss_bytes"] / nv["peak_rss_bytes"],
                "surgeon_time_over_naive": s["wall_s"] / nv["wall_s"],
                "surgeon_time_over_cp": s["wall_s"] / cp["wall_s"],
            },
            "targets": {"surgeon_peak_rss_below_bytes": 700 * 10**6, "surgeon_time_at_most_naive": True},
            "met": {
                "rss": s["peak_rss_bytes"] < 700 * 10**6,
                "time": s["wall_s"] <= nv["wall_s"],
            },
        }
        path = write_result("prune_memory", data)
        print(path.read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
