"""Wall time of `surgeon prune` against `cp` of the same files: the rewrite reads its source once and
never reads its output back (each file hashed as it is written).

    python benchmarks/prune_time.py [--repeats 3]

Builds a random bf16 Llama (hidden 1536, FFN 4096, 20 layers, vocabulary 32000: 0.66B parameters,
1.3 GB in two shards), then, alternating, `surgeon prune MODEL --start 4 --n 8 -o OUT` and
`cp -r MODEL OUT` (and `cp` + `sync`, the durability surgeon's fsync gives) with the page cache warmed the same way before each run; best of ``--repeats``
each. Writes benchmarks/results/prune_time.json. Target (issue 16): prune <= 1.6x cp.
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
from prune_memory import warm  # noqa: E402
from scale_memory import build_llama  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="surgeon-prune-time-"))
    try:
        src = build_llama(work / "src", layers=20, hidden=1536, ffn=4096, heads=12, shard_bytes=700_000_000)
        size = sum(p.stat().st_size for p in src.glob("*.safetensors"))
        surgeon = str(Path(sys.executable).with_name("surgeon"))
        cases = {
            "surgeon": [surgeon, "prune", str(src), "--start", "4", "--n", "8", "-o", str(work / "out"),
                        "--max-shard-size", "700MB"],
            "cp": ["cp", "-r", str(src), str(work / "out")],
            # surgeon fsyncs every file before the atomic rename; the same durability for cp:
            "cp_sync": ["sh", "-c", f"cp -r '{src}' '{work / 'out'}' && sync -f '{work / 'out'}'"],
        }
        runs: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.repeats):
            for name, cmd in cases.items():
                warm(src)
                subprocess.run(["sync"])
                runs[name].append(measure(cmd)["wall_s"])
                shutil.rmtree(work / "out", ignore_errors=True)
                subprocess.run(["sync"])
        best = {k: min(v) for k, v in runs.items()}
        ratio = best["surgeon"] / best["cp"]
        ratio_sync = best["surgeon"] / best["cp_sync"]
        path = write_result("prune_time", {
            "checkpoint": {"bytes": size, "shards": len(list(src.glob("*.safetensors"))), "dtype": "bf16",
                           "layers": 20, "dropped": [4, 11]},
            "runs_s": runs, "best_s": best, "surgeon_time_over_cp": round(ratio, 3),
            "surgeon_time_over_cp_sync": round(ratio_sync, 3),
            "target_at_most": 1.6, "met": ratio <= 1.6,
        })
        print(path.read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
