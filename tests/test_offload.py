"""Models bigger than memory: ``--offload layer`` (one decoder layer resident) and ``--device-map auto``
(accelerate's big-model inference, here spilling to disk) give the in-memory results; healing never
loads a float copy of the model beside the trained one."""

from __future__ import annotations

import json
import random

import pytest

from surgeon.eval import measure_exits
from surgeon.eval.streamed import StreamedModel
from surgeon.exits import ExitSpec
from surgeon.io.checkpoint import Checkpoint
from surgeon.testing import load_model, run_cli

FAMILIES = ["llama", "gemma3_text", "qwen2"]
EVAL = ["--data", "builtin:sotu", "--samples", "5", "--seq-len", "24", "--batch-size", "2", "--json"]


def _examples(n=7, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [rng.randrange(3, 100) for _ in range(rng.randrange(5, 40))]
        out.append({"input_ids": ids, "labels": [-100] * 2 + ids[2:]})
    return out


def _small_memory(path) -> str:
    """A --max-memory that holds about a third of the checkpoint: the rest is offloaded to disk."""
    size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    return f"cpu={size / 3 / 1e6:.3f}MB"


@pytest.mark.parametrize("family", [*FAMILIES, "gemma2"])
@pytest.mark.parametrize("vocab_chunk", [None, 37])
def test_streamed_exits_equal_in_memory(tiny_models, family, vocab_chunk):
    """Prefix, narrowed and non-prefix exits, KL and top-1 from the layer stream, its LM head read in one
    slice or in slices of 37 rows (which do not divide the 512-token vocabulary), equal the loaded model's
    full-vocabulary ones: untied (llama, qwen2) and tied heads (Gemma 3; Gemma 2 with logit soft-capping)."""
    path = tiny_models[family]
    exits = [2, 6, ExitSpec(None, [0, 1, 3]), ExitSpec(None, list(range(4)), {"ffn": 16})]
    a, n_a = measure_exits(load_model(path), _examples(), exits, batch_size=3)
    b, n_b = measure_exits(StreamedModel(path, vocab_chunk=vocab_chunk), _examples(), exits, batch_size=3,
                           chunk_tokens=None if vocab_chunk is None else 10)
    assert n_a == n_b
    assert len({round(q.loss, 6) for q in a}) == len(a)  # the exits really differ
    for x, y in zip(a, b):
        assert abs(x.loss - y.loss) <= 1e-4 and abs(x.kl_full_exit - y.kl_full_exit) <= 1e-4
        assert x.top1_agreement == y.top1_agreement


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_eval_offload_and_device_map_equal_in_memory(tiny_models, family):
    path = tiny_models[family]
    got = {}
    for mode, extra in {"memory": [], "offload": ["--offload", "layer"],
                        "device_map": ["--device-map", "auto", "--max-memory", _small_memory(path)]}.items():
        r = run_cli("eval", path, "--exit", "2,4:ffn=0.5,6", *EVAL, *extra)
        assert r.exit_code == 0, r.output
        got[mode] = json.loads(r.stdout)["exits"]
    for mode in ("offload", "device_map"):
        for x, y in zip(got["memory"], got[mode]):
            assert abs(x["loss"] - y["loss"]) <= 1e-4 and abs(x["kl_full_exit"] - y["kl_full_exit"]) <= 1e-4, mode


def test_offload_reads_each_layer_once_and_never_loads_the_model(tiny_models, monkeypatch):
    import transformers

    path = tiny_models["llama"]
    reads = []
    orig, orig_rows = Checkpoint.get_tensor, Checkpoint.get_rows
    monkeypatch.setattr(Checkpoint, "get_tensor", lambda self, name: reads.append(name) or orig(self, name))
    monkeypatch.setattr(Checkpoint, "get_rows",
                        lambda self, name, r: reads.append((name, list(r))) or orig_rows(self, name, r))

    def no_load(*a, **k):
        raise AssertionError("from_pretrained called under --offload layer")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    r = run_cli("eval", path, "--exit", "3,6", *EVAL, "--offload", "layer")
    assert r.exit_code == 0, r.output
    whole = [n for n in reads if isinstance(n, str)]
    layer_of = [int(n.split(".")[2]) for n in whole if n.startswith("model.layers.")]
    assert layer_of == sorted(layer_of)  # layer-major
    assert len(layer_of) == len([n for n in Checkpoint.open(path).tensors if n.startswith("model.layers.")])
    assert "lm_head.weight" not in whole and whole[-1] == "model.norm.weight"
    after_norm = reads[reads.index("model.norm.weight") + 1:]  # then the head, in slices of rows, each read once
    head = [r for n, r in after_norm if n == "lm_head.weight"]
    vocab = Checkpoint.open(path).tensors["lm_head.weight"].shape[0]
    assert [i for r in head for i in r] == list(range(vocab))


def test_manifest_quality_offload_equals_in_memory(tiny_models, tmp_path):
    records = {}
    for mode, extra in {"memory": [], "offload": ["--offload", "layer"]}.items():
        r = run_cli("manifest", tiny_models["qwen2"], "--exits", "2,4", "--eval-data", "builtin:sotu", "--samples", "4",
                    "--seq-len", "24", "-o", tmp_path / mode, *extra)
        assert r.exit_code == 0, r.output
        m = json.loads(next((tmp_path / mode).glob("*manifest*.json")).read_text())
        records[mode] = {e["name"]: e["quality"] for e in m["exits"]}
    assert records["memory"].keys() == records["offload"].keys()
    for name, qs in records["memory"].items():
        for x, y in zip(qs, records["offload"][name]):
            assert x.keys() == y.keys()
            for k, v in x.items():
                if isinstance(v, float):
                    assert abs(v - y[k]) <= 1e-4, (name, k)
                else:
                    assert v == y[k], (name, k)


def test_sort_width_offload_writes_the_same_checkpoint(tiny_models, tmp_path):
    for mode, extra in {"memory": [], "offload": ["--offload", "layer"]}.items():
        r = run_cli("sort-width", tiny_models["llama"], "--data", "builtin:sotu", "--samples", "4", "--seq-len", "24",
                    "-o", tmp_path / mode, *extra)
        assert r.exit_code == 0, r.output
    a = json.loads((tmp_path / "memory" / "surgeon_provenance.json").read_text())
    b = json.loads((tmp_path / "offload" / "surgeon_provenance.json").read_text())
    assert _permutation(a) == _permutation(b)
    from safetensors.torch import load_file

    x, y = (load_file(next((tmp_path / m).glob("*.safetensors"))) for m in ("memory", "offload"))
    assert x.keys() == y.keys() and all(x[k].equal(y[k]) for k in x)


def _permutation(prov: dict):
    found = []

    def walk(x):
        if isinstance(x, dict):
            if "permutation" in x:
                found.append(x["permutation"])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk(prov)
    assert found
    return found[-1]


@pytest.mark.parametrize("dtype", [None, "bf16"])
def test_heal_evaluates_streamed_and_measures_the_written_weights(tiny_models, tmp_path, monkeypatch, dtype):
    """heal never loads a float model: the NF4 base is quantized tensor by tensor, 'before' is the source
    and 'after' the written output (LoRA merged into the float weights, cast to --dtype), both
    measured layer-streamed."""
    import transformers

    calls = []
    orig = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def counting(cls, *a, **k):
        calls.append(k.get("quantization_config"))
        return orig(cls, *a, **k)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(counting))
    out = tmp_path / "h"
    extra = ["--dtype", dtype] if dtype else []
    r = run_cli("heal", tiny_models["llama"], "--data", "builtin:sotu", "--steps", "3", "--seq-len", "24", "--lr", "1e-2",
                "--batch-size", "2", "--eval-samples", "4", "-o", out, "--json", *extra)
    assert r.exit_code == 0, r.output
    assert calls == []  # no from_pretrained at all: no float copy, before, during or after
    monkeypatch.undo()
    res = json.loads(r.stdout)
    ev = lambda p: json.loads(run_cli("eval", p, "--exit", "6", "--data", "builtin:sotu", "--samples", "4",  # noqa: E731
                                      "--seq-len", "24", "--batch-size", "4", "--dtype", "fp32", "--json",
                                      "--no-kl").stdout)["exits"][0]["loss"]
    after = ev(out)
    assert abs(res["after"]["loss"] - after) <= 1e-5, (res["after"], after)
    assert abs(res["before"]["loss"] - ev(tiny_models["llama"])) <= 1e-5
    assert abs(res["after"]["loss"] - res["before"]["loss"]) > 1e-4  # the training changed the written weights


