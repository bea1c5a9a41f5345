"""Consolidated bad-input suite: every command, one table. Each bad case must end in one line
`error: <problem>: <fix>`, a non-zero exit, no traceback, the input untouched and no output left.
Awkward-but-valid inputs (spaces, unicode, symlinks, read-only folders, mixed dtypes) must work."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from surgeon.testing import copy_checkpoint, edit_config, load_model, logits, run_cli, tree_digest


def _duplicate_shard_tensor(folder: Path) -> Path:
    """Two shards that both hold model.norm.weight (the index names only one)."""
    import torch
    from safetensors.torch import load_file, save_file

    shards = sorted(folder.glob("model-*.safetensors"))
    a = load_file(str(shards[0]))
    a["model.norm.weight"] = torch.ones(64)
    save_file(a, str(shards[0]), metadata={"format": "pt"})
    return folder


def _no_data(tmp: Path) -> Path:
    p = tmp / "short.txt"
    p.write_text("tiny.\n\nalso tiny.\n")
    return p


def _bad_jsonl(tmp: Path) -> Path:
    p = tmp / "bad.jsonl"
    p.write_text('{"text": "fine"}\n{"text": oops}\n')
    return p


def _empty(tmp: Path) -> Path:
    p = tmp / "empty.txt"
    p.write_text("")
    return p


# id -> (model setup, argv after the model (use {data} / {out}), expected text in the error)
# A setup receives (tiny_models, tiny_sharded, tmp) and returns the model folder.
CASES = {
    "prune-n-too-big": ("llama", ["prune", "{model}", "--start", "0", "--n", "6", "-o", "{out}"], "--n"),
    "prune-start-negative": ("llama", ["prune", "{model}", "--start", "-1", "--n", "2", "-o", "{out}"], "--start"),
    "prune-last-layer": ("llama", ["prune", "{model}", "--start", "4", "--n", "2", "-o", "{out}"], "--allow-last"),
    "prune-no-output": ("llama", ["prune", "{model}", "--start", "1", "--n", "2"], "-o/--output"),
    "prune-output-is-input": ("llama", ["prune", "{model}", "--start", "1", "--n", "2", "-o", "{model}"], "output"),
    "prune-bad-analysis": ("llama", ["prune", "{model}", "--n", "2", "--analysis", "{data}", "-o", "{out}"], "--analysis"),
    "extract-depth-zero": ("llama", ["extract", "{model}", "--depth", "0", "-o", "{out}"], "--depth"),
    "extract-depth-too-big": ("llama", ["extract", "{model}", "--depth", "7", "-o", "{out}"], "--depth"),
    "extract-bad-dtype": ("llama", ["extract", "{model}", "--depth", "2", "--dtype", "int8", "-o", "{out}"], "--dtype"),
    "extract-bad-shard-size": ("llama", ["extract", "{model}", "--depth", "2", "--max-shard-size", "lots", "-o", "{out}"], "shard"),
    "extract-ffn-fraction": ("llama", ["extract", "{model}", "--ffn", "1.5", "-o", "{out}"], "outside (0, 1]"),
    "extract-heads-gqa": ("llama", ["extract", "{model}", "--heads", "3", "-o", "{out}"], "KV group"),
    "sort-width-empty-data": ("llama", ["sort-width", "{model}", "--data", "{empty}", "-o", "{out}"], "empty"),
    "sort-width-no-usable-docs": ("llama", ["sort-width", "{model}", "--data", "{short}", "--seq-len", "64", "-o", "{out}"], "--pack"),
    "sort-width-bad-jsonl": ("llama", ["sort-width", "{model}", "--data", "{badjsonl}", "--seq-len", "2", "-o", "{out}"], "line 2"),
    "sort-width-samples-0": ("llama", ["sort-width", "{model}", "--data", "builtin:sotu", "--samples", "0", "-o", "{out}"], "--samples"),
    "sort-width-missing-file": ("llama", ["sort-width", "{model}", "--data", "nope.txt", "-o", "{out}"], "nope.txt"),
    "analyze-samples-0": ("llama", ["analyze", "{model}", "--data", "builtin:sotu", "--samples", "0", "--out", "{out}"], "--samples"),
    "analyze-no-usable-docs": ("llama", ["analyze", "{model}", "--data", "{short}", "--seq-len", "64", "--out", "{out}"], "--pack"),
    "heal-steps-0": ("llama", ["heal", "{model}", "--data", "builtin:sotu", "--steps", "0", "-o", "{out}"], "--steps"),
    "heal-rank-0": ("llama", ["heal", "{model}", "--data", "builtin:sotu", "--rank", "0", "-o", "{out}"], "--rank"),
    "heal-unknown-module": ("llama", ["heal", "{model}", "--data", "builtin:sotu", "--target-modules", "nope",
                                      "--quant", "none", "--steps", "1", "-o", "{out}"], "nope"),
    "soft-exits-decreasing": ("llama", ["soft", "{model}", "--data", "builtin:sotu", "--exits", "4,2", "-o", "{out}"], "must increase"),
    "soft-ffn-exits-bad": ("llama", ["soft", "{model}", "--data", "builtin:sotu", "--ffn-exits", "0.5,0.25",
                                     "--quant", "none", "-o", "{out}"], "must increase"),
    "eval-no-exit": ("llama", ["eval", "{model}"], "--exit"),
    "eval-unknown-task": ("llama", ["eval", "{model}", "--exit", "3", "--tasks", "hellaswag,nope"], "unknown task"),
    "manifest-validate-missing": ("llama", ["manifest", "validate", "{out}"], "sorted_manifest.json"),
    "generate-exit-too-deep": ("llama", ["generate", "{model}", "--prompt", "hi", "--exit", "9"], "outside 1..6"),
    "generate-draft-exit-0": ("llama", ["generate", "{model}", "--prompt", "hi", "--draft-exit", "0"], "outside 1..6"),
    "config-layers-disagree": ("layers8", ["prune", "{model}", "--start", "1", "--n", "2", "-o", "{out}"], "num_hidden_layers=8"),
    "config-hidden-disagrees": ("hidden96", ["extract", "{model}", "--depth", "2", "-o", "{out}"], "hidden_size=96"),
    "config-vocab-disagrees": ("vocab9", ["extract", "{model}", "--depth", "2", "-o", "{out}"], "vocab_size=9"),
    "duplicate-tensor-in-shards": ("dup", ["extract", "{model}", "--depth", "2", "-o", "{out}"], "model.norm.weight"),
    "missing-model": ("missing", ["prune", "{model}", "--start", "1", "--n", "2", "-o", "{out}"], "does not exist"),
    "inspect-missing": ("missing", ["inspect", "{model}"], "does not exist"),
    "pickle-only": ("pickle", ["extract", "{model}", "--depth", "2", "-o", "{out}"], "pickle"),
}


def _model(kind: str, tiny_models, tiny_sharded, tmp: Path) -> Path:
    if kind in tiny_models:
        return copy_checkpoint(tiny_models[kind], tmp / "model")
    if kind == "layers8":
        return edit_config(copy_checkpoint(tiny_models["llama"], tmp / "model"), num_hidden_layers=8)
    if kind == "hidden96":
        return edit_config(copy_checkpoint(tiny_models["llama"], tmp / "model"), hidden_size=96)
    if kind == "vocab9":
        return edit_config(copy_checkpoint(tiny_models["llama"], tmp / "model"), vocab_size=9)
    if kind == "dup":
        return _duplicate_shard_tensor(copy_checkpoint(tiny_sharded, tmp / "model"))
    if kind == "missing":
        return tmp / "no such model"
    if kind == "pickle":
        d = tmp / "model"
        d.mkdir()
        shutil.copy(tiny_models["llama"] / "config.json", d / "config.json")
        (d / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not really")
        return d
    raise AssertionError(kind)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, tiny_models, tiny_sharded, tmp_path):
    kind, argv, expected = CASES[case]
    model = _model(kind, tiny_models, tiny_sharded, tmp_path)
    before = tree_digest(model) if model.exists() else None
    out = tmp_path / "out"
    subs = {"{model}": str(model), "{out}": str(out), "{data}": str(_bad_jsonl(tmp_path)),
            "{empty}": str(_empty(tmp_path)), "{short}": str(_no_data(tmp_path)), "{badjsonl}": str(_bad_jsonl(tmp_path))}
    args = [subs.get(a, a) for a in argv]
    r = run_cli(*args)
    assert r.exit_code != 0, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:"), r.output
    assert expected in lines[-1], lines[-1]
    assert "Traceback" not in r.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if "surgeon-tmp" in p.name]
    if before is not None:
        assert tree_digest(model) == before


# ---------------------------------------------------------------- awkward but valid inputs


def test_spaces_unicode_symlink_readonly(tiny_models, tmp_path):
    """A read-only model folder reached through a symlink, with spaces and unicode in every path."""
    src = copy_checkpoint(tiny_models["gemma3_text"], tmp_path / "my models" / "modèle ü")
    link = tmp_path / "lien vers modèle"
    link.symlink_to(src, target_is_directory=True)
    before = tree_digest(src)
    for p in [src, *src.iterdir()]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        out = tmp_path / "sorties ✂" / "élagué"
        r = run_cli("prune", str(link), "--start", "1", "--n", "2", "-o", str(out))
        assert r.exit_code == 0, r.output
        r = run_cli("extract", str(link), "--depth", "3", "--ffn", "0.5", "-o", str(tmp_path / "ext ü"))
        assert r.exit_code == 0, r.output
        r = run_cli("inspect", str(link), "--json")
        assert r.exit_code == 0 and json.loads(r.output)["num_layers"] == 6
    finally:
        for p in [src, *src.iterdir()]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    assert tree_digest(src) == before
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4
    assert not link.resolve() == out.resolve()
    assert os.path.islink(link)


def test_mixed_dtypes_are_kept_or_converted(tiny_models, tmp_path):
    """A checkpoint with bf16 layers and an fp32 embedding/norm: kept per tensor, or all converted."""
    import torch
    from safetensors.torch import load_file, save_file

    src = copy_checkpoint(tiny_models["llama"], tmp_path / "mixed")
    sd = load_file(str(src / "model.safetensors"))
    sd = {k: (v.to(torch.bfloat16) if ".layers." in k else v.float()) for k, v in sd.items()}
    save_file(sd, str(src / "model.safetensors"), metadata={"format": "pt"})
    r = run_cli("prune", str(src), "--start", "1", "--n", "2", "-o", str(tmp_path / "kept"))
    assert r.exit_code == 0, r.output
    kept = load_file(str(tmp_path / "kept" / "model.safetensors"))
    assert kept["model.layers.0.mlp.down_proj.weight"].dtype == torch.bfloat16
    assert kept["model.embed_tokens.weight"].dtype == torch.float32
    r = run_cli("prune", str(src), "--start", "1", "--n", "2", "--dtype", "fp32", "-o", str(tmp_path / "conv"))
    assert r.exit_code == 0, r.output
    conv = load_file(str(tmp_path / "conv" / "model.safetensors"))
    assert {t.dtype for t in conv.values()} == {torch.float32}
    assert torch.equal(conv["model.layers.0.mlp.down_proj.weight"], kept["model.layers.0.mlp.down_proj.weight"].float())
    ids = [[1, 2, 3, 4, 5, 6]]
    assert torch.allclose(logits(load_model(tmp_path / "kept"), ids), logits(load_model(tmp_path / "conv"), ids), atol=1e-5)
