"""Devices: --device resolution and its errors, --max-memory, and the GPU runs (marked ``gpu``)."""

from __future__ import annotations

import json

import pytest
import torch

from surgeon.devices import compute_dtype, parse_max_memory, resolve_device
from surgeon.errors import UsageError
from surgeon.testing import run_cli

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")


def test_auto_and_cpu_resolve():
    assert resolve_device("cpu").type == "cpu"
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type in (want, "mps")
    assert compute_dtype(torch.device("cpu")) == torch.float32
    assert compute_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(UsageError, match="unknown --device"):
        resolve_device("tpu")


@NO_CUDA
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_asking_for_missing_cuda_is_an_error(spec):
    with pytest.raises(UsageError, match="no CUDA device"):
        resolve_device(spec)


def test_max_memory_pairs():
    assert parse_max_memory("0=20GiB, 1=20GiB,cpu=64GiB") == {0: "20GiB", 1: "20GiB", "cpu": "64GiB"}
    assert parse_max_memory(None) is None
    with pytest.raises(UsageError, match="--max-memory"):
        parse_max_memory("lots")


@NO_CUDA
@pytest.mark.parametrize("argv", [
    ["analyze", "{model}", "--data", "builtin:sotu", "--device", "cuda", "-o", "{out}"],
    ["eval", "{model}", "--exit", "3", "--device", "cuda"],
    ["generate", "{model}", "--prompt", "hi", "--device", "cuda"],
    ["heal", "{model}", "--data", "builtin:sotu", "--device", "cuda", "-o", "{out}"],
    ["soft", "{model}", "--data", "builtin:sotu", "--device", "cuda", "-o", "{out}"],
    ["sort-width", "{model}", "--data", "builtin:sotu", "--device", "cuda", "-o", "{out}"],
    ["manifest", "{model}", "--eval-data", "builtin:sotu", "--device", "cuda", "-o", "{out}"],
], ids=lambda a: a[0])
def test_cli_device_cuda_without_cuda_is_one_line(argv, tiny_models, tmp_path):
    out = tmp_path / "out"
    r = run_cli(*[a.replace("{model}", str(tiny_models["llama"])).replace("{out}", str(out)) for a in argv])
    assert r.exit_code != 0
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --device cuda: this machine has no CUDA device"), r.output
    assert not out.exists()


def test_max_memory_needs_a_device_map(tiny_models):
    r = run_cli("eval", tiny_models["llama"], "--exit", "3", "--max-memory", "cpu=1GB")
    assert r.exit_code != 0 and "--device-map auto" in r.output


# ------------------------------------------------------------------ on a GPU machine
@pytest.mark.gpu
def test_gpu_eval_analyze_equal_cpu(tiny_models):
    model = tiny_models["llama"]
    got = {}
    for dev in ("cpu", "cuda"):
        r = run_cli("eval", model, "--exit", "2,4,6", "--data", "builtin:sotu", "--samples", 4, "--seq-len", 32,
                    "--dtype", "fp32", "--device", dev, "--json")
        assert r.exit_code == 0, r.output
        got[dev] = {q["exit"]: q["loss"] for q in json.loads(r.stdout)["exits"]}
    assert all(abs(got["cpu"][k] - got["cuda"][k]) < 1e-4 for k in got["cpu"])
    from surgeon.analyze import compute_analysis

    a = compute_analysis(model, "builtin:sotu", samples=8, seq_len=32, dtype="fp32", device="cpu")
    b = compute_analysis(model, "builtin:sotu", samples=8, seq_len=32, dtype="fp32", device="cuda")
    for n in a.angular_distance:
        assert max(abs(x - y) for x, y in zip(a.angular_distance[n], b.angular_distance[n])) < 1e-4


@pytest.mark.gpu
def test_gpu_speculative_equals_greedy(tiny_models):
    from surgeon.runtime import SortedModel

    sm = SortedModel.from_pretrained(tiny_models["qwen3"], dtype="fp32", device="cuda")
    ids = sm.encode("the river model layer prune of the")
    full = sm.generate(ids, 24, stop_at_eos=False)
    for k in (2, 4):
        assert sm.generate(ids, 24, draft_exit=k, stop_at_eos=False).tokens == full.tokens


@pytest.mark.gpu
def test_gpu_heal_nf4_and_soft_write_valid_outputs(tiny_models, tmp_path):
    r = run_cli("heal", tiny_models["llama"], "--data", "builtin:sotu", "--steps", 2, "--seq-len", 32,
                "--batch-size", 2, "--eval-samples", 2, "--device", "cuda", "-o", tmp_path / "h")
    assert r.exit_code == 0, r.output
    r = run_cli("soft", tiny_models["llama"], "--data", "builtin:sotu", "--exits", "3,6", "--steps", 2, "--seq-len",
                32, "--batch-size", 2, "--eval-samples", 2, "--method", "full", "--device", "cuda", "-o", tmp_path / "s")
    assert r.exit_code == 0, r.output
    for out in ("h", "s"):
        assert run_cli("manifest", "validate", tmp_path / out).exit_code == 0
