"""`surgeon sweep` against the same points done by hand: `surgeon prune` to a folder + `surgeon eval`.

    python benchmarks/sweep.py [--model DIR] [--tasks arc_easy,piqa] [--limit 20] [--n 0,6]

On SmolLM2-135M-Instruct (default) with a small configuration, each case in a fresh process
(`_util.measure`: wall time and peak RSS), one after the other:

- sweep:    `surgeon sweep MODEL --data builtin:sotu ... --tasks T --task-data DIR --limit N --n ... -o OUT`
            (both strategies: one analysis, every point's block skipped in memory);
- by hand:  `surgeon analyze` once, then per point `surgeon prune` to a folder (similarity: `--analysis`
            of that analysis; deepest: `--strategy deepest`; the reference is the model itself),
            `surgeon eval --exit K --data ... --no-kl` (the held-out loss) and
            `surgeon eval --exit K --tasks T --task-data DIR --limit N` (the accuracies).

Targets: the sweep's time within 1.1x of the by-hand evaluations alone (the eval processes, without
the analysis and the prunes; CPU seconds, which other load on a shared machine barely moves, and wall
seconds), it writes nothing but its report (the work folder and fresh
HF_HOME / HF_DATASETS_CACHE / TMPDIR hold nothing else afterwards), and its peak RSS about one model
(within 1.1x of one `surgeon eval --tasks` process on the unpruned model: no per-point copy). The points
of both routes must agree (same blocks; losses to 1e-4; accuracies exactly).
Writes benchmarks/results/sweep.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import measure, write_result  # noqa: E402

DATA = ["--data", "builtin:sotu", "--samples", "32", "--seq-len", "256"]
EVAL = ["--eval-samples", "32"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None, help="default: SmolLM2-135M-Instruct from the cache")
    ap.add_argument("--tasks", default="arc_easy,piqa")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--n", default="0,6")
    ap.add_argument("--batch-size", type=int, default=16, help="harness requests per batch (both routes)")
    args = ap.parse_args()

    from surgeon.commands.demo import ensure_demo_model
    from surgeon.eval.task_data import ensure_task_data
    from surgeon.io.checkpoint import Checkpoint

    model = args.model or ensure_demo_model()
    task_data = ensure_task_data()
    L = Checkpoint.open(model).num_layers
    surgeon = [str(Path(sys.executable).with_name("surgeon"))]
    tasks = ["--tasks", args.tasks, "--task-data", str(task_data), "--limit", str(args.limit)]
    work = Path(tempfile.mkdtemp(prefix="surgeon-bench-sweep-"))
    env_dirs = {k: work / k.lower() for k in ("HF_HOME", "HF_DATASETS_CACHE", "TMPDIR")}
    saved = {k: os.environ.get(k) for k in env_dirs}
    for k, d in env_dirs.items():
        d.mkdir()
        os.environ[k] = str(d)
    try:
        out = work / "sweep"
        t = time.perf_counter()
        sweep_run = measure([*surgeon, "sweep", str(model), *DATA, *EVAL, *tasks, "--task-batch-size",
                             str(args.batch_size), "--n", args.n, "-o", str(out)])
        sweep_run["wall_in_process_s"] = time.perf_counter() - t
        written = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
        report = {"sweep/analysis.json", "sweep/angular_distance.png", "sweep/sweep.json", "sweep/sweep.png"}
        rec = json.loads((out / "sweep.json").read_text())
        points = [rec["reference"]["unpruned"], *rec["points"]]
        in_process = rec["analysis"]["seconds"] + sum(p["seconds"] for p in points)

        # by hand: analyze once (its analysis.json also fixes the similarity blocks), then per point
        hand: dict[str, list] = {"analyze": [], "prune": [], "eval_loss": [], "eval_tasks": []}
        hand["analyze"].append(measure([*surgeon, "analyze", str(model), *DATA, "-o", str(work / "analysis")]))
        same = []
        for p in points:
            if p.get("same_as"):
                continue  # the sweep measured this block once; by hand it would be pruned and scored again
            folder = model
            if p["n"] > 0:
                folder = work / f"pruned-{p['strategy']}-{p['n']}"
                how = (["--analysis", str(work / "analysis" / "analysis.json")] if p["strategy"] == "similarity"
                       else ["--strategy", "deepest"])
                hand["prune"].append(measure([*surgeon, "prune", str(model), "--n", str(p["n"]), *how, "-o",
                                              str(folder)]))
            k = str(L - p["n"])
            loss_json, tasks_json = work / "loss.json", work / "tasks.json"
            hand["eval_loss"].append(_measure_json([*surgeon, "eval", str(folder), "--exit", k, "--data",
                                                    "builtin:sotu", "--samples", "32", "--seq-len", "256", "--no-kl",
                                                    "--json"], loss_json))
            hand["eval_tasks"].append(_measure_json([*surgeon, "eval", str(folder), "--exit", k, *tasks,
                                                     "--batch-size", str(args.batch_size), "--json"], tasks_json))
            loss = json.loads(loss_json.read_text())["exits"][0]["loss"]
            accs = next(iter(json.loads(tasks_json.read_text())["exits"].values()))
            same.append({"strategy": p["strategy"], "n": p["n"], "loss_sweep": p["loss"], "loss_by_hand": loss,
                         "loss_diff": abs(loss - p["loss"]),
                         "acc_equal": all(accs[t]["acc"] == p["tasks"][t]["acc"] and
                                          accs[t]["acc_norm"] == p["tasks"][t]["acc_norm"] for t in p["tasks"])})
            if folder != model:
                shutil.rmtree(folder)

        def total(key, what="wall_s"):
            return sum(r[what] for r in hand[key])

        evals = total("eval_loss") + total("eval_tasks")
        by_hand = evals + total("analyze") + total("prune")
        evals_cpu = total("eval_loss", "cpu_s") + total("eval_tasks", "cpu_s")
        by_hand_cpu = evals_cpu + total("analyze", "cpu_s") + total("prune", "cpu_s")
        eval_peak = max(r["peak_rss_bytes"] for r in hand["eval_tasks"])
        size = sum(p.stat().st_size for p in Path(model).glob("*.safetensors"))
        result = {
            "model": str(model), "num_layers": L, "checkpoint_bytes": size, "tasks": args.tasks, "limit": args.limit,
            "n": args.n, "points": len(points), "distinct_points": len(same),
            "sweep": {**sweep_run, "in_process_measuring_s": in_process,
                      "overhead_s": sweep_run["wall_s"] - in_process},
            "by_hand": hand, "by_hand_wall_s": by_hand, "by_hand_evals_wall_s": evals,
            "ratio_sweep_to_evals": sweep_run["wall_s"] / evals, "ratio_sweep_to_by_hand": sweep_run["wall_s"] / by_hand,
            "by_hand_cpu_s": by_hand_cpu, "by_hand_evals_cpu_s": evals_cpu,
            "ratio_sweep_to_evals_cpu": sweep_run["cpu_s"] / evals_cpu,
            "ratio_sweep_to_by_hand_cpu": sweep_run["cpu_s"] / by_hand_cpu, "target_ratio": 1.1,
            "peak_rss_sweep_bytes": sweep_run["peak_rss_bytes"], "peak_rss_eval_tasks_bytes": eval_peak,
            "ratio_peak_rss_to_eval": sweep_run["peak_rss_bytes"] / eval_peak,
            "files_written_by_sweep": written, "writes_only_its_report": set(written) == report,
            "agreement": same,
        }
        path = write_result("sweep", result)
        print(json.dumps({k: result[k] for k in ("ratio_sweep_to_evals_cpu", "ratio_sweep_to_evals",
                                                  "ratio_sweep_to_by_hand_cpu", "ratio_sweep_to_by_hand",
                                                  "ratio_peak_rss_to_eval", "writes_only_its_report")}, indent=2))
        print(f"wrote {path}")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(work, ignore_errors=True)


def _measure_json(cmd: list[str], dest: Path) -> dict:
    """``measure`` a command that prints JSON on stdout; the JSON goes to ``dest``."""
    return measure(["bash", "-c", 'exec "$@" > "$0"', str(dest), *cmd])


if __name__ == "__main__":
    main()
