"""Exit-aligned shards and `surgeon view`: one exit of a sorted checkpoint as a plain folder of hard links."""

import errno
import json
import os
import warnings

import pytest
import torch

from surgeon.testing import copy_checkpoint, load_weights, run_cli, tree_digest

IDS = torch.tensor([[1, 17, 33, 5, 250, 9, 71, 2, 14, 40]])


@pytest.fixture(scope="module")
def sorted_ckpt(tiny_models, tmp_path_factory):
    """A tiny Gemma 3 (tied embedding, per-layer `layer_types`) with exits 2, 4 and 6 declared by
    `manifest -o`, which writes exit-aligned shards by default."""
    out = tmp_path_factory.mktemp("view") / "sorted"
    r = run_cli("manifest", tiny_models["gemma3_text"], "--exits", "2,4,3:ffn=0.5", "-o", out)
    assert r.exit_code == 0, r.stderr
    return out


def files_of(folder):
    idx = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    by_file: dict = {}
    for name, f in idx.items():
        by_file.setdefault(f, set()).add(name)
    return by_file


def layer(name):
    parts = name.split(".")
    return int(parts[2]) if name.startswith("model.layers.") else None


def test_outputs_with_exits_have_exit_aligned_shards(sorted_ckpt):
    by_file = files_of(sorted_ckpt)
    shared = [f for f, names in by_file.items() if all(layer(n) is None for n in names)]
    assert len(shared) == 1 and {"model.embed_tokens.weight", "model.norm.weight"} <= by_file[shared[0]]
    for k in (2, 3, 4, 6):  # every prefix exit (3 is the narrowed one) ends at a file boundary
        for names in by_file.values():
            layers = {layer(n) for n in names} - {None}
            assert not (any(i < k for i in layers) and any(i >= k for i in layers)), (k, layers)


def test_plain_layout_on_request(tiny_models, tmp_path):
    r = run_cli("manifest", tiny_models["llama"], "--exits", "2,4", "-o", tmp_path / "m", "--no-align-shards")
    assert r.exit_code == 0 and (tmp_path / "m" / "model.safetensors").is_file()


