import logging

import pytest

from surgeon.arch.registry import family_names, get_family, resolve_family, unknown_layer_keys
from surgeon.errors import ArchitectureError
from surgeon.io.checkpoint import Checkpoint


def test_required_families_present():
    for f in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"):
        assert f in family_names()


def test_fixture_families_resolve_and_name_real_tensors(family_model):
    family, path = family_model
    ckpt = Checkpoint.open(path)
    fam = resolve_family(ckpt.config, ckpt.tensors)
    assert fam.name == family and not fam.inferred
    for i in range(ckpt.num_layers):
        for module in list(fam.attention.values()) + list(fam.ffn.values()):
            assert f"{fam.layer_prefix(i)}{module}.weight" in ckpt.tensors
    assert f"{fam.embed}.weight" in ckpt.tensors and f"{fam.final_norm}.weight" in ckpt.tensors
    assert unknown_layer_keys(ckpt.config, fam) == []


def test_phi3_fused_projections():
    fam = get_family("phi3")
    assert fam.fused == {"self_attn.qkv_proj": ("q", "k", "v"), "mlp.gate_up_proj": ("gate", "up")}
    assert fam.ffn_modules == ("gate_up_proj", "down_proj")


def test_qwen2_layer_threshold_key():
    assert "max_window_layers" in get_family("qwen2").layer_threshold_keys
    assert "layer_types" in get_family("gemma3_text").per_layer_lists


def test_unknown_family_inferred_with_warning(caplog):
    names = [f"model.layers.0.{m}.weight" for m in
             ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    with caplog.at_level(logging.WARNING):
        fam = resolve_family({"model_type": "brandnew"}, names)
    assert fam.inferred and fam.ffn_modules == ("gate_proj", "up_proj", "down_proj")
    assert "not in surgeon's registry" in caplog.text


def test_unknown_layout_is_an_error():
    with pytest.raises(ArchitectureError, match="not a known decoder family"):
        resolve_family({"model_type": "gpt2"}, ["transformer.h.0.attn.c_attn.weight"])


def test_unknown_per_layer_key_detected():
    fam = get_family("llama")
    cfg = {"num_hidden_layers": 3, "mystery_per_layer": [1, 2, 3], "layer_types": ["a", "b", "c"]}
    assert unknown_layer_keys(cfg, fam) == ["mystery_per_layer"]
