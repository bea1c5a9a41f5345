"""benchmarks/gpu_check.py, the one-call GPU check (issue 32), on CPU: ``--device cpu --quick`` runs every
step's code path on the tiny fixture, so the script works the first time a task draws a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
STEPS = ("build", "plain_forward", "analyze_memory", "analyze_offload", "analyze_device_map", "prune_similarity",
         "eval_exits", "heal_nf4", "soft_full", "manifest", "generate_draft", "generate_hf_assisted",
         "generate_hf_full", "soft_fsdp", "soft_fsdp_offload")


@pytest.fixture(scope="module")
def gpu_check(benchmark_script):
    return benchmark_script("gpu_check")


def test_quick_run_on_cpu_runs_every_step_and_writes_every_figure(tmp_path):
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-5000:] + p.stderr[-3000:]
    rep = json.loads((out / "gpu_check.json").read_text())
    assert rep["finished"] and rep["failed"] is None and rep["exit_code"] == 0
    assert rep["env"]["torch"] and rep["env"]["bitsandbytes"] and rep["env"]["pip_needed"] == []
    assert rep["steps"]["pytest_gpu"]["status"] == "ok"  # the gpu-marked tests, skipped without CUDA
    for s in STEPS:
        assert rep["steps"][f"tiny/{s}"]["status"] == "ok", s
    cmds = {s: rep["steps"][f"tiny/{s}"]["command"] for s in STEPS}
    assert cmds["soft_fsdp"].startswith("torchrun --standalone --nproc_per_node 1 -m surgeon soft")
    assert "--fsdp-offload" in cmds["soft_fsdp_offload"] and "--quant nf4" in cmds["heal_nf4"]
    assert "--backend hf --draft-exit 3" in cmds["generate_hf_assisted"]

    fig = rep["summary"]["tiny"]
    assert fig["plain_forward"]["tokens_per_s"] > 0
    for s in ("analyze_memory", "analyze_offload", "analyze_device_map", "eval_exits", "prune_similarity", "manifest"):
        assert fig[s]["x_plain_forward_wall"] > 0, s
    g = fig["generate"]
    assert g["identical_to_full_greedy"] is True and g["speculative_x_full_greedy"] > 0
    assert g["peer_assistant_early_exit_x_hf_greedy"] > 0 and g["surgeon_greedy_time_x_hf_greedy"] > 0
    heal = fig["heal_nf4"]
    assert heal["formula"]["peak"] > 0 and heal["train"]["steps"] == 2 and heal["loss_after"] is not None
    for s in ("soft_full", "soft_fsdp", "soft_fsdp_offload"):
        assert fig[s]["train"]["steps"] == 2 and fig[s]["train"]["x_plain_forward_tokens_per_s"] > 0, s
    assert len(rep["checks"]) == 3 and all(c["ok"] for c in rep["checks"]), rep["checks"]
    assert {t["name"].split("/")[1].split(" ")[0] for t in rep["targets"]} >= {"analyze_memory", "eval_exits"}


def test_first_failure_stops_and_is_named_with_its_stderr(gpu_check, tmp_path):
    r = gpu_check.Runner(tmp_path / "out", tmp_path, device="cpu", quick=True, keep_going=False, budget_s=60)
    assert r.run("ok", [sys.executable, "-c", "print('{\"a\": 1}')"])["result"] == {"a": 1}
    with pytest.raises(SystemExit) as e:
        r.run("boom", [sys.executable, "-c", "import sys; sys.stderr.write('it broke here'); sys.exit(3)"])
    assert e.value.code == 1
    rep = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert rep["failed"]["step"] == "boom" and "it broke here" in rep["failed"]["stderr_tail"]
    assert rep["steps"]["ok"]["status"] == "ok" and rep["exit_code"] == 1 and not rep["finished"]


def test_keep_going_skips_what_needs_a_failed_step(gpu_check, tmp_path):
    r = gpu_check.Runner(tmp_path / "out", tmp_path, device="cpu", quick=True, keep_going=True, budget_s=60)
    assert r.run("boom", [sys.executable, "-c", "raise SystemExit(2)"]) is None
    assert r.run("after", [sys.executable, "-c", "print(1)"], needs=("boom",)) is None
    assert r.run("other", [sys.executable, "-c", "print(1)"]) is not None
    assert r.report["steps"]["after"] == {"command": r.report["steps"]["after"]["command"], "status": "skipped",
                                         "reason": "needs boom"}
    with pytest.raises(SystemExit) as e:
        r.finish()
    assert e.value.code == 1


def test_heal_formula_reproduces_the_readme_table(gpu_check):
    f = gpu_check.heal_nf4_peak_bytes
    llama70 = f(layers=80, hidden=8192, ffn=28672, vocab=32000, heads=64, kv_heads=8, tokens=2048)
    llama8 = f(layers=32, hidden=4096, ffn=14336, vocab=128256, heads=32, kv_heads=8, tokens=2048)
    assert abs(llama70["nf4_base"] / 1e9 - 38.5) < 0.05 and abs(llama70["peak"] / 1e9 - 44) < 0.5
    assert abs(llama8["emb_head_bf16"] / 1e9 - 2.1) < 0.05 and abs(llama8["peak"] / 1e9 - 9.4) < 0.1


def test_stand_in_builder_writes_a_loadable_gqa_tied_model(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from scale_memory import build_llama
    finally:
        sys.path.remove(str(SCRIPT.parent))
    from surgeon.io.checkpoint import Checkpoint
    from surgeon.testing import load_model

    path = build_llama(tmp_path / "m", layers=2, hidden=32, ffn=64, heads=4, kv_heads=2, vocab=512, tied=True,
                       dtype="float32")
    ck = Checkpoint.open(path)
    assert "lm_head.weight" not in ck.tensors and ck.config["num_key_value_heads"] == 2
    assert tuple(ck.tensors["model.layers.0.self_attn.k_proj.weight"].shape) == (16, 32)
    model = load_model(path)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
