"""Depth surgery: a rewritten checkpoint equals the same surgery done in memory, to the logit."""

import json
import os

import pytest
import torch

from surgeon.io.checkpoint import Checkpoint
from surgeon.surgery import execute, plan_extract_depth, plan_prune
from surgeon.surgery.inmemory import keep_layers_in_memory
from surgeon.testing import load_model, logits, run_cli, tree_digest

IDS = torch.tensor([[1, 17, 42, 99, 7, 250, 3, 64, 12, 5, 301, 77, 8, 19, 200, 33, 45, 11, 90, 120]])


def _logits(model, ids=IDS):
    return logits(model, ids)


@pytest.mark.parametrize("start,n", [(1, 2), (3, 2), (0, 1)])
def test_prune_equals_in_memory(family_model, tmp_path, start, n):
    family, path = family_model
    before = tree_digest(path)
    plan = plan_prune(Checkpoint.open(path), start, n)
    execute(plan, tmp_path / "out")
    assert tree_digest(path) == before, "the source must never change"

    out = load_model(tmp_path / "out")
    ref = keep_layers_in_memory(load_model(path), list(plan.kept_layers))
    assert out.config.num_hidden_layers == 6 - n
    for key in ("layer_types", "max_window_layers"):
        assert getattr(out.config, key, None) == getattr(ref.config, key, None)
    diff = (_logits(out) - _logits(ref)).abs().max().item()
    assert diff <= 1e-5, f"{family}: max abs diff {diff}"

    # generation with a KV cache works and matches the in-memory model
    g_out = out.generate(IDS[:, :8], max_new_tokens=8, do_sample=False, use_cache=True)
    g_ref = ref.generate(IDS[:, :8], max_new_tokens=8, do_sample=False, use_cache=True)
    assert torch.equal(g_out, g_ref)
    # the cached and uncached paths agree (layer_idx renumbered correctly)
    g_nocache = out.generate(IDS[:, :8], max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(g_out, g_nocache)


def test_extract_depth_equals_in_memory(family_model, tmp_path):
    family, path = family_model
    plan = plan_extract_depth(Checkpoint.open(path), 4)
    execute(plan, tmp_path / "out")
    out = load_model(tmp_path / "out")
    ref = keep_layers_in_memory(load_model(path), [0, 1, 2, 3])
    assert (_logits(out) - _logits(ref)).abs().max().item() <= 1e-5


def test_qwen2_max_window_layers_follows(tiny_models, tmp_path):
    path = tiny_models["qwen2"]
    src = json.loads((path / "config.json").read_text())
    assert src["max_window_layers"] == 3
    execute(plan_prune(Checkpoint.open(path), 1, 2), tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["max_window_layers"] == 1  # kept 0, 3, 4, 5: one kept layer below the old threshold
    assert cfg["layer_types"] == [src["layer_types"][i] for i in (0, 3, 4, 5)]


def test_gemma3_layer_types_sliced(tiny_models, tmp_path):
    path = tiny_models["gemma3_text"]
    execute(plan_prune(Checkpoint.open(path), 2, 2), tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["layer_types"] == ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"]


def test_sharded_output_and_side_files(tiny_sharded, tmp_path):
    plan = plan_prune(Checkpoint.open(tiny_sharded), 2, 2)
    res = execute(plan, tmp_path / "out", max_shard_bytes=150_000)
    out = tmp_path / "out"
    assert len(res.files) > 1 and (out / "model.safetensors.index.json").exists()
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        assert (out / f).read_bytes() == (tiny_sharded / f).read_bytes()
    ckpt = Checkpoint.open(out)  # index and shards agree
    assert ckpt.num_layers == 4
    ref = keep_layers_in_memory(load_model(tiny_sharded), list(plan.kept_layers))
    assert (_logits(load_model(out)) - _logits(ref)).abs().max().item() <= 1e-5
    prov = json.loads((out / "surgeon_provenance.json").read_text())["operations"]
    assert prov[-1]["operation"] == "prune" and prov[-1]["dropped_layers"] == [2, 3]


@pytest.mark.parametrize("dtype,expected", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_dtype_conversion(tiny_models, tmp_path, dtype, expected):
    path = tiny_models["llama"]
    execute(plan_extract_depth(Checkpoint.open(path), 3, dtype=dtype), tmp_path / "out")
    ckpt = Checkpoint.open(tmp_path / "out")
    src = Checkpoint.open(path)
    for name, t in ckpt.iter_tensors():
        assert t.dtype == expected
        assert torch.equal(t, src.get_tensor(name).to(expected))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == str(expected).split(".")[1]


def test_interrupted_run_leaves_nothing(tiny_models, tmp_path):
    path = tiny_models["llama"]
    plan = plan_prune(Checkpoint.open(path), 1, 2)
    calls = 0

    def boom(done, total, name):
        nonlocal calls
        calls += 1
        if calls == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute(plan, tmp_path / "out", progress=boom)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_force_replaces_complete_previous_version(tiny_models, tmp_path):
    path = tiny_models["llama"]
    execute(plan_prune(Checkpoint.open(path), 1, 2), tmp_path / "out")
    with pytest.raises(Exception, match="not empty"):
        execute(plan_prune(Checkpoint.open(path), 1, 1), tmp_path / "out")
    assert Checkpoint.open(tmp_path / "out").num_layers == 4
    execute(plan_prune(Checkpoint.open(path), 1, 1), tmp_path / "out", force=True)
    assert Checkpoint.open(tmp_path / "out").num_layers == 5


# ---- CLI ----------------------------------------------------------------------------------

def test_cli_prune_and_extract(tiny_models, tmp_path):
    path = tiny_models["mistral"]
    res = run_cli("prune", path, "--start", 2, "--n", 3, "-o", tmp_path / "p")
    assert res.exit_code == 0, res.stderr
    assert "0-1, 5" in res.stdout
    res = run_cli("extract", path, "--depth", 2, "-o", tmp_path / "e")
    assert res.exit_code == 0 and Checkpoint.open(tmp_path / "e").num_layers == 2
    res = run_cli("prune", path, "--n", 2, "--strategy", "deepest", "-o", tmp_path / "d", "--json")
    d = json.loads(res.stdout)
    assert d["plan"]["dropped_layers"] == [3, 4]  # L-1-n .. L-2


def test_cli_dry_run_writes_nothing(tiny_models, tmp_path):
    res = run_cli("prune", tiny_models["gemma3_text"], "--start", 1, "--n", 2, "-o", tmp_path / "p", "--dry-run")
    assert res.exit_code == 0 and "layer_types" in res.stdout and "num_hidden_layers" in res.stdout
    assert not (tmp_path / "p").exists()
    res = run_cli("extract", tiny_models["llama"], "--depth", 3, "--dry-run")
    assert res.exit_code == 0 and "keep layers  0-2" in res.stdout


def _bad_cases(path, tmp):
    occupied = tmp / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("precious")
    return {
        "n >= layers": (["prune", path, "--start", 0, "--n", 6, "-o", tmp / "o"], "--n 6"),
        "block past the end": (["prune", path, "--start", 5, "--n", 3, "-o", tmp / "o"], "past the last layer"),
        "drops the last layer": (["prune", path, "--start", 4, "--n", 2, "-o", tmp / "o"], "--allow-last"),
        "depth 0": (["extract", path, "--depth", 0, "-o", tmp / "o"], "outside 1..6"),
        "depth > layers": (["extract", path, "--depth", 7, "-o", tmp / "o"], "outside 1..6"),
        "occupied output": (["prune", path, "--start", 1, "--n", 2, "-o", occupied], "not empty"),
        "output == input": (["prune", path, "--start", 1, "--n", 2, "-o", path, "--force"], "is the input model"),
        "output inside input": (["extract", path, "--depth", 2, "-o", path / "sub"], "inside the input"),
        "no -o": (["prune", path, "--start", 1, "--n", 2], "--output is required"),
        "negative start": (["prune", path, "--start", -1, "--n", 2, "-o", tmp / "o"], "--start must be >= 0"),
    }


@pytest.mark.parametrize("case", ["n >= layers", "block past the end", "drops the last layer", "depth 0",
                                  "depth > layers", "occupied output", "output == input", "output inside input",
                                  "no -o", "negative start"])
def test_cli_bad_input(case, tiny_models, tmp_path):
    import shutil

    path = shutil.copytree(tiny_models["llama"], tmp_path / "model")
    before = tree_digest(path)
    args, expected = _bad_cases(path, tmp_path)[case]
    res = run_cli(*args)
    assert res.exit_code != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], res.stderr
    assert not (tmp_path / "o").exists()
    assert tree_digest(path) == before
    if case == "occupied output":
        assert (tmp_path / "occupied" / "keep.txt").read_text() == "precious"


@pytest.mark.slow
def test_smollm2_prune_equals_in_memory(smollm2, tmp_path):
    plan = plan_prune(Checkpoint.open(smollm2), 20, 6)
    execute(plan, tmp_path / "out")
    out = load_model(tmp_path / "out")
    ref = keep_layers_in_memory(load_model(smollm2), list(plan.kept_layers))
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 6017, 30, 378, 2015, 28, 1142]])
    assert (_logits(out, ids) - _logits(ref, ids)).abs().max().item() <= 1e-5
    assert torch.equal(out.generate(ids, max_new_tokens=6, do_sample=False),
                       ref.generate(ids, max_new_tokens=6, do_sample=False))


