"""Sharded training (``--fsdp``, PyTorch FSDP2) under ``torchrun --nproc_per_node 2`` on CPU (gloo).

Ground truth is the one-process run with the same effective batch: two processes x ``--batch-size
2`` read exactly the examples one process reads with ``--grad-accum 2`` (the data order is a pure
function of seed, step and rank), so the written weights must agree up to float summation order.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from surgeon.testing import corpus, load_model, load_weights, run_cli

WORKER = Path(__file__).with_name("fsdp_worker.py")
TOL = 1e-3  # the tolerance; measured differences are printed (pytest -s) and far below it
TRAIN = ["--steps", "4", "--seq-len", "32", "--batch-size", "2", "--warmup", "1", "--eval-samples", "4",
         "--lr", "1e-2"]


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("fsdp-data") / "corpus.txt"
    p.write_text("\n\n".join(corpus(400)), encoding="utf-8")
    return p


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_port", str(_port()),
           *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert p.returncode == 0, p.stderr[-4000:]
    return p


def weights(folder: Path, name: str | None = None) -> dict:
    return load_file(str(folder / name)) if name else load_weights(folder)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_fsdp_without_a_launcher_is_a_one_line_error(tiny_models, text, tmp_path):
    for cmd in ("heal", "soft"):
        r = run_cli(cmd, tiny_models["llama"], "--data", text, "-o", tmp_path / cmd, "--quant", "none", "--fsdp")
        assert r.exit_code != 0
        line = r.stderr.strip()
        assert "\n" not in line and line.startswith("error: --fsdp") and "torchrun --nproc_per_node" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cmd, extra, message", [
    ("heal", [], "NF4"),
    ("heal", ["--quant", "none", "--distill", "logits"], "teacher"),
])
def test_fsdp_refuses_what_it_cannot_shard(tiny_models, text, tmp_path, monkeypatch, cmd, extra, message):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as if launched: the options are checked before anything starts
    monkeypatch.setenv("RANK", "0")
    r = run_cli(cmd, tiny_models["llama"], "--data", text, "-o", tmp_path / "h", "--fsdp", *extra)
    assert r.exit_code != 0 and message in r.stderr and "\n" not in r.stderr.strip()


@pytest.mark.parametrize("family, extra, sharded_extra", [
    ("llama", [], []),  # the default scheme: anchor:0.95, the exits distil the deepest (kd)
    ("llama", ["--exit-loss", "ce", "--shared-lr-scale", "0.5"], []),  # the shared norm and head: a second AdamW group
    ("gemma3_text", ["--gradient-checkpointing"], []),
    ("gemma3_text", ["--exit-loss", "ce"], ["--fsdp-offload", "--save-every", "2"]),
])
def test_fsdp_full_soft_equals_one_process(tiny_models, text, tmp_path, family, extra, sharded_extra):
    """Full-weight SoFT (exits 2,4,6, the multi-exit loss read through the shared head) sharded over
    two processes writes the weights of the one-process run; Gemma 3 ties its head to the embedding
    and runs with activation checkpointing, or with --fsdp-offload (shards, gradients and AdamW state
    in CPU memory, the optimizer step on the CPU) and a sharded checkpoint written."""
    src = tiny_models[family]
    args = ["--data", text, "--method", "full", "--exits", "2,4,6", *TRAIN, *extra]
    torchrun("-m", "surgeon", "soft", src, "-o", tmp_path / "fsdp", *args, "--fsdp", *sharded_extra, "--json")
    assert run_cli("soft", src, "-o", tmp_path / "one", *args, "--grad-accum", "2").exit_code == 0
    a, b = weights(tmp_path / "one"), weights(tmp_path / "fsdp")
    diff, moved = max_diff(a, b), max_diff(a, weights(src))
    print(f"{family} {sharded_extra}: FSDP x2 vs 1 process max |diff| {diff:.2e} (training moved weights by {moved:.2e})")
    assert diff <= TOL and moved > 20 * diff
    op = json.loads((tmp_path / "fsdp" / "surgeon_provenance.json").read_text())["operations"][-1]
    assert op["soft"]["processes"] == 2 and op["options"]["fsdp_offload"] == ("--fsdp-offload" in sharded_extra)
    m = json.loads((tmp_path / "fsdp" / "sorted_manifest.json").read_text())
    assert [e["name"] for e in m["exits"]] == ["depth-2", "depth-4", "depth-6"]


def test_fsdp_offload_without_fsdp_is_a_one_line_error(tiny_models, text, tmp_path):
    r = run_cli("soft", tiny_models["llama"], "--data", text, "-o", tmp_path / "o", "--method", "full",
                "--fsdp-offload")
    line = r.stderr.strip()
    assert r.exit_code != 0 and "\n" not in line and line.startswith("error: --fsdp-offload") and "add --fsdp" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("offload", [True, False])
def test_fsdp_offload_policy_reaches_every_unit(tiny_models, offload):
    """Built as --fsdp builds it: with --fsdp-offload every FSDP unit (layers, embedding, head + norm,
    root) holds a CPUOffloadPolicy, else none does; the rotary buffers carry transformers' values."""
    p = torchrun(WORKER, "shard", json.dumps({"model": str(tiny_models["llama"]), "offload": offload}))
    expected = {n: b.double().sum().item() for n, b in load_model(tiny_models["llama"]).named_buffers()}
    report = json.loads(next(x for x in p.stdout.splitlines() if x.startswith("SHARD "))[len("SHARD "):])
    units = report["units"]
    assert report["world"] == 2 and len(units) == 6 + 3  # 6 layers, embedding, head + norm, root
    assert set(units.values()) == {"CPUOffloadPolicy" if offload else "OffloadPolicy"}
    assert report["param_devices"] == ["cpu"]
    assert expected and report["buffers"].keys() == expected.keys()
    assert all(on == "cpu" and total == pytest.approx(expected[n]) for n, (on, total) in report["buffers"].items())


