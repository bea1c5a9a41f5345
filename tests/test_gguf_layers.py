"""`surgeon fix-gguf`: the per-layer sliding-window pattern llama.cpp's Gemma 3 converter leaves out.
(The end-to-end check against llama.cpp itself is benchmarks/runtimes.py.)"""

import json

import numpy as np
import pytest

from surgeon.testing import run_cli, tree_digest

TYPES = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention"]


def write_gguf(path, arch="gemma3", blocks=5, pattern=None):
    import gguf

    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_block_count(blocks)
    w.add_sliding_window(8)
    if pattern is not None:
        w.add_sliding_window_pattern(pattern)
    w.add_tensor("token_embd.weight", np.arange(32, dtype=np.float32).reshape(4, 8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gemma3_text", "num_hidden_layers": 5, "layer_types": TYPES}))
    return d


def test_adds_the_pattern_from_layer_types_and_copies_the_tensors(tmp_path, model_dir):
    import gguf

    (tmp_path / "in").mkdir()
    src = write_gguf(tmp_path / "in" / "m.gguf")
    before = tree_digest(tmp_path / "in")
    r = run_cli("fix-gguf", src, "--model", model_dir, "-o", tmp_path / "fixed.gguf", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["added"] == {"gemma3.attention.sliding_window_pattern": [True, True, False, True, False]}
    reader = gguf.GGUFReader(str(tmp_path / "fixed.gguf"))
    assert reader.fields["gemma3.attention.sliding_window_pattern"].contents() == [True, True, False, True, False]
    assert reader.fields["gemma3.attention.sliding_window"].contents() == 8
    assert np.array_equal(reader.tensors[0].data, np.arange(32, dtype=np.float32).reshape(4, 8))
    assert tree_digest(tmp_path / "in") == before
    again = run_cli("fix-gguf", tmp_path / "fixed.gguf", "--model", model_dir, "-o", tmp_path / "twice.gguf")
    assert again.exit_code == 0 and "nothing" in again.stdout and not (tmp_path / "twice.gguf").exists()


def test_other_families_need_nothing(tmp_path, model_dir):
    src = write_gguf(tmp_path / "l.gguf", arch="llama")
    r = run_cli("fix-gguf", src, "--model", model_dir, "-o", tmp_path / "out.gguf")
    assert r.exit_code == 0 and "nothing" in r.stdout and not (tmp_path / "out.gguf").exists()


@pytest.mark.parametrize("case, message", [("blocks", "layers"), ("pattern", "differs"), ("exists", "exists"),
                                           ("missing", "not a file")])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, model_dir, case, message):
    src = write_gguf(tmp_path / "m.gguf", blocks=4 if case == "blocks" else 5,
                     pattern=[False] * 5 if case == "pattern" else None)
    out = tmp_path / "out.gguf"
    if case == "exists":
        out.write_bytes(b"keep")
    if case == "missing":
        src = tmp_path / "nope.gguf"
    r = run_cli("fix-gguf", src, "--model", model_dir, "-o", out)
    assert r.exit_code != 0 and message in r.stderr and "\n" not in r.stderr.strip()
    assert (out.read_bytes() == b"keep") if case == "exists" else not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".surgeon-tmp" in p.name]
