"""surgeon demo: the eight steps of the mission on the real SmolLM2, each step's result checked."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli


def test_demo_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    from surgeon.commands.demo import DemoOptions, run
    from surgeon.errors import UsageError

    with pytest.raises(UsageError, match="not written by surgeon demo"):
        run(DemoOptions(out=tmp_path, quick=True))
    assert (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_full_demo_every_step_holds(smollm2, tmp_path):
    out = tmp_path / "demo"
    r = run_cli("demo", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    steps = {s["step"]: s for s in res["steps"]}
    assert list(steps) == ["inspect", "analyze", "prune", "heal", "soft", "manifest", "budget", "speculative"]
    assert steps["inspect"]["figures"]["layers"] == 30
    assert (out / "analysis" / "angular_distance.png").is_file()
    assert steps["prune"]["figures"]["layers"] == 24
    heal = steps["heal"]["figures"]
    assert heal["healed"] < heal["pruned"] and heal["unpruned"] < heal["pruned"]
    soft = steps["soft"]["figures"]
    for k, before in soft["before"].items():
        if int(k) < 30:
            assert soft["after"][k] < before, k  # every shallower exit's loss fell
    assert steps["manifest"]["figures"]["valid"] and len(steps["manifest"]["figures"]["exits"]) == 3
    assert steps["budget"]["figures"]["layers"] == 20 and steps["budget"]["figures"]["text"].strip()
    spec = steps["speculative"]["figures"]
    assert spec["identical"] is True and 0 < spec["acceptance_rate"] <= 1
    assert res["outputs"] == str(out) and (out / ".surgeon-demo").is_file()