def test_fsdp_lora_heal_equals_one_process(tiny_models, text, tmp_path):
    """LoRA (peft) on a float base, sharded: the merged output and the saved adapter equal the
    one-process run's (dropout off: its masks are drawn per process)."""
    src = tiny_models["llama"]
    args = ["--data", text, "--quant", "none", "--dropout", "0", "--save-adapter", *TRAIN]
    torchrun("-m", "surgeon", "heal", src, "-o", tmp_path / "fsdp", *args, "--fsdp")
    assert run_cli("heal", src, "-o", tmp_path / "one", *args, "--grad-accum", "2").exit_code == 0
    a, b = weights(tmp_path / "one"), weights(tmp_path / "fsdp")
    diff = max_diff(a, b)
    print(f"LoRA heal: FSDP x2 vs 1 process max |diff| {diff:.2e} (moved {max_diff(a, weights(src)):.2e})")
    assert diff <= TOL and max_diff(a, weights(src)) > 20 * diff
    name = "adapter/adapter_model.safetensors"
    assert max_diff(weights(tmp_path / "one", name), weights(tmp_path / "fsdp", name)) <= TOL
    one = json.loads((tmp_path / "one" / "surgeon_provenance.json").read_text())["operations"][-1]["heal"]
    two = json.loads((tmp_path / "fsdp" / "surgeon_provenance.json").read_text())["operations"][-1]["heal"]
    assert two["loss_after"] == pytest.approx(one["loss_after"], abs=1e-4)


def test_fsdp_resume_equals_uninterrupted_fsdp_run(tiny_models, text, tmp_path):
    """Stochastic exits and sampled FFN widths on sharded layers, tied embeddings: interrupted after
    step 3 with a sharded checkpoint at step 2 (torch.distributed.checkpoint, safetensors storage),
    then --resume, writes exactly the weights of the uninterrupted sharded run."""
    common = {"model": str(tiny_models["gemma3_text"]), "data": str(text), "exits": "2,4,6", "loss": "stochastic",
              "ffn_exits": "0.5", "method": "full", "steps": 5, "lr": 1e-2, "warmup": 1, "seq_len": 32,
              "batch_size": 2, "eval_samples": 0, "save_every": 2, "seed": 3, "fsdp": True}
    torchrun(WORKER, "soft", json.dumps({**common, "output": str(tmp_path / "ref")}))
    stopped = torchrun(WORKER, "soft", json.dumps({**common, "output": str(tmp_path / "res")}), 3, check=False)
    assert stopped.returncode != 0 and not (tmp_path / "res").exists()
    ck = tmp_path / "res.checkpoints"
    step = ck / (ck / "latest").read_text().strip()
    assert step.name == "step-00000002" and not list(step.rglob("*.metadata")) and not (step / "optimizer.pt").exists()
    assert len(list((step / "shards").glob("*.safetensors"))) == 2  # one shard per process
    torchrun(WORKER, "soft", json.dumps({**common, "output": str(tmp_path / "res"), "resume": True}))
    a, b = weights(tmp_path / "ref"), weights(tmp_path / "res")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert max_diff(a, weights(tiny_models["gemma3_text"])) > 1e-3  # it did train
    prov = json.loads((tmp_path / "res" / "surgeon_provenance.json").read_text())["operations"][-1]
    assert len(prov["ffn_exits"]) == 2  # the half and the full FFN width


