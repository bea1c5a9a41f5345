"""Healing and the shared training recipe: schedule, data order, loss, merge, resume, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from surgeon.errors import DataError, UsageError
from surgeon.testing import corpus, run_cli
from surgeon.train import ModelSetup, TrainConfig, data_indices, effective_warmup, lr_factor

SEQ = 32


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("heal-data") / "corpus.txt"
    p.write_text("\n\n".join(corpus(400)), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def examples(tiny_models, text_file):
    from transformers import AutoTokenizer

    from surgeon.data import training_examples

    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    return list(training_examples(str(text_file), tok, seq_len=SEQ))


def _load(path, **setup):
    from surgeon.train import load_trainable, seed_everything

    seed_everything(0)
    return load_trainable(path, ModelSetup(**setup))


# ------------------------------------------------------------------ pure parts
def test_schedule_warmup_capped_and_cosine():
    assert effective_warmup(100, 50) == 5
    assert effective_warmup(100, 5000) == 100
    assert effective_warmup(0, 100) == 0
    steps, w = 50, effective_warmup(100, 50)
    f = [lr_factor(s, steps, w) for s in range(steps)]
    assert f[0] == pytest.approx(1 / w) and f[w - 1] == pytest.approx(1.0)
    assert f[w] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[w:], f[w + 1:]))  # cosine decreases
    assert 0 < f[-1] < 0.01


def test_data_order_is_seeded_and_covers_every_example():
    n = 10
    a = data_indices(n, seed=3, start=0, count=30)
    assert a == data_indices(n, seed=3, start=0, count=30)
    assert a != data_indices(n, seed=4, start=0, count=30)
    for epoch in range(3):
        assert sorted(a[epoch * n:(epoch + 1) * n]) == list(range(n))
    assert data_indices(n, 3, 7, 5) == a[7:12]  # any position is reachable directly (resume)


@pytest.mark.parametrize("kwargs", [dict(steps=0), dict(batch_size=0), dict(grad_accum=0), dict(lr=0.0),
                                    dict(warmup=-1), dict(save_every=-1)])
def test_train_config_rejects(kwargs):
    with pytest.raises(UsageError):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(rank=0), dict(method="full", quant="nf4"), dict(dropout=1.0),
                                    dict(quant="int3"), dict(method="prefix")])
def test_model_setup_rejects(kwargs):
    with pytest.raises(UsageError):
        ModelSetup(**kwargs)


@pytest.mark.parametrize("flag, value", [("--steps", "0"), ("--rank", "0"), ("--batch-size", "0")])
def test_cli_bad_numbers(tiny_models, tmp_path, text_file, flag, value):
    r = run_cli("heal", tiny_models["llama"], "--data", text_file, "-o", tmp_path / "o", flag, value)
    assert r.exit_code == 2
    assert flag in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ model setup
def test_lora_targets_the_family_ffn(family_model):
    family, path = family_model
    from peft.tuners.lora import LoraLayer

    from surgeon.train import checkpoint_family

    model = _load(path, quant="none")
    wrapped = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert wrapped == set(checkpoint_family(path).ffn_modules)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_unknown_target_module_is_a_usage_error(tiny_models):
    with pytest.raises(UsageError, match="not_a_proj.*choose from.*down_proj"):
        _load(tiny_models["llama"], quant="none", target_modules=("not_a_proj",))


def test_nf4_base_is_4bit(tiny_models):
    import bitsandbytes as bnb

    model = _load(tiny_models["llama"])
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    assert isinstance(layer.base_layer, bnb.nn.Linear4bit)
    assert layer.base_layer.weight.quant_state.quant_type == "nf4"


# ------------------------------------------------------------------ the loop
def test_loss_decreases(tiny_models, examples):
    from surgeon.train import train

    model = _load(tiny_models["llama"], quant="none")
    seen = []
    r = train(model, examples, TrainConfig(steps=24, lr=2e-2, warmup=2, batch_size=4),
              progress=lambda info: seen.append(info))
    assert len(r.losses) == 24 and [i.step for i in seen] == list(range(1, 25))
    assert seen[-1].eta_s == 0 and seen[0].tokens_per_s > 0
    assert r.tokens == 24 * 4 * SEQ
    first, last = r.losses[0], sum(r.losses[-4:]) / 4
    assert last < first - 0.2, r.losses


def test_custom_loss_fn_contract(tiny_models, examples):
    import torch

    from surgeon.train import train

    model = _load(tiny_models["llama"], quant="none")
    calls = []

    def loss_fn(m, batch):
        calls.append((batch["step"], batch["micro"], tuple(batch["input_ids"].shape), batch["labels"].dtype))
        out = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return out.loss, {"double": out.loss.detach() * 2}

    r = train(model, examples, TrainConfig(steps=2, grad_accum=2, batch_size=3, warmup=0), loss_fn=loss_fn)
    assert [(s, m) for s, m, _, _ in calls] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert calls[0][2] == (3, SEQ) and calls[0][3] == torch.long
    assert r.metrics[0]["double"] == pytest.approx(2 * r.losses[0], rel=1e-5)


def test_resume_reaches_the_same_weights(tiny_models, examples, tmp_path):
    import torch

    from surgeon.train import train, trainable_state

    cfg = TrainConfig(steps=8, lr=1e-2, warmup=2, batch_size=2, grad_accum=2, save_every=3, seed=5)

    class Stop(Exception):
        pass

    def stop_at(k):
        def cb(info):
            if info.step == k:
                raise Stop
        return cb

    model = _load(tiny_models["llama"], quant="none")
    ref = train(model, examples, cfg, checkpoint_dir=tmp_path / "a")
    ref_w = trainable_state(model)

    model = _load(tiny_models["llama"], quant="none")
    with pytest.raises(Stop):
        train(model, examples, cfg, checkpoint_dir=tmp_path / "b", progress=stop_at(5))
    assert (tmp_path / "b" / "latest").read_text().strip() == "step-00000003"
    model = _load(tiny_models["llama"], quant="none", dropout=0.05)
    with torch.no_grad():  # scramble: resume must restore the checkpoint, not rely on the init
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5)
    res = train(model, examples, cfg, checkpoint_dir=tmp_path / "b", resume=True)
    assert res.resumed_from == 3 and res.losses == ref.losses
    w = trainable_state(model)
    assert all(torch.equal(w[k], ref_w[k]) for k in ref_w)

    other = TrainConfig(steps=8, lr=1e-2, warmup=2, batch_size=2, grad_accum=2, save_every=3, seed=6)
    with pytest.raises(UsageError, match="seed"):
        train(_load(tiny_models["llama"], quant="none"), examples, other, checkpoint_dir=tmp_path / "b", resume=True)


def test_too_little_data_and_oom(tiny_models, examples):
    import torch

    from surgeon.train import train

    model = _load(tiny_models["llama"], quant="none")
    with pytest.raises(DataError, match="fewer than one batch"):
        train(model, examples[:3], TrainConfig(steps=1, batch_size=4))

    def oom(m, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(UsageError) as e:
        train(model, examples, TrainConfig(steps=1, batch_size=2), loss_fn=oom)
    assert "out of memory" in str(e.value)
    for knob in ("--batch-size", "--seq-len", "--grad-accum"):
        assert knob in str(e.value)


# ------------------------------------------------------------------ merge
@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_merged_output_matches_peft_logits(tiny_models, examples, tmp_path, family):
    import torch
    from transformers import AutoModelForCausalLM

    from surgeon.commands.output import save_merged
    from surgeon.train import train

    src = tiny_models[family]
    model = _load(src, quant="none")
    train(model, examples, TrainConfig(steps=6, lr=2e-2, warmup=1, batch_size=4))
    model.eval()
    x = torch.tensor([examples[0]["input_ids"], examples[1]["input_ids"]])
    with torch.no_grad():
        want = model(input_ids=x).logits
    save_merged(model, src, tmp_path / "m")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    original = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        got = merged(input_ids=x).logits
        orig = original(input_ids=x).logits
    assert torch.allclose(got, want, atol=2e-5, rtol=1e-5), (got - want).abs().max()
    assert (orig - want).abs().max() > 1e-2  # training changed the model, so the match means something
    assert not (tmp_path / "m" / "adapter_config.json").exists()


# ------------------------------------------------------------------ the command
def test_heal_nf4_cli_merges_into_original_float_weights(tiny_models, text_file, tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    src = tiny_models["llama"]
    out = tmp_path / "healed"
    r = run_cli("heal", src, "--data", text_file, "-o", out, "--steps", "6", "--seq-len", SEQ, "--warmup", "1",
                "--lr", "1e-2", "--eval-samples", "4", "--save-every", "2", "--save-adapter", "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["before"]["loss"] > 0 and res["after"]["tokens"] == 4 * (SEQ - 1)
    assert not Path(str(out) + ".checkpoints").exists()  # default checkpoint folder removed after success
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg
    heal = json.loads((out / "surgeon_provenance.json").read_text())["operations"][-1]["heal"]
    assert heal["loss_before"] == pytest.approx(res["before"]["loss"])
    assert heal["loss_after"] == pytest.approx(res["after"]["loss"])

    # merged = original float weight + B @ A * alpha/r, exactly (not the dequantized 4-bit weight)
    merged = load_file(out / "model.safetensors")
    orig = load_file(Path(src) / "model.safetensors")
    ad = load_file(out / "adapter" / "adapter_model.safetensors")
    key = "model.layers.1.mlp.down_proj"
    a = ad[f"base_model.model.{key}.lora_A.weight"]
    b = ad[f"base_model.model.{key}.lora_B.weight"]
    assert torch.allclose(merged[key + ".weight"], orig[key + ".weight"] + b @ a * 1.0, atol=1e-6)
    assert torch.equal(merged["model.layers.1.self_attn.q_proj.weight"], orig["model.layers.1.self_attn.q_proj.weight"])
    AutoModelForCausalLM.from_pretrained(out)  # loads with stock transformers


def test_heal_full_method(tiny_models, text_file, tmp_path):
    from surgeon.commands.heal import HealOptions
    from surgeon.commands.heal import run as heal

    r = heal(HealOptions(model=tiny_models["qwen3"], output=tmp_path / "o", data=str(text_file), method="full",
                         quant="none", steps=8, lr=3e-3, warmup=1, seq_len=SEQ, eval_samples=4, save_every=0))
    assert r.after.loss < r.before.loss
    assert r.after.loss == pytest.approx(r.trained.loss, abs=1e-4)


def test_heal_small_data_is_a_data_error(tiny_models, tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("\n\n".join(corpus(30)), encoding="utf-8")  # ~500 training tokens
    for seq_len, expect in (("16", "fewer than one batch"), ("4096", "fewer than seq_len")):
        r = run_cli("heal", tiny_models["llama"], "--data", small, "-o", tmp_path / "o", "--seq-len", seq_len,
                    "--batch-size", "64", "--quant", "none")
        assert r.exit_code == 1 and r.stderr.startswith("error:") and expect in r.stderr, r.stderr
        assert "--seq-len" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_heal_unknown_module_cli(tiny_models, text_file, tmp_path):
    r = run_cli("heal", tiny_models["llama"], "--data", text_file, "-o", tmp_path / "o", "--seq-len", SEQ,
                "--quant", "none", "--target-modules", "fc1", "--steps", "1", "--eval-samples", "2")
    assert r.exit_code == 2 and "fc1" in r.stderr and "gate_proj" in r.stderr


@pytest.mark.parametrize("mode", ["logits", "residual"])
def test_prune_heal_with_distillation(tiny_models, text_file, tmp_path, mode):
    r = run_cli("prune", tiny_models["llama"], "--n", "2", "--start", "2", "-o", tmp_path / "p",
                "--heal", text_file, "--heal-steps", "6", "--heal-seq-len", SEQ, "--heal-quant", "none",
                "--heal-lr", "1e-2", "--heal-warmup", "1", "--heal-eval-samples", "4", "--heal-distill", mode)
    assert r.exit_code == 0, r.stderr
    ops = json.loads((tmp_path / "p" / "surgeon_provenance.json").read_text())["operations"]
    assert [o["operation"] for o in ops] == ["prune", "heal"]
    assert ops[-1]["heal"]["distill"]["mode"] == mode
    assert ops[-1]["heal"]["distill"]["teacher"] == str(tiny_models["llama"])
    if mode == "residual":
        assert ops[-1]["heal"]["distill"]["cut"] == [2, 2]
    assert ops[-1]["heal"]["loss_after"] < ops[-1]["heal"]["loss_before"]
    assert json.loads((tmp_path / "p" / "config.json").read_text())["num_hidden_layers"] == 4
    assert not any(p.name.startswith(".p") for p in tmp_path.iterdir())  # no temp folder left


# ------------------------------------------------------------------ slow
@pytest.mark.slow
@pytest.mark.parametrize("mode, processes", [("--cpu", 1), ("--multi_gpu", 2)])
def test_accelerate_launch(tiny_models, text_file, tmp_path, mode, processes):
    """accelerate 1.x runs `launch --cpu --num_processes 2` as ONE process (the simple launcher;
    mpirun only with --mpirun_hostfile); `launch --multi_gpu` on a CPU-only machine starts two
    torchrun ranks, which surgeon joins as gloo DDP. Both must work without code changes."""
    out = tmp_path / "ddp"
    accelerate = Path(sys.executable).parent / "accelerate"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.run([str(accelerate), "launch", mode, "--num_processes", "2", "--main_process_port", "29517",
                        "-m", "surgeon", "heal",
                        str(tiny_models["llama"]), "--data", str(text_file), "-o", str(out), "--steps", "4",
                        "--seq-len", str(SEQ), "--warmup", "1", "--eval-samples", "4", "--json"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    heal = json.loads((out / "surgeon_provenance.json").read_text())["operations"][-1]["heal"]
    assert heal["processes"] == processes
    assert heal["train_tokens"] == 4 * 4 * processes * SEQ  # steps x batch x processes x seq
    assert json.loads(p.stdout)["after"]["loss"] == pytest.approx(heal["loss_after"])
    shutil.rmtree(out)


@pytest.mark.slow
def test_smollm2_prune_heal_lowers_heldout_loss(smollm2, tmp_path):
    from surgeon.commands.heal import HealOptions
    from surgeon.commands.heal import run as heal
    from surgeon.commands.prune import PruneOptions
    from surgeon.commands.prune import run as prune

    # A CI-sized run (the 100-step acceptance figure is benchmarks/heal_smollm2.py): the deepest-but-last
    # block wrecks SmolLM2 (~20 nats), so a short heal must recover a lot of it.
    prune(PruneOptions(model=smollm2, output=tmp_path / "p", n=6, start=23))
    r = heal(HealOptions(model=tmp_path / "p", output=tmp_path / "h", data="builtin:sotu", quant="none", steps=25,
                         warmup=3, batch_size=4, seq_len=128, eval_samples=16, save_every=0))
    assert r.before.loss - r.after.loss >= 0.2, (r.before.loss, r.after.loss)


# ------------------------------------------------------------------ memory: one float copy of embedding and head
@pytest.fixture(scope="module")
def bf16_models(tmp_path_factory) -> dict:
    """bf16 tiny checkpoints: an untied head (llama) and a tied, scaled embedding (gemma3_text, soft-capping off)."""
    from surgeon.testing import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("bf16")
    return {f: make_tiny_checkpoint(f, root / f, dtype="bfloat16") for f in ("llama", "gemma3_text")}


def test_held_dtype_keeps_the_values_peft_would_compute_with():
    """(stored, compute, wide) -> held: exact casts only, and only when narrower than the wide dtype."""
    import torch

    from surgeon.train.frozen import held_dtype

    bf, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    cases = {(bf, fp32, fp32): bf,  # CPU, bf16 checkpoint: stored bf16, computed in fp32
             (fp32, fp32, fp32): None,  # CPU, fp32 checkpoint: nothing narrower to hold
             (bf, bf, fp32): bf,  # GPU, bf16 checkpoint (peft would cast to fp32)
             (fp32, bf, fp32): bf,  # GPU, fp32 checkpoint: loaded as bf16 values anyway
             (fp16, bf, fp32): bf,  # fp16 is not exact in bf16: the bf16 values are what peft sees
             (fp16, fp32, fp32): fp16,
             (bf, bf, bf): None}  # an NF4 teacher on a GPU: computes in bf16 as held
    assert {k: held_dtype(*k) for k in cases} == cases


def _wide_and_held(path):
    """The same NF4 + LoRA model twice: embedding and head copied to fp32 (peft's way), and held in bf16
    with the head multiplied in slices of 37 rows (which do not divide the 512-token vocabulary)."""
    from unittest import mock

    from surgeon.train import frozen

    with mock.patch.object(frozen, "narrower", lambda stored, wide: False):
        wide = _load(path, quant="nf4")
    with mock.patch.object(frozen, "HEAD_SLICE_ELEMENTS", 37 * 64):  # hidden size 64
        return wide, _load(path, quant="nf4")


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_nf4_holds_a_bf16_embedding_and_head_and_computes_what_fp32_copies_compute(bf16_models, examples, family):
    """A bf16 checkpoint's embedding and head stay bf16 (buffers peft does not cast; a tied head shares the
    embedding's), no fp32 copy of either exists, and the embedding output, logits, loss and LoRA gradients
    equal those of fp32 copies: the lookup bitwise, the rest to float32 rounding."""
    import torch

    from surgeon.train.frozen import HeldLinear

    wide, held = _wide_and_held(bf16_models[family])
    base = held.get_base_model()
    emb, head = base.get_input_embeddings(), base.get_output_embeddings()
    assert isinstance(head, HeldLinear) and emb.weight.dtype == head.weight.dtype == torch.bfloat16 and head.rows == 37
    assert "weight" in emb._buffers and (head.weight is emb.weight) == (family == "gemma3_text")
    vocab = emb.weight.shape[0]
    assert not any(p.shape[0] == vocab for p in held.parameters())  # no float copy as a parameter
    batch = {k: torch.tensor([e[k] for e in examples[:2]]) for k in ("input_ids", "labels")}
    outs = []
    for m in (wide, held):
        m.zero_grad()
        torch.manual_seed(0)  # the same LoRA dropout masks
        out = m(input_ids=batch["input_ids"], labels=batch["labels"])
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}
        outs.append((m.get_base_model().get_input_embeddings()(batch["input_ids"]), out.logits, out.loss, grads))
    (e1, z1, l1, g1), (e2, z2, l2, g2) = outs
    assert e1.dtype == e2.dtype == torch.float32 and torch.equal(e1, e2)
    assert torch.allclose(z1, z2, atol=1e-5, rtol=1e-5) and abs(float(l1.detach()) - float(l2.detach())) < 1e-5
    assert g1.keys() == g2.keys()
    worst = max(float((g1[n] - g2[n]).abs().max() / g1[n].abs().max().clamp_min(1e-12)) for n in g1)
    assert worst < 1e-4, worst


def test_heal_bf16_nf4_matches_fp32_copies_and_releases_the_model(bf16_models, text_file, tmp_path, monkeypatch):
    """heal --quant nf4 of a bf16 checkpoint: before / as trained / after losses equal those of a run with fp32
    copies of the embedding and head, and the trained model holds nothing frozen once it has been measured."""
    from surgeon.commands import heal
    from surgeon.train import frozen
    from surgeon.train import model as train_model

    released = []
    release = train_model.release_frozen
    monkeypatch.setattr(train_model, "release_frozen", lambda m: released.append(release(m)) or released[-1])

    def run(name):
        return heal.run(heal.HealOptions(model=bf16_models["llama"], output=tmp_path / name, data=str(text_file),
                                         steps=4, seq_len=SEQ, warmup=1, lr=1e-2, eval_samples=4, save_every=0,
                                         save_adapter=True))

    held = run("held")
    with monkeypatch.context() as m:
        m.setattr(frozen, "narrower", lambda stored, wide: False)
        wide = run("wide")
    for a, b in ((held.before, wide.before), (held.trained, wide.trained), (held.after, wide.after)):
        assert abs(a.loss - b.loss) < 1e-4, (a.loss, b.loss)
    assert held.after.loss < held.before.loss
    assert released[0] > 0 and released[0] < released[1]  # bf16 embedding + head vs fp32 copies
    assert (tmp_path / "held" / "adapter" / "adapter_model.safetensors").is_file()
