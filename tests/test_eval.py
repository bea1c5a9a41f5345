"""surgeon.eval: one metrics engine for eval, manifest quality records and soft's own records."""

from __future__ import annotations

import json
import math

import pytest
import torch

import surgeon
from surgeon.data import collate, training_examples
from surgeon.eval import measure_exits
from surgeon.exits import ExitSpec
from surgeon.testing import load_model
from tests.conftest import run_cli

DATA, SEQ, SAMPLES = "builtin:sotu", 24, 6


@pytest.fixture(scope="module")
def held(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    return list(training_examples(DATA, tok, seq_len=SEQ, role="eval", max_examples=SAMPLES))


def _reference(exit_model, full_model, examples):
    """Ground truth from two separately loaded models: mean CE, KL(full || exit), top-1 agreement."""
    batch = collate(examples)
    ids, labels = batch["input_ids"], batch["labels"][:, 1:]
    with torch.no_grad():
        lx = torch.log_softmax(exit_model(ids).logits[:, :-1].float(), -1)
        lf = torch.log_softmax(full_model(ids).logits[:, :-1].float(), -1)
    keep = labels != -100
    ce = -lx.gather(-1, labels.clamp_min(0)[..., None])[..., 0][keep].mean()
    kl = (lf.exp() * (lf - lx)).sum(-1)[keep].mean()
    top1 = (lx.argmax(-1) == lf.argmax(-1))[keep].float().mean()
    return float(ce), float(kl), float(top1)


def test_any_exit_equals_the_same_exit_loaded_on_its_own(tiny_models, held):
    """Prefix, narrowed and non-prefix exits from one loaded model equal surgeon.load of each exit."""
    path = tiny_models["llama"]
    full = load_model(path)
    cfg = json.loads((path / "config.json").read_text())
    from surgeon.exits import parse_exits

    exits = [ExitSpec(None, [0, 1, 2])] + parse_exits("6:ffn=0.5,4:ffn=32:heads=2", 6, cfg) + [
        ExitSpec("skip", [0, 1, 4, 5]), ExitSpec(None, list(range(6)))]
    quality, tokens = measure_exits(full, held, exits, batch_size=4)
    assert tokens == sum(len(e["input_ids"]) - 1 for e in held)
    for e, q in zip(exits, quality):
        ce, kl, top1 = _reference(surgeon.load(path, e.to_dict(), dtype="fp32"), full, held)
        assert abs(q.loss - ce) < 1e-5 and abs(q.kl_full_exit - kl) < 1e-5 and abs(q.top1_agreement - top1) < 1e-6, e
        assert q.perplexity == pytest.approx(math.exp(ce), rel=1e-5)
    assert quality[-1].kl_full_exit == pytest.approx(0.0, abs=1e-7) and quality[-1].top1_agreement == 1.0


def _records(manifest: dict) -> dict:
    return {e["name"]: {q["metric"]: q["value"] for q in e["quality"]} for e in manifest["exits"]}


def test_eval_equals_the_manifest_quality_records(tiny_models, tmp_path):
    out = tmp_path / "m"
    r = run_cli("manifest", tiny_models["qwen3"], "--exits", "2,4", "--eval-data", DATA, "--samples", SAMPLES,
                "--seq-len", SEQ, "-o", out)
    assert r.exit_code == 0, r.output
    records = _records(json.loads((out / "sorted_manifest.json").read_text()))
    r = run_cli("eval", out, "--exit", "2,4,6", "--data", DATA, "--samples", SAMPLES, "--seq-len", SEQ, "--json")
    assert r.exit_code == 0, r.output
    got = {q["exit"]: q for q in json.loads(r.stdout)["exits"]}
    for name, n in (("depth-2", 2), ("depth-4", 4), ("full", 6)):
        rec, q = records[name], got[n]
        assert abs(rec["loss"] - q["loss"]) <= 1e-5, name
        assert abs(rec["kl_full_exit"] - max(q["kl_full_exit"], 0.0)) <= 1e-5, name
        assert abs(rec["top1_agreement"] - q["top1_agreement"]) <= 1e-5, name


def test_soft_records_equal_eval_of_its_output(tiny_models, tmp_path):
    from surgeon.commands import soft

    out = tmp_path / "sorted"
    soft.run(soft.SoftOptions(model=tiny_models["llama"], output=out, data=DATA, exits="2,4,6", steps=2,
                              batch_size=2, seq_len=SEQ, eval_samples=SAMPLES, method="full", lr=1e-3, warmup=0,
                              save_every=0))
    records = _records(json.loads((out / "sorted_manifest.json").read_text()))
    r = run_cli("eval", out, "--all-exits", "--data", DATA, "--samples", SAMPLES, "--seq-len", SEQ, "--json")
    assert r.exit_code == 0, r.output
    got = {q["exit"]: q for q in json.loads(r.stdout)["exits"]}
    assert sorted(got) == [2, 4, 6]
    for n in (2, 4, 6):
        rec, q = records[f"depth-{n}"], got[n]
        assert abs(rec["loss"] - q["loss"]) <= 1e-5 and abs(rec["top1_agreement"] - q["top1_agreement"]) <= 1e-5, n
