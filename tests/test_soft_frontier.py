"""benchmarks/soft_frontier.py on the tiny fixture: every scheme trains, is measured (held-out loss per exit,
self-speculative acceptance, task accuracy) and lands in the results JSON relative to SFT's; with ``--work`` a
rerun reuses the trained outputs, and their measurements when made with the same options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "soft_frontier.py"


@pytest.fixture(scope="module")
def frontier(benchmark_script):
    return benchmark_script("soft_frontier")


def test_a_rerun_keeps_the_other_schemes_and_a_measured_time_per_step(frontier):
    def scheme(loss, sps, **options):
        return {"options": options, "exit_loss": {"2": loss, "4": loss / 2}, "seconds_per_step": sps}

    before = {"exits": [2, 4], "schemes": {"sft": scheme(9.0, 3.0), "kd": scheme(5.0, 4.0, kd="1")}}
    # kd resumed at its last checkpoint (no step trained: no time), sft trained again
    rerun = {"exits": [2, 4], "schemes": {"kd": scheme(5.0, None, kd="1"), "sft": scheme(8.0, 2.5)}}
    got = frontier.merge(before, rerun)["schemes"]
    assert got["kd"] == scheme(5.0, 4.0, kd="1") and got["sft"] == scheme(8.0, 2.5)
    # other options: a different scheme under the same name, whose time is not known
    other = {"exits": [2, 4], "schemes": {"kd": scheme(6.0, None, kd="2")}}
    assert frontier.merge(before, other)["schemes"]["kd"]["seconds_per_step"] is None
    assert frontier.merge(before, other)["schemes"]["sft"] == before["schemes"]["sft"]
    # other exits: nothing of the earlier run is comparable, nothing kept
    elsewhere = {"exits": [2, 3], "schemes": {"kd": scheme(6.0, None, kd="1")}}
    assert frontier.merge(before, elsewhere) == elsewhere and frontier.merge({}, rerun) == rerun


def test_a_run_at_another_learning_rate_is_a_run_of_its_own(frontier):
    assert frontier.run_key({"model": "/m/llama", "steps": 2, "lr": frontier.LR}) == "llama@2"
    assert frontier.run_key({"model": "/m/llama", "steps": 2, "lr": 1e-5}) == "llama@2,lr=1e-05"


def _alpaca(path: Path, n: int = 910) -> Path:
    from surgeon.testing import corpus

    lines = corpus(400)
    path.write_text(json.dumps([{"instruction": " ".join(lines[i % 400].split()[:3]), "input": "",
                                 "output": " ".join(lines[(i + k) % 400] for k in range(1, 4))} for i in range(n)]))
    return path


def _task_data(root: Path) -> Path:
    words = ["river", "stone", "light", "cloud", "seed", "metal", "sound", "ice"]
    (root / "ai2_arc" / "ARC-Easy").mkdir(parents=True)
    arc = [{"id": f"q{i}", "question": f"Which {words[i]} is the answer?", "answerKey": "ABCD"[i % 4],
            "choices": {"text": words[i:i + 4], "label": ["A", "B", "C", "D"]}} for i in range(4)]
    (root / "ai2_arc" / "ARC-Easy" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in arc))
    return root


def _run(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=900, cwd=cwd, env=env)


@pytest.mark.slow  # a dozen surgeon processes: about a minute on a quiet machine
def test_frontier_on_the_tiny_model(tiny_models, tmp_path):
    data = _alpaca(tmp_path / "alpaca.json")
    results, work = tmp_path / "frontier.json", tmp_path / "work"
    common = ["--model", tiny_models["llama"], "--data", data, "--steps", "2", "--exits", "2,4,6", "--draft-exit",
              "2", "--more-draft-exits", "4", "--prompts", "2", "--max-new-tokens", "4", "--seq-len", "160", "--eval-samples", "4",
              "--results", results, "--work", work, "--tasks", "arc_easy", "--task-exits", "4,6", "--limit", "3",
              "--task-data", _task_data(tmp_path / "tasks")]
    p = _run(*common, "--schemes", "sft,anchor95_kd", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-4000:]
    run = json.loads(results.read_text())["runs"]["llama@2"]
    assert set(run["schemes"]) == {"sft", "anchor95_kd"} and run["tasks"] == "arc_easy"
    sft, soft = run["schemes"]["sft"], run["schemes"]["anchor95_kd"]
    assert soft["options"] == {"--exit-weights": "anchor:0.95", "--exit-loss": "kd"}
    assert set(soft["exit_loss"]) == {"2", "4", "6"} and soft["speculative"]["identical_to_full_greedy"]
    by = soft["speculative_by_exit"]
    assert set(by) == {"2", "4"} and by["2"] == soft["speculative"] and by["4"]["identical_to_full_greedy"]
    assert soft["full_minus_sft"] == soft["exit_loss"]["6"] - sft["exit_loss"]["6"] and sft["full_minus_sft"] == 0
    acc = soft["task_accuracy"]
    assert set(acc) == {"4", "6"} and acc["6"]["tasks"]["arc_easy"]["chance"] == 0.25
    assert 0 <= acc["6"]["mean"] <= 1 and set(run["untrained"]["task_accuracy"]) == {"4", "6"}
    assert soft["seconds_per_step"] > 0 and (work / "anchor95_kd" / "config.json").is_file()
    assert results.with_suffix(".png").is_file()  # the figure beside the results it plots

    # a rerun with the same --work reuses the trained outputs; other measurement options measure them again
    # (the same losses), the same options read the measurements back
    trained = (work / "sft.train.json").read_text()
    p = _run(*common, "--schemes", "sft", "--prompts", "1", cwd=tmp_path)
    assert p.returncode == 0 and "sft: reusing" in p.stderr and "measure.json" not in p.stderr, p.stderr[-4000:]
    again = json.loads(results.read_text())["runs"]["llama@2"]
    assert again["schemes"]["sft"]["exit_loss"] == sft["exit_loss"] and "anchor95_kd" in again["schemes"]
    assert again["schemes"]["sft"]["speculative"]["prompts"] == 1 and again["untrained"]["speculative"]["prompts"] == 1
    assert (work / "sft.train.json").read_text() == trained
    p = _run(*common, "--schemes", "sft", "--prompts", "1", cwd=tmp_path)
    assert p.returncode == 0 and p.stderr.count("reusing") == 3, p.stderr[-4000:]  # the output, 2 measurements
    p = _run(*common, "--schemes", "sft", "--prompts", "1", "--more-draft-exits", "4,5", cwd=tmp_path)
    assert p.returncode == 0 and p.stderr.count("reusing") == 1, p.stderr[-4000:]  # exit 5's acceptance is new
    both = json.loads(results.read_text())["runs"]["llama@2"]["schemes"]["sft"]
    assert set(both["speculative_by_exit"]) == {"2", "4", "5"} and both["speculative"]["prompts"] == 1
    p = _run(*common[:common.index("--steps")], "--steps", "3", *common[common.index("--steps") + 2:],
             "--schemes", "sft", "--prompts", "1", cwd=tmp_path)  # another training command: refused, named
    assert p.returncode != 0 and "give another --work" in p.stderr and "--steps 2" in p.stderr, p.stderr[-2000:]

    table = _run("--results", results, "--table", cwd=tmp_path).stdout
    assert "| anchor95_kd |" in table and "acc @6" in table and "best acceptance (exit)" in table