@pytest.mark.parametrize("exit, k", [("depth-2", 2), ("depth-4", 4)])
def test_view_links_the_exit_and_stock_transformers_loads_it(sorted_ckpt, tmp_path, exit, k):
    from transformers import AutoModelForCausalLM

    import surgeon

    before = tree_digest(sorted_ckpt)
    out = tmp_path / f"view-{k}"
    r = run_cli("view", sorted_ckpt, "--exit", exit, "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["mode"] == "link" and res["layers"] == k
    for f in out.glob("*.safetensors"):  # hard links: the same inode as the source's file
        assert os.stat(f).st_ino == os.stat(sorted_ckpt / f.name).st_ino
    new = sum(p.stat().st_size for p in out.iterdir() if p.stat().st_nlink == 1)
    assert new == res["bytes_added"] and new < 1_000_000
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == k
    # stock transformers, no overrides: every tensor used, none missing, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ref = surgeon.load(sorted_ckpt, exit=exit)
    with torch.no_grad():
        assert torch.equal(model.eval()(IDS).logits, ref(IDS).logits)
        assert torch.equal(model.generate(IDS, max_new_tokens=6, do_sample=False),
                           ref.generate(IDS, max_new_tokens=6, do_sample=False))
    m = json.loads((out / "sorted_manifest.json").read_text())
    assert m["view"]["exit"] == exit and m["view"]["source"] == str(sorted_ckpt.resolve())
    assert [e["name"] for e in m["exits"]][-1] == exit
    assert run_cli("manifest", "validate", out, "--verify").exit_code == 0
    inspected = run_cli("inspect", out, "--json")
    assert json.loads(inspected.stdout)["manifest"]["view"]["exit"] == exit
    assert tree_digest(sorted_ckpt) == before  # the source is untouched


def test_view_of_a_width_exit_is_a_copy_and_says_why(sorted_ckpt, tmp_path):
    r = run_cli("view", sorted_ckpt, "--exit", "depth-3-ffn64", "-o", tmp_path / "w", "--json")
    if r.exit_code != 0:  # the narrowed exit's default name depends on the fixture's FFN width
        names = [e["name"] for e in json.loads((sorted_ckpt / "sorted_manifest.json").read_text())["exits"]
                 if e.get("widths")]
        r = run_cli("view", sorted_ckpt, "--exit", names[0], "-o", tmp_path / "w", "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["mode"] == "copy" and "widths" in res["reason"]
    assert all(os.stat(f).st_nlink == 1 for f in (tmp_path / "w").glob("*.safetensors"))


def test_view_of_an_unaligned_source_is_a_copy_equal_to_extract(tiny_models, tmp_path):
    r = run_cli("view", tiny_models["llama"], "--exit", "3", "-o", tmp_path / "v", "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["mode"] == "copy" and "align-shards" in res["reason"]
    assert run_cli("extract", tiny_models["llama"], "--depth", "3", "-o", tmp_path / "e").exit_code == 0
    a, b = load_weights(tmp_path / "v"), load_weights(tmp_path / "e")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_view_on_another_file_system_falls_back_to_a_copy(sorted_ckpt, tmp_path, monkeypatch):
    def refuse(src, dst, *a, **k):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "link", refuse)
    r = run_cli("view", sorted_ckpt, "--exit", "depth-2", "-o", tmp_path / "x", "--json")
    monkeypatch.undo()
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["mode"] == "copy" and "file system" in res["reason"]
    assert json.loads((tmp_path / "x" / "config.json").read_text())["num_hidden_layers"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["x"]  # no temp folder left


@pytest.mark.parametrize("args, message", [
    (["--exit", "depth-5"], "no exit named"),
    (["--exit", "0"], "1..6"),
    ([], "--exit is required"),
])
def test_view_bad_input_is_one_line_and_writes_nothing(sorted_ckpt, tmp_path, args, message):
    r = run_cli("view", sorted_ckpt, *args, "-o", tmp_path / "v")
    assert r.exit_code != 0 and message in r.stderr and "\n" not in r.stderr.strip()
    assert list(tmp_path.iterdir()) == []


def test_view_inside_the_source_is_refused(sorted_ckpt):
    before = tree_digest(sorted_ckpt)
    r = run_cli("view", sorted_ckpt, "--exit", "depth-2", "-o", sorted_ckpt / "v")
    assert r.exit_code != 0 and "inside the input" in r.stderr and "\n" not in r.stderr.strip()
    assert tree_digest(sorted_ckpt) == before


def test_manifest_in_place_align_shards_reshards_and_keeps_the_logits(tiny_models, tmp_path):
    import surgeon

    src = copy_checkpoint(tiny_models["qwen3"], tmp_path / "m")
    full = surgeon.load(src)
    with torch.no_grad():
        want = full(IDS).logits
    assert run_cli("view", src, "--exit", "2", "-o", tmp_path / "before", "--json").exit_code == 0
    r = run_cli("manifest", src, "--in-place", "--exits", "2,4", "--align-shards")
    assert r.exit_code == 0, r.stderr
    assert len(list(src.glob("*.safetensors"))) == 4  # shared | layers 0-1 | 2-3 | 4-5
    with torch.no_grad():
        assert torch.equal(surgeon.load(src)(IDS).logits, want)
    res = json.loads(run_cli("view", src, "--exit", "depth-2", "-o", tmp_path / "after", "--json").stdout)
    assert res["mode"] == "link"
    assert not [p for p in tmp_path.iterdir() if ".surgeon-" in p.name]
    ops = json.loads((src / "surgeon_provenance.json").read_text())["operations"]
    assert ops[-1]["operation"] == "manifest"
