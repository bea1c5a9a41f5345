"""surgeon analyze: angular distances against a direct per-sample computation, padding, l*(n), offload, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from surgeon.analyze import argmin_blocks, compute_analysis
from surgeon.analyze.similarity import SimilarityTable, layer_similarity, make_batches
from surgeon.testing import load_model, run_cli

SEQ_LEN = 24


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    from surgeon.testing import corpus

    sents = corpus(240, seed=3)
    docs = [" ".join(sents[i:i + 6]) for i in range(0, len(sents), 6)]
    p = tmp_path_factory.mktemp("data") / "docs.txt"
    p.write_text("\n\n".join(docs) + "\n")
    return p


def _load(path):
    from transformers import AutoTokenizer

    return load_model(path), AutoTokenizer.from_pretrained(path)


def direct_reference(model, sequences):
    """Ground truth, one sequence at a time and without padding: x_0..x_{L-1} from
    ``output_hidden_states`` (the inputs of the layers), x_L from a hook on the last layer (its
    output before the final norm); numpy arccos per pair, averaged over samples."""
    import torch

    layers = model.model.layers
    L = len(layers)
    captured = {}
    h = layers[-1].register_forward_hook(lambda m, a, o: captured.__setitem__("x_L", o[0] if isinstance(o, tuple) else o))
    dist = np.zeros((L + 1, L + 1))
    bi_sum, bi_count = np.zeros(L), 0
    try:
        with torch.inference_mode():
            for seq in sequences:
                out = model(input_ids=torch.tensor([seq]), output_hidden_states=True, use_cache=False)
                hs = [x[0].double().numpy() for x in out.hidden_states[:L]] + [captured["x_L"][0].double().numpy()]
                # the last entry of hidden_states is post-norm: it must differ from x_L
                assert not np.allclose(out.hidden_states[L][0].double().numpy(), hs[L], atol=1e-4)
                last = np.stack([x[-1] for x in hs])
                unit = last / np.linalg.norm(last, axis=1, keepdims=True)
                dist += np.arccos(np.clip(unit @ unit.T, -1, 1)) / math.pi
                for l in range(L):
                    a, b = hs[l], hs[l + 1]
                    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
                    bi_sum[l] += (1 - cos).sum()
                bi_count += len(seq)
    finally:
        h.remove()
    return dist / len(sequences), bi_sum / bi_count


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_distances_match_direct_computation(tiny_models, corpus_file, family):
    from surgeon.data import calibration_samples

    res = compute_analysis(tiny_models[family], str(corpus_file), samples=5, seq_len=SEQ_LEN, batch_size=2)
    model, tok = _load(tiny_models[family])
    seqs = calibration_samples(str(corpus_file), tok, samples=5, seq_len=SEQ_LEN).input_ids
    ref, bi = direct_reference(model, seqs)
    L = res.num_layers
    assert L == 6 and res.samples == 5 and res.tokens == 5 * SEQ_LEN
    assert sorted(res.angular_distance) == list(range(1, L))
    for n, row in res.angular_distance.items():
        assert len(row) == L - n + 1
        np.testing.assert_allclose(row, [ref[l, l + n] for l in range(L - n + 1)], rtol=0, atol=1e-6)
    np.testing.assert_allclose(res.block_influence, bi, rtol=0, atol=1e-6)


def test_padding_left_right_and_unbatched_agree(tiny_models, corpus_file):
    from surgeon.data import calibration_samples

    model, tok = _load(tiny_models["llama"])
    full = calibration_samples(str(corpus_file), tok, samples=5, seq_len=SEQ_LEN).input_ids
    seqs = [s[:k] for s, k in zip(full, (24, 9, 17, 5, 13))]  # ragged: every batch needs padding
    tables = {
        "unbatched": layer_similarity(model, "model.layers", make_batches(seqs, 1)),
        "right": layer_similarity(model, "model.layers", make_batches(seqs, 3, padding="right")),
        "left": layer_similarity(model, "model.layers", make_batches(seqs, 3, padding="left")),
    }
    ref, bi = direct_reference(model, seqs)
    for name, t in tables.items():
        assert t.samples == 5 and t.tokens == sum(len(s) for s in seqs), name
        np.testing.assert_allclose(np.array(t.distance), ref, rtol=0, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(t.block_influence, bi, rtol=0, atol=1e-5, err_msg=name)


def test_make_batches_marks_the_last_real_token():
    right = make_batches([[5, 6, 7], [8]], 2, padding="right", pad_id=0)[0]
    left = make_batches([[5, 6, 7], [8]], 2, padding="left", pad_id=0)[0]
    assert right.last.tolist() == [2, 0] and left.last.tolist() == [2, 2]
    assert left.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left.position_ids[1, 2].item() == 0 and right.position_ids[0].tolist() == [0, 1, 2]


def _table(d: np.ndarray) -> SimilarityTable:
    L = d.shape[0] - 1
    return SimilarityTable(L, 1, 1, d.tolist(), [0.0] * L)


def test_best_is_the_row_argmin_and_keep_last_excludes_the_final_layer():
    rng = np.random.default_rng(0)
    L = 7
    d = rng.uniform(0.2, 0.9, size=(L + 1, L + 1))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    for n in range(1, L):  # make the block that contains the final layer the best of every row
        d[L - n, L] = d[L, L - n] = 0.01 * n
    t = _table(d)
    best, keep = argmin_blocks(t, keep_last=False), argmin_blocks(t, keep_last=True)
    for n in range(1, L):
        row = [d[l, l + n] for l in range(L - n + 1)]
        assert best[n].start == int(np.argmin(row)) == L - n
        assert best[n].distance == pytest.approx(min(row))
        kept = row[: L - n]  # blocks l..l+n-1 with l+n <= L-1
        assert keep[n].start == int(np.argmin(kept)) and keep[n].start + n <= L - 1
        assert keep[n].distance == pytest.approx(min(kept))


def test_result_best_matches_its_own_table(tiny_models, corpus_file):
    res = compute_analysis(tiny_models["qwen2"], str(corpus_file), samples=4, seq_len=SEQ_LEN)
    L = res.num_layers
    for n, row in res.angular_distance.items():
        assert res.best[n].start == int(np.argmin(row))
        assert res.best_keep_last[n].start == int(np.argmin(row[: L - n]))


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "qwen2"])
def test_offload_layer_matches_in_memory(tiny_models, corpus_file, family):
    kw = dict(samples=5, seq_len=SEQ_LEN, batch_size=2)
    a = compute_analysis(tiny_models[family], str(corpus_file), **kw)
    b = compute_analysis(tiny_models[family], str(corpus_file), offload="layer", **kw)
    for n in a.angular_distance:
        np.testing.assert_allclose(a.angular_distance[n], b.angular_distance[n], rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.block_influence, b.block_influence, rtol=0, atol=1e-6)
    assert a.best_keep_last == b.best_keep_last


def test_offload_reads_one_layer_at_a_time(tiny_models, corpus_file, monkeypatch):
    from surgeon.io.checkpoint import Checkpoint

    reads = []
    orig = Checkpoint.get_tensor
    monkeypatch.setattr(Checkpoint, "get_tensor", lambda self, name: reads.append(name) or orig(self, name))
    compute_analysis(tiny_models["llama"], str(corpus_file), samples=2, seq_len=SEQ_LEN, offload="layer")
    layer_of = [int(n.split(".")[2]) for n in reads if n.startswith("model.layers.")]
    assert layer_of == sorted(layer_of) and set(layer_of) == set(range(6))  # layer-major, each layer once
    assert len(layer_of) == len([n for n in Checkpoint.open(tiny_models["llama"]).tensors if n.startswith("model.layers.")])
    assert not any(n.startswith("lm_head") for n in reads)


def test_cli_writes_report_and_heatmap(tiny_models, corpus_file, tmp_path):
    out = tmp_path / "an"
    r = run_cli("analyze", tiny_models["llama"], "--data", corpus_file, "--samples", "3", "--seq-len", SEQ_LEN, "-o", out)
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "analysis.json").read_text())
    assert {"num_layers", "samples", "seq_len", "data", "angular_distance", "best", "best_keep_last",
            "block_influence"} <= set(rep)
    assert rep["num_layers"] == 6 and rep["samples"] == 3 and rep["seq_len"] == SEQ_LEN
    assert len(rep["angular_distance"]["1"]) == 6 and len(rep["angular_distance"]["5"]) == 2
    assert (out / "angular_distance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "best blocks" in r.output
    # a folder holding only a previous analysis is replaced; --json prints the same report
    r = run_cli("analyze", tiny_models["llama"], "--data", corpus_file, "--samples", "3", "--seq-len", SEQ_LEN,
                "-o", out, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["best"] == rep["best"]


def test_prune_similarity_runs_the_analysis_and_records_the_block(tiny_models, corpus_file, tmp_path):
    model = tiny_models["llama"]
    common = ["--data", corpus_file, "--samples", "4", "--seq-len", SEQ_LEN]
    r = run_cli("analyze", model, *common, "-o", tmp_path / "an")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "an" / "analysis.json").read_text())
    r = run_cli("prune", model, "--n", "2", *common, "-o", tmp_path / "p1")
    assert r.exit_code == 0, r.output
    prov = json.loads((tmp_path / "p1" / "surgeon_provenance.json").read_text())["operations"][-1]
    want = rep["best_keep_last"]["2"]
    assert prov["block"]["start"] == want["start"] and prov["block"]["distance"] == pytest.approx(want["distance"])
    assert prov["block"]["strategy"] == "similarity" and prov["block"]["analysis"]["samples"] == 4
    assert prov["dropped_layers"] == [want["start"], want["start"] + 1]
    # reading the saved analysis gives the same block; --allow-last switches to `best`
    r = run_cli("prune", model, "--n", "2", "--analysis", tmp_path / "an" / "analysis.json", "--allow-last",
                "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["block"]["start"] == rep["best"]["2"]["start"]


@pytest.mark.parametrize("args,expect", [
    (["--samples", "0"], "--samples 0 is below 1"),
    (["--seq-len", "1"], "--seq-len 1 is below 2"),
    (["--seq-len", "100000"], "no usable documents"),
])
def test_cli_bad_options(tiny_models, corpus_file, tmp_path, args, expect):
    r = run_cli("analyze", tiny_models["llama"], "--data", corpus_file, *args, "-o", tmp_path / "o")
    assert r.exit_code != 0
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], r.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name,content,expect", [
    ("empty.txt", "", "is empty"),
    ("bad.jsonl", '{"text": "fine"}\n{"text": oops\n', "line 2"),
])
def test_cli_bad_data_files(tiny_models, tmp_path, name, content, expect):
    p = tmp_path / name
    p.write_text(content)
    r = run_cli("analyze", tiny_models["llama"], "--data", p, "--samples", "2", "--seq-len", "4", "-o", tmp_path / "o")
    assert r.exit_code != 0
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], r.output


@pytest.mark.parametrize("n", ["6", "9"])
def test_prune_n_at_or_above_layer_count(tiny_models, corpus_file, tmp_path, n):
    r = run_cli("prune", tiny_models["llama"], "--n", n, "--data", corpus_file, "-o", tmp_path / "o")
    assert r.exit_code == 2
    assert r.output.strip().startswith("error: --n") and "1..5" in r.output


def test_prune_samples_zero_is_a_usage_error(tiny_models, corpus_file, tmp_path):
    r = run_cli("prune", tiny_models["llama"], "--n", "2", "--data", corpus_file, "--samples", "0", "-o", tmp_path / "o")
    assert r.exit_code == 2 and "--samples 0" in r.output


@pytest.mark.slow
def test_smollm2_analysis_prefers_a_middle_block(smollm2, tmp_path):
    res = compute_analysis(smollm2, "builtin:sotu", samples=8, seq_len=128)
    L = res.num_layers
    assert L == 30
    # the paper's sec. 4.3 observation: the blocks that end at the final layer are far from optimal
    for n in (2, 4, 6):
        row = res.angular_distance[n]
        assert row[L - n] > res.best_keep_last[n].distance


def test_cli_refuses_a_foreign_output_folder_before_running(tiny_models, corpus_file, tmp_path, monkeypatch):
    import surgeon.commands.analyze as run

    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(run, "compute_analysis", lambda *a, **k: pytest.fail("the analysis ran"))
    r = run_cli("analyze", tiny_models["llama"], "--data", corpus_file, "-o", out)
    assert r.exit_code != 0 and "not empty" in r.output and "--force" in r.output
    assert (out / "notes.txt").read_text() == "mine"
