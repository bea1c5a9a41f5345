"""`surgeon import-gguf` streams tensor by tensor and writes, to the byte, what loading the GGUF whole
through transformers and saving it writes (`import_gguf(..., whole=True)`, the previous path).
The memory bound is benchmarks/scale_memory.py's `import_gguf` case."""

import json
from types import SimpleNamespace

import pytest
import torch

from surgeon.commands.import_gguf import import_gguf
from surgeon.io import gguf_import
from surgeon.io.gguf_tensors import GgufTensors
from surgeon.testing import load_weights, make_tiny_checkpoint, run_cli, write_gguf

# family -> (tiny checkpoint overrides, 2-D weight type): Llama (q/k un-permuted), Qwen2 (q/k/v biases),
# Qwen3 with tied embeddings (its GGUF config has no head_dim, so the tiny one uses Qwen3's 128)
FIXTURES = {"llama": ({}, "Q8_0"), "qwen2": ({}, "Q4_1"), "qwen3": ({"head_dim": 128}, "Q5_0")}


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("gguf")
    out = {}
    for family, (overrides, qtype) in FIXTURES.items():
        ckpt = make_tiny_checkpoint(family, root / family, **overrides)
        out[family] = write_gguf(ckpt, root / f"{family}.{qtype}.gguf", qtype)
        out[f"{family}-ckpt"] = ckpt
    return out


def files(folder) -> dict[str, bytes]:
    """Every file's bytes; the provenance record's wall-clock time left out."""
    out = {}
    for p in sorted(folder.iterdir()):
        data = p.read_bytes()
        if p.name == "surgeon_provenance.json":
            record = json.loads(data)
            for op in record["operations"]:
                op.pop("time")
            data = json.dumps(record, sort_keys=True).encode()
        out[p.name] = data
    return out


@pytest.mark.parametrize("family", list(FIXTURES))
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_streamed_is_the_whole_model_import_to_the_byte(tmp_path, ggufs, family, dtype, monkeypatch):
    monkeypatch.setattr(gguf_import, "BLOCK_BYTES", 1 << 12)  # several blocks of rows per tiny tensor
    streamed = import_gguf(ggufs[family], tmp_path / "streamed", dtype)
    whole = import_gguf(ggufs[family], tmp_path / "whole", dtype, whole=True)
    got, want = files(tmp_path / "streamed"), files(tmp_path / "whole")
    assert list(got) == list(want) and "model.safetensors" in got
    for name in want:
        assert got[name] == want[name], name
    summary = (streamed.architecture, streamed.num_layers, streamed.num_parameters, streamed.dtype)
    assert summary == (whole.architecture, whole.num_layers, whole.num_parameters, whole.dtype)


def test_sharded_layout_is_save_pretrained_s(tmp_path, ggufs):
    """Over the shard size, files, index and the tensors in each are save_pretrained's (its split, not ours)."""
    gguf, cap = ggufs["llama"], 40_000  # the embedding (512 x 64 fp32 = 131 kB) is over it: a file of its own
    (tmp_path / "streamed").mkdir()
    (tmp_path / "whole").mkdir()
    with GgufTensors(gguf) as tensors:
        plan = gguf_import.plan_import(gguf, torch.float32, tensors, max_shard_bytes=cap)
        gguf_import.write_streamed(plan, tensors, tmp_path / "streamed")
    gguf_import.write_whole(gguf, tmp_path / "whole", torch.float32, max_shard_bytes=cap)
    got, want = files(tmp_path / "streamed"), files(tmp_path / "whole")
    assert len([n for n in want if n.endswith(".safetensors")]) > 3 and "model.safetensors.index.json" in want
    assert got == want


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_an_f32_gguf_imports_back_to_the_checkpoint(tmp_path, ggufs, family):
    """llama.cpp's q/k permutation is undone and a tied head stays tied: the exact source weights."""
    src = ggufs[f"{family}-ckpt"]
    gguf = write_gguf(src, tmp_path / "m.gguf", "F32")
    import_gguf(gguf, tmp_path / "out", "fp32")
    a, b = load_weights(src), load_weights(tmp_path / "out")
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] == (family == "qwen3")


def test_which_architectures_stream():
    def table(arch, swapped=False):
        return SimpleNamespace(architecture=arch, byte_swapped=swapped)

    assert gguf_import.not_streamable(table("llama")) is None
    assert gguf_import.not_streamable(table("qwen2")) is None
    assert gguf_import.not_streamable(table("gemma2")) is None
    assert "one to one" in gguf_import.not_streamable(table("qwen2moe"))
    assert "integration" in gguf_import.not_streamable(table("qwen35"))
    assert "byte order" in gguf_import.not_streamable(table("llama", swapped=True))


def test_a_truncated_file_is_one_line_and_writes_nothing(tmp_path, ggufs):
    data = ggufs["llama"].read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[: len(data) - 5000])
    r = run_cli("import-gguf", bad, "-o", tmp_path / "out")
    assert r.exit_code != 0 and "\n" not in r.stderr.strip()
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if ".surgeon-tmp" in p.name]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["smollm2", "qwen_coder"])
def test_real_gguf_streamed_is_the_whole_model_import(tmp_path, which):
    """SmolLM2-135M (Llama, Q4_1 + Q8_0, tied) and Qwen2.5-Coder-0.5B (Qwen2, Q4_K_M: K-quants, untied)."""
    from surgeon.commands.demo import ensure_demo_gguf, ensure_qwen_coder_gguf

    gguf = ensure_demo_gguf() if which == "smollm2" else ensure_qwen_coder_gguf()
    import_gguf(gguf, tmp_path / "streamed", "bf16")
    import_gguf(gguf, tmp_path / "whole", "bf16", whole=True)
    assert files(tmp_path / "streamed") == files(tmp_path / "whole")
