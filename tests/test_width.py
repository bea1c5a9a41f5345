"""Width surgery: extract --ffn/--heads equals zeroing the dropped channels/heads in memory;
sort-width is a pure permutation (same logits) that puts the most important channels/heads first."""

from __future__ import annotations

import json
import random

import pytest

from surgeon.analyze.importance import width_importance
from surgeon.arch.registry import resolve_family
from surgeon.errors import UsageError
from surgeon.io.checkpoint import Checkpoint
from surgeon.surgery import execute
from surgeon.surgery.inmemory import keep_layers_in_memory
from surgeon.testing import load_model, logits, run_cli
from surgeon.width import plan_width, resolve_width

IDS = [[1, 5, 9, 22, 100, 7, 8, 9, 10, 200, 31, 4]]


def _logits(model):
    return logits(model, IDS)


def _zero_dropped(model, keep_ffn: dict[int, list[int]], keep_kv: dict[int, list[int]]):
    """Ground truth: zero the down_proj columns of dropped channels and the o_proj columns of the
    query heads of dropped KV groups (their contribution to the residual stream is then exactly 0)."""
    import torch

    cfg = model.config
    fam = resolve_family(cfg.to_dict(), [n for n, _ in model.named_parameters()])
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    r = nh // nkv
    layers = model.get_submodule(fam.layers)
    with torch.no_grad():
        for i, layer in enumerate(layers):
            down = layer.get_submodule(fam.ffn["down"]).weight
            drop = sorted(set(range(down.shape[1])) - set(keep_ffn[i]))
            down[:, drop] = 0
            o = layer.get_submodule(fam.attention["o"]).weight
            for g in sorted(set(range(nkv)) - set(keep_kv[i])):
                o[:, g * r * D:(g + 1) * r * D] = 0
    return model