def test_resuming_a_sharded_checkpoint_without_fsdp_is_refused(tiny_models, text, tmp_path):
    common = {"model": str(tiny_models["llama"]), "data": str(text), "exits": "3,6", "method": "full", "steps": 3,
              "lr": 1e-2, "warmup": 1, "seq_len": 32, "batch_size": 2, "eval_samples": 0, "save_every": 2,
              "fsdp": True, "checkpoint_dir": str(tmp_path / "ck")}
    torchrun(WORKER, "soft", json.dumps({**common, "output": str(tmp_path / "o")}), 3, check=False)
    assert (tmp_path / "ck" / "latest").is_file()
    r = run_cli("soft", tiny_models["llama"], "--data", text, "-o", tmp_path / "o2", "--exits", "3,6", "--method",
                "full", "--steps", "3", "--lr", "1e-2", "--warmup", "1", "--seq-len", "32", "--batch-size", "2",
                "--eval-samples", "0", "--save-every", "2", "--checkpoint-dir", tmp_path / "ck", "--resume")
    assert r.exit_code != 0 and "fsdp" in r.stderr.lower() and "\n" not in r.stderr.strip()
    assert not (tmp_path / "o2").exists()


@pytest.mark.gpu
def test_fsdp_on_gpus_trains_in_bf16_and_matches_one_gpu(tiny_models, text, tmp_path):
    """On a GPU machine: one process per GPU (two when there are two), bf16 compute with fp32
    gradient reduction; the output stays close to the one-GPU run (bf16 rounding, so a looser bound)."""
    n = min(2, torch.cuda.device_count())
    src = tiny_models["llama"]
    args = ["--data", text, "--method", "full", "--exits", "3,6", *TRAIN, "--device", "cuda"]
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(n), "--master_port", str(_port()),
           "-m", "surgeon", "soft", str(src), "-o", str(tmp_path / "fsdp"), *map(str, args), "--fsdp"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    accum = ["--grad-accum", str(n)] if n > 1 else []
    assert run_cli("soft", src, "-o", tmp_path / "one", *args, *accum).exit_code == 0
    a, b = weights(tmp_path / "one"), weights(tmp_path / "fsdp")
    diff, moved = max_diff(a, b), max_diff(a, weights(src))
    print(f"GPU FSDP x{n} vs 1 GPU: max |diff| {diff:.2e} (moved {moved:.2e})")
    assert diff < 0.25 * moved


@pytest.mark.gpu
def test_fsdp_offload_on_gpus_matches_fsdp_without_offload(tiny_models, text, tmp_path):
    """On a GPU machine: --fsdp-offload (gloo beside NCCL, CPU shards gathered on the GPU for the
    output) writes what the GPU-resident --fsdp run writes, up to bf16 rounding."""
    n = min(2, torch.cuda.device_count())
    src = tiny_models["llama"]
    args = ["--data", text, "--method", "full", "--exits", "3,6", *TRAIN, "--device", "cuda", "--fsdp"]
    for name, extra in (("gpu", []), ("offload", ["--fsdp-offload", "--save-every", "2"])):
        cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(n), "--master_port",
               str(_port()), "-m", "surgeon", "soft", str(src), "-o", str(tmp_path / name), *map(str, args), *extra]
        p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=600)
        assert p.returncode == 0, p.stderr[-4000:]
    a, b = weights(tmp_path / "gpu"), weights(tmp_path / "offload")
    diff, moved = max_diff(a, b), max_diff(a, weights(src))
    print(f"GPU FSDP x{n} offload vs on-GPU shards: max |diff| {diff:.2e} (moved {moved:.2e})")
    assert diff < 0.25 * moved
