import json

import pytest
import torch
from safetensors.torch import load_file

from surgeon.errors import CheckpointError
from surgeon.io.checkpoint import Checkpoint
from surgeon.testing import copy_checkpoint


def test_single_file_tensors_match_safetensors(tiny_models):
    path = tiny_models["llama"]
    ckpt = Checkpoint.open(path)
    ref = load_file(str(path / "model.safetensors"))
    assert set(ckpt.tensors) == set(ref)
    for name, t in ckpt.iter_tensors():
        assert torch.equal(t, ref[name]), name
        assert ckpt.tensors[name].nbytes == t.numel() * t.element_size()
    assert not ckpt.sharded and ckpt.files == ["model.safetensors"]


def test_sharded_index_agrees(tiny_sharded):
    ckpt = Checkpoint.open(tiny_sharded)
    assert ckpt.sharded and len(ckpt.files) > 1
    index = json.loads((tiny_sharded / "model.safetensors.index.json").read_text())
    assert {n: i.file for n, i in ckpt.tensors.items()} == index["weight_map"]
    name = "model.layers.2.mlp.down_proj.weight"
    assert torch.equal(ckpt.get_tensor(name), load_file(str(tiny_sharded / index["weight_map"][name]))[name])


def test_bf16_roundtrip(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 1}))
    t = torch.randn(3, 5).to(torch.bfloat16)
    save_file({"x": t}, str(tmp_path / "model.safetensors"))
    assert torch.equal(Checkpoint.open(tmp_path).get_tensor("x"), t)


def test_missing_shard(tmp_path, tiny_sharded):
    d = copy_checkpoint(tiny_sharded, tmp_path / "m")
    (d / "model-00003-of-00012.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        Checkpoint.open(d)


def test_index_disagrees_with_shards(tmp_path, tiny_sharded):
    d = copy_checkpoint(tiny_sharded, tmp_path / "m")
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    name = next(iter(idx["weight_map"]))
    idx["weight_map"][name] = "model-00012-of-00012.safetensors" if idx["weight_map"][name] != "model-00012-of-00012.safetensors" else "model-00001-of-00012.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match="disagree|does not contain"):
        Checkpoint.open(d)


@pytest.mark.parametrize("bad", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_index_naming_files_outside_is_refused(tmp_path, tiny_sharded, bad):
    d = copy_checkpoint(tiny_sharded, tmp_path / "m")
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    name = next(iter(idx["weight_map"]))
    idx["weight_map"][name] = bad
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        Checkpoint.open(d)


def test_pickle_only_folder_is_refused_without_unpickling(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 2}')
    # A pickle that would run code if loaded: the reader must never touch it.
    (tmp_path / "pytorch_model.bin").write_bytes(b"cos\nsystem\n(S'touch /tmp/pwned-by-surgeon'\ntR.")
    with pytest.raises(CheckpointError, match="never unpickles"):
        Checkpoint.open(tmp_path)


def test_no_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        Checkpoint.open(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpoint.open(tmp_path / "nope")


def test_duplicate_tensor_across_shards(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 1}')
    save_file({"x": torch.zeros(2)}, str(tmp_path / "a.safetensors"))
    save_file({"x": torch.zeros(2)}, str(tmp_path / "b.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}))
    with pytest.raises(CheckpointError, match="appears in both|disagree"):
        Checkpoint.open(tmp_path)