@pytest.mark.parametrize("sharded", [False, True])
def test_rewrite_opens_no_output_file_for_reading(tiny_models, tiny_sharded, tmp_path, monkeypatch, sharded):
    """Outputs are hashed while written and their manifest header is written with them: the rewrite
    never reads back what it wrote (verification records, which load the output on purpose, off)."""
    import builtins
    import io

    import surgeon.manifest.stamp as stamp
    from surgeon import load
    from surgeon.manifest.check import check_checkpoint

    monkeypatch.setattr(stamp, "VERIFY_MAX_PARAMETERS", 0)
    out = tmp_path / "pruned"
    reads = []
    real_open = builtins.open

    def inside_output(p: str) -> bool:
        return p.startswith(str(out) + "/") or p.startswith(str(tmp_path / ("." + out.name)))

    def spying_open(file, mode="r", *a, **k):
        p = str(file)
        if inside_output(p) and ("r" in mode or "+" in mode):
            reads.append((p, mode))
        return real_open(file, mode, *a, **k)

    real_os_open = os.open

    def spying_os_open(path, flags, *a, **k):  # the writer opens its outputs at the fd level
        if inside_output(str(path)) and (flags & os.O_ACCMODE) != os.O_WRONLY and not os.path.isdir(path):
            reads.append((str(path), flags))
        return real_os_open(path, flags, *a, **k)

    monkeypatch.setattr(builtins, "open", spying_open)
    monkeypatch.setattr(io, "open", spying_open)
    monkeypatch.setattr(os, "open", spying_os_open)
    src = tiny_sharded if sharded else tiny_models["llama"]
    r = run_cli("prune", src, "--start", "2", "--n", "2", "-o", out, *(["--max-shard-size", "200KB"] if sharded else []))
    monkeypatch.undo()
    assert r.exit_code == 0, r.output
    assert reads == []
    rep = check_checkpoint(out, verify=True, loader=load)  # what was hashed while writing is what is on disk
    assert rep.hashes_verified and rep.header_copy == "copy"
    assert (len(list(out.glob("*.safetensors"))) > 1) == sharded