@pytest.mark.slow
def test_smollm2_offload_and_device_map_equal_in_memory(smollm2):
    got = {}
    for mode, extra in {"memory": [], "offload": ["--offload", "layer"],
                        "device_map": ["--device-map", "auto", "--max-memory", _small_memory(smollm2)]}.items():
        r = run_cli("eval", smollm2, "--exit", "10,20,30", "--data", "builtin:sotu", "--samples", "4",
                    "--seq-len", "128", "--json", *extra)
        assert r.exit_code == 0, r.output
        got[mode] = json.loads(r.stdout)["exits"]
    for mode in ("offload", "device_map"):
        for x, y in zip(got["memory"], got[mode]):
            assert abs(x["loss"] - y["loss"]) <= 1e-4 and abs(x["kl_full_exit"] - y["kl_full_exit"]) <= 1e-4, mode
    from surgeon.analyze import compute_analysis

    a = compute_analysis(smollm2, "builtin:sotu", samples=4, seq_len=128, batch_size=2)
    b = compute_analysis(smollm2, "builtin:sotu", samples=4, seq_len=128, batch_size=2, offload="layer")
    for n in a.angular_distance:
        assert max(abs(x - y) for x, y in zip(a.angular_distance[n], b.angular_distance[n])) <= 1e-4


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_streamed_analyze_reads_no_head_nor_whole_embedding(tiny_models, monkeypatch, family):
    """analyze --offload layer needs residual streams only: the final norm and LM head are never read, the
    embedding only as the rows of the samples' ids (never whole), and the distances equal the in-memory ones."""
    import numpy as np

    from surgeon.analyze import compute_analysis

    path = tiny_models[family]
    kw = dict(samples=5, seq_len=24, batch_size=2)
    a = compute_analysis(path, "builtin:sotu", **kw)
    reads, rows = [], []
    orig_tensor, orig_rows = Checkpoint.get_tensor, Checkpoint.get_rows
    monkeypatch.setattr(Checkpoint, "get_tensor", lambda self, name: reads.append(name) or orig_tensor(self, name))
    monkeypatch.setattr(Checkpoint, "get_rows",
                        lambda self, name, r: rows.append((name, list(r))) or orig_rows(self, name, r))
    b = compute_analysis(path, "builtin:sotu", offload="layer", **kw)
    assert reads and all(n.startswith("model.layers.") for n in reads), [n for n in reads if "layers" not in n]
    vocab = Checkpoint.open(path).tensors["model.embed_tokens.weight"].shape[0]
    assert rows and {n for n, _ in rows} == {"model.embed_tokens.weight"}
    assert all(r == sorted(set(r)) and len(r) < vocab for _, r in rows)  # distinct rows of one batch, not all
    for n in a.angular_distance:
        np.testing.assert_array_equal(a.angular_distance[n], b.angular_distance[n])
    np.testing.assert_array_equal(a.block_influence, b.block_influence)


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_embedding_rows_equal_the_whole_lookup(tiny_models, family):
    """The first layer's input from the gathered rows is bitwise the loaded model's embedding (Gemma's scale
    included); a model built with logits=False refuses to run its head."""
    import torch

    path = tiny_models[family]
    ids = torch.tensor([[5, 9, 5, 3, 97], [0, 1, 2, 9, 9]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    sm = StreamedModel(path, logits=False)
    (hidden, _), = sm.prepare([batch])
    model = load_model(path)
    with torch.no_grad():
        want = model.get_input_embeddings()(ids)
    assert hidden.dtype == want.dtype and torch.equal(hidden, want)
    assert Checkpoint.open(path).get_rows("model.embed_tokens.weight", [3, 4, 9]).equal(
        Checkpoint.open(path).get_tensor("model.embed_tokens.weight")[[3, 4, 9]])
    with pytest.raises(RuntimeError, match="logits=False"):
        with sm.head():
            pass
