"""Peak RSS and time of ``surgeon.load`` for the smallest exit vs the full model of a multi-shard checkpoint.

The model (default: SmolLM2-135M-Instruct, float32, from $SURGEON_CACHE) is rewritten into ~50 MB
shards with prefix exits, then each case runs in a fresh process (``_util.measure``):

- ``imports``: python + torch + transformers + surgeon and the model class imported, nothing loaded (the floor)
- ``surgeon_load_smallest``: ``surgeon.load(path, exit=<smallest exit>)`` + one forward pass
- ``surgeon_load_full``: ``surgeon.load(path)`` + one forward pass
- ``transformers_full``: ``AutoModelForCausalLM.from_pretrained(path)`` + one forward pass (the usual route)

Writes benchmarks/results/load_memory.json. Run: ``.venv/bin/python benchmarks/load_memory.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import measure, write_result  # noqa: E402

# Every case ends with one 8-token forward pass, so every loaded weight is touched (transformers
# memory-maps the files; untouched pages would not count as resident).
FORWARD = "; import torch; m(torch.arange(1, 9)[None])"
CASES = {
    "imports": "import torch, transformers, surgeon.loading; cls = getattr(transformers, {arch!r}); "
               "torch.ones(2) @ torch.ones(2)",
    "surgeon_load_smallest": "import surgeon; m = surgeon.load({path!r}, exit={exit!r})" + FORWARD,
    "surgeon_load_full": "import surgeon; m = surgeon.load({path!r})" + FORWARD,
    "transformers_full": "from transformers import AutoModelForCausalLM; "
                         "m = AutoModelForCausalLM.from_pretrained({path!r})" + FORWARD,
}


def prepare(model: Path, folder: Path, depths: list[int], shard_bytes: int) -> Path:
    from surgeon.commands.output import write_output
    from surgeon.io.checkpoint import Checkpoint
    from surgeon.manifest.store import read_manifest
    from surgeon.surgery import plan_layers

    out = folder / "sharded"
    if read_manifest(out) if out.exists() else None:
        return out
    ckpt = Checkpoint.open(model)
    exits = [{"name": f"depth-{k}", "layers": list(range(k))} for k in depths if k < ckpt.num_layers]
    # size-capped shards as when the README's figures were measured (not exit-aligned: align=False)
    write_output(plan_layers(ckpt, range(ckpt.num_layers), "benchmark"), out, force=True, max_shard_bytes=shard_bytes,
                 exits=exits, verify=False, align=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="checkpoint folder (default: SmolLM2-135M)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "surgeon-bench-load")
    ap.add_argument("--depths", default="2,8,16")
    ap.add_argument("--shard-mb", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.model is None:
        from surgeon.commands.demo import ensure_demo_model

        args.model = ensure_demo_model()
    path = prepare(args.model, args.work, [int(x) for x in args.depths.split(",")], args.shard_mb * 10**6)

    from surgeon.io.checkpoint import Checkpoint
    from surgeon.manifest.store import read_manifest

    manifest, _ = read_manifest(path)
    smallest = manifest["exits"][0]
    results = {}
    for name, code in CASES.items():
        runs = [measure([sys.executable, "-c", code.format(path=str(path), exit=smallest["name"], arch=manifest["base"]["architecture"])])
                for _ in range(args.repeats)]
        results[name] = {"peak_rss_bytes": min(r["peak_rss_bytes"] for r in runs),
                         "wall_s": min(r["wall_s"] for r in runs)}
        print(f"{name:24s} peak RSS {results[name]['peak_rss_bytes'] / 2**20:8.1f} MiB  "
              f"wall {results[name]['wall_s']:.2f}s", flush=True)
    floor = results["imports"]["peak_rss_bytes"]
    above = {k: v["peak_rss_bytes"] - floor for k, v in results.items() if k != "imports"}
    ckpt = Checkpoint.open(path)
    data = {
        "model": str(args.model), "checkpoint": {"files": len(ckpt.files), "bytes": ckpt.weight_bytes,
                                                  "num_layers": ckpt.num_layers},
        "smallest_exit": {"name": smallest["name"], "layers": len(smallest["layers"]),
                          "parameters": smallest["cost"]["parameters"]["total"]},
        "full_parameters": manifest["exits"][-1]["cost"]["parameters"]["total"],
        "weight_bytes": {"smallest": smallest["cost"]["parameters"]["total"] * 4,  # float32 checkpoint
                         "full": manifest["exits"][-1]["cost"]["parameters"]["total"] * 4},
        "cases": results,
        "rss_above_imports_bytes": above,
        "ratios": {
            "smallest_vs_full_rss_above_imports": above["surgeon_load_smallest"] / above["surgeon_load_full"],
            "smallest_vs_full_peak_rss": results["surgeon_load_smallest"]["peak_rss_bytes"]
            / results["surgeon_load_full"]["peak_rss_bytes"],
            "surgeon_full_vs_transformers_full_peak_rss": results["surgeon_load_full"]["peak_rss_bytes"]
            / results["transformers_full"]["peak_rss_bytes"],
            "smallest_vs_full_wall": results["surgeon_load_smallest"]["wall_s"] / results["surgeon_load_full"]["wall_s"],
        },
        "repeats": args.repeats,
    }
    print(write_result("load_memory", data))
    for k, v in data["ratios"].items():
        print(f"{k}: {v:.3f}")


if __name__ == "__main__":
    main()