@pytest.mark.parametrize("how", ["exdev", "absent"])
def test_rewrite_without_kernel_copy_writes_the_same_bytes(tiny_sharded, tmp_path, monkeypatch, how):
    """Raw ranges are copied in the kernel (copy_file_range); where that is refused (another file
    system, an old kernel) or missing, the chunked copy writes the same files with the same hashes.
    A small odd chunk makes every range span many chunks, in the copy and in the hashing thread; with
    verification records off, the manifest's sha256 is the writer's own (nothing is read back)."""
    import errno

    import surgeon.manifest.stamp as stamp
    from surgeon import load
    from surgeon.io import writer
    from surgeon.manifest.check import check_checkpoint

    monkeypatch.setattr(writer, "COPY_CHUNK", 4099)
    monkeypatch.setattr(stamp, "VERIFY_MAX_PARAMETERS", 0)
    args = ["--start", "2", "--n", "2", "--max-shard-size", "200KB"]
    assert run_cli("prune", tiny_sharded, *args, "-o", tmp_path / "kernel").exit_code == 0
    if how == "exdev":
        def refuse(*a, **k):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        monkeypatch.setattr(os, "copy_file_range", refuse)
    else:
        monkeypatch.delattr(os, "copy_file_range")
    assert run_cli("prune", tiny_sharded, *args, "-o", tmp_path / "chunked").exit_code == 0
    monkeypatch.undo()
    for out in ("kernel", "chunked"):
        assert check_checkpoint(tmp_path / out, verify=True, loader=load).hashes_verified
    files = sorted(p.name for p in (tmp_path / "kernel").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "chunked").iterdir())
    assert sum(f.endswith(".safetensors") for f in files) > 1
    for name in files:
        if name.endswith(".safetensors"):
            assert (tmp_path / "kernel" / name).read_bytes() == (tmp_path / "chunked" / name).read_bytes()