def test_width_extract_equals_zeroing(family_model, tmp_path):
    family, path = family_model
    ckpt = Checkpoint.open(path)
    out = tmp_path / "w"
    execute(plan_width(ckpt, ffn=0.5, heads=2), out)
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["intermediate_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (64, 2, 1, 16)
    L = ckpt.num_layers
    ref = _zero_dropped(load_model(path), {i: list(range(64)) for i in range(L)}, {i: [0] for i in range(L)})
    got = load_model(out)
    assert got.num_parameters() < ref.num_parameters()
    assert (_logits(got) - _logits(ref)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", ["llama", "phi3", "qwen3"])
def test_permuted_width_extract_with_depth(tiny_models, tmp_path, family):
    """A random order + depth + width: equals keeping those layers and zeroing what the order drops."""
    ckpt = Checkpoint.open(tiny_models[family])
    rng = random.Random(7)
    keep = [0, 2, 3, 5]
    order = {i: {"ffn": rng.sample(range(128), 128), "kv": rng.sample(range(2), 2)} for i in range(6)}
    out = tmp_path / "w"
    execute(plan_width(ckpt, ffn=40, heads=0.5, keep=keep, order=order), out)
    ref = keep_layers_in_memory(load_model(tiny_models[family]), keep)
    ref = _zero_dropped(ref, {j: order[i]["ffn"][:40] for j, i in enumerate(keep)},
                        {j: order[i]["kv"][:1] for j, i in enumerate(keep)})
    assert (_logits(load_model(out)) - _logits(ref)).abs().max().item() <= 1e-5


def test_full_width_permutation_preserves_logits(family_model, tmp_path):
    family, path = family_model
    ckpt = Checkpoint.open(path)
    rng = random.Random(3)
    order = {i: {"ffn": rng.sample(range(128), 128), "kv": [1, 0]} for i in range(ckpt.num_layers)}
    out = tmp_path / "p"
    plan = plan_width(ckpt, order=order, operation="sort-width")
    assert any(op.select for op in plan.tensors)  # it really permutes
    execute(plan, out)
    a, b = _logits(load_model(path)), _logits(load_model(out))
    assert (a - b).abs().max().item() <= 1e-5 * max(1.0, a.abs().max().item())


def test_sort_width_cli_sorts_by_importance(tiny_models, tmp_path):
    src = tiny_models["qwen3"]
    out = tmp_path / "sorted"
    r = run_cli("sort-width", str(src), "--data", "builtin:sotu", "--samples", "4", "--seq-len", "64", "-o", str(out), "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["calibration"]["samples"] == 4 and report["calibration"]["role"] == "train"
    assert (_logits(load_model(src)) - _logits(load_model(out))).abs().max().item() <= 1e-5
    prov = json.loads((out / "surgeon_provenance.json").read_text())
    perm = prov["operations"][-1]["permutation"]
    assert perm == report["order"] and sorted(perm["0"]["ffn"]) == list(range(128))
    # Re-scoring the sorted model on the same data gives non-increasing scores: first = most important.
    from transformers import AutoTokenizer

    from surgeon.data import calibration_samples

    tok = AutoTokenizer.from_pretrained(str(out))
    calib = calibration_samples("builtin:sotu", tok, samples=4, seq_len=64, role="train")
    model = load_model(out)
    fam = resolve_family(model.config.to_dict(), [n for n, _ in model.named_parameters()])
    imp = width_importance(model, fam, calib.input_ids)
    for f, k in zip(imp.ffn, imp.kv):
        assert all(a >= b - 1e-9 for a, b in zip(f, f[1:]))
        assert all(a >= b - 1e-9 for a, b in zip(k, k[1:]))
    # The unsorted model's channel scores are not already sorted (the test could fail).
    imp0 = width_importance(load_model(src), fam, calib.input_ids)
    assert any(any(a < b for a, b in zip(f, f[1:])) for f in imp0.ffn)


def test_importance_ignores_padding(tiny_models):
    model = load_model(tiny_models["llama"])
    fam = resolve_family(model.config.to_dict(), [n for n, _ in model.named_parameters()])
    seqs = [list(range(3, 30)), list(range(40, 52))]
    batched = width_importance(model, fam, seqs, batch_size=2)
    single = width_importance(model, fam, seqs, batch_size=1)
    assert batched.tokens == single.tokens == 27 + 12
    for a, b in zip(batched.ffn + batched.kv, single.ffn + single.kv):
        assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-6 * max(1.0, max(a))


@pytest.mark.parametrize("ffn,heads,message", [
    ("1.5", None, "outside (0, 1]"),
    ("0", None, "outside 1..128"),
    ("-0.5", None, "outside (0, 1]"),
    ("129", None, "outside 1..128"),
    (None, "3", "splits a KV group"),
    (None, "0.75", "splits a KV group"),
    ("half", None, "cannot read"),
])
def test_bad_widths(tiny_models, ffn, heads, message):
    cfg = Checkpoint.open(tiny_models["llama"]).text_config
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_width(cfg, ffn, heads)


@pytest.mark.parametrize("args,message", [
    (["--heads", "3"], "keep whole groups: 2, 4 heads"),
    (["--ffn", "2.0"], "outside (0, 1]"),
    (["--layers", "0-3,2"], "not increasing"),
    (["--layers", "0-9"], "names layer 6"),
    (["--depth", "2", "--layers", "0,1"], "give one of them"),
    ([], "nothing to extract"),
])
def test_extract_width_cli_errors(tiny_models, tmp_path, args, message):
    out = tmp_path / "o"
    r = run_cli("extract", str(tiny_models["mistral"]), *args, "-o", str(out))
    assert r.exit_code != 0
    assert r.output.startswith("error:") and message in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_extract_width_cli(tiny_models, tmp_path):
    out = tmp_path / "o"
    r = run_cli("extract", str(tiny_models["phi3"]), "--layers", "0-2,5", "--ffn", "0.25", "--heads", "2", "-o", str(out))
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 4 and cfg["intermediate_size"] == 32 and cfg["num_key_value_heads"] == 1
    ckpt = Checkpoint.open(out)
    assert ckpt.tensors["model.layers.0.mlp.gate_up_proj.weight"].shape == (64, 64)
    assert ckpt.tensors["model.layers.0.self_attn.qkv_proj.weight"].shape == ((2 + 1 + 1) * 16, 64)


def test_width_mask_equals_extracted_submodel(family_model, tmp_path):
    """Running the full model under width_mask == loading the extracted narrow checkpoint."""
    from surgeon.width.masking import width_mask

    family, path = family_model
    out = tmp_path / "w"
    execute(plan_width(Checkpoint.open(path), ffn=48, heads=2), out)
    full = load_model(path)
    before = _logits(full)
    with width_mask(full, ffn=48, kv_heads=1):
        masked = _logits(full)
    assert (masked - _logits(load_model(out))).abs().max().item() <= 1e-5
    assert (masked - before).abs().max().item() > 1e-3  # the mask really changes the model
    assert (_logits(full) - before).abs().max().item() == 0  # hooks are removed afterwards
