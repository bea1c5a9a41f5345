"""Sorted Fine-Tuning: exits, the chunked sorted loss, per-exit evaluation, and the soft recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from surgeon.errors import UsageError
from surgeon.exits import default_exits, exit_name, parse_depths
from surgeon.testing import load_model, run_cli

pytestmark = pytest.mark.usefixtures("one_thread_module")

# ---------------------------------------------------------------------------------------- exits


def test_default_exits_spread_from_a_quarter_to_the_top():
    assert default_exits(32) == (8, 12, 16, 20, 24, 28, 32)
    assert default_exits(40) == (10, 15, 20, 25, 30, 35, 40)
    assert default_exits(6) == (2, 3, 4, 5, 6)
    for n in (1, 2, 3, 7, 30, 80):
        ex = default_exits(n)
        assert ex[-1] == n and list(ex) == sorted(set(ex)) and ex[0] >= 1


def test_parse_depths_accepts_strings_and_sequences():
    assert parse_depths("10, 15,30", 30) == (10, 15, 30)
    assert parse_depths([2, 4], 6) == (2, 4)
    assert parse_depths(None, 6) == default_exits(6)
    assert parse_depths("6", 6) == (6,)  # plain SFT


@pytest.mark.parametrize("spec,words", [
    ("4,2", "must increase"),
    ("2,2,4", "listed twice"),
    ("0,3", "keeps no layer"),
    ("2,7", "deeper than the model"),
    ("2,x", "not an integer"),
    ("2,,4", "empty item"),
    ("-1,4", "keeps no layer"),
])
def test_parse_depths_errors_name_the_problem(spec, words):
    with pytest.raises(UsageError, match=words):
        parse_depths(spec, 6)


def test_prefix_exits_are_named_depth_k():
    assert [exit_name(n) for n in (2, 3)] == ["depth-2", "depth-3"]


# ---------------------------------------------------------------------------------------- loss


def _batch(seed=0, vocab=500):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 37), generator=g)
    labels = ids.clone()
    labels[0, :12] = -100  # an instruction prompt
    mask = torch.ones_like(ids)
    mask[2, 30:] = 0  # right padding
    labels[2, 30:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_close_grads(a, b, rtol=1e-4):
    assert set(a) == set(b)
    for n in a:
        scale = b[n].abs().max().item() + 1e-12
        assert (a[n] - b[n]).abs().max().item() <= rtol * scale, n


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen3"])  # gemma2: soft-capping, tied head
def test_chunked_loss_equals_naive_loss_and_gradients(tiny_models, family):
    from surgeon.soft.losses import SortedLoss, naive_exit_losses

    model = load_model(tiny_models[family])
    batch = _batch()
    exits = [2, 4, 6]
    weights = [1.0, 2.0, 3.0]
    ref = naive_exit_losses(model, batch, exits)
    ref_total = sum(w * r for w, r in zip(weights, ref)) / sum(weights)
    model.zero_grad()
    ref_total.backward()
    g_ref = _grads(model)
    model.zero_grad()
    loss, metrics = SortedLoss(exits, "sum", weights, chunk_tokens=7)(model, batch)  # 7: many ragged chunks
    loss.backward()
    assert float(loss.detach()) == pytest.approx(float(ref_total.detach()), rel=1e-5)
    for n, r in zip(exits, ref):
        assert metrics[f"loss@{n}"] == pytest.approx(float(r.detach()), rel=1e-5)
    _assert_close_grads(_grads(model), g_ref)


def _wrap_head(model):
    """Replace the LM head by a subclass of nn.Linear sharing its weight: a head that is not a plain
    nn.Linear (as peft / bitsandbytes wrap it) takes the checkpointed path."""
    import torch

    class WrappedLinear(torch.nn.Linear):
        pass

    old = model.lm_head
    model.lm_head = WrappedLinear(old.in_features, old.out_features, bias=False)
    model.lm_head.weight = old.weight


def _naive_kd_total(model, batch, exits, weights):
    """Reference for exit_loss="kd": the deepest exit's CE, the others' KL(p_deepest.detach() || p_n),
    from full-vocabulary logits over the supervised tokens, weighted and normalized."""
    import torch

    from surgeon.eval.capture import exit_modules

    mods = exit_modules(model)
    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                output_hidden_states=True, use_cache=False)
    labels = batch["labels"][:, 1:].reshape(-1)
    keep = labels != -100

    def logits_of(n):
        z = out.logits if n == mods.num_layers else mods.logits(out.hidden_states[n])
        return z[:, :-1].reshape(-1, z.shape[-1])[keep].float()

    teacher = logits_of(exits[-1])
    logp_t = teacher.detach().log_softmax(-1)
    terms = []
    for n in exits[:-1]:
        logp = logits_of(n).log_softmax(-1)
        terms.append(torch.nn.functional.kl_div(logp, logp_t, reduction="batchmean", log_target=True))
    terms.append(torch.nn.functional.cross_entropy(teacher, labels[keep]))
    return sum(w * t for w, t in zip(weights, terms)) / sum(weights), terms


@pytest.mark.parametrize("family", ["llama", "gemma2"])  # gemma2: soft-capping, tied head
@pytest.mark.parametrize("wrapped", [False, True])  # True: a head that is not a plain nn.Linear (checkpointed path)
def test_distillation_loss_equals_naive_kl_and_gradients(tiny_models, family, wrapped):

    from surgeon.soft.losses import SortedLoss

    model = load_model(tiny_models[family])
    if wrapped:
        _wrap_head(model)
    batch = _batch()
    exits, weights = [2, 4, 6], [1.0, 2.0, 3.0]
    ref, terms = _naive_kd_total(model, batch, exits, weights)
    model.zero_grad()
    ref.backward()
    g_ref = _grads(model)
    model.zero_grad()
    loss, metrics = SortedLoss(exits, "sum", weights, chunk_tokens=7, exit_loss="kd")(model, batch)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    assert metrics["kl@2"] == pytest.approx(float(terms[0].detach()), rel=1e-4, abs=1e-6)
    assert metrics["loss@6"] == pytest.approx(float(terms[-1].detach()), rel=1e-5)
    _assert_close_grads(_grads(model), g_ref)


def test_shared_lr_scale_puts_the_norm_and_head_in_their_own_adamw_group(tiny_models, text_data, tmp_path):
    """--shared-lr-scale: one AdamW group for the final norm and head at F x the scheduled LR; with F = 1
    the run is the unscaled one exactly; after training, the shared weights moved less at F < 1."""
    import torch

    from surgeon.train.loop import _param_groups
    from surgeon.train.schedule import set_lr

    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    groups = _param_groups([a, b, c], {b: 0.1})
    assert [len(g["params"]) for g in groups] == [2, 1] and [g["lr_scale"] for g in groups] == [1.0, 0.1]
    opt = torch.optim.AdamW(groups, lr=1.0)
    set_lr(opt, 2e-4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-4, 2e-5])
    assert len(_param_groups([a, b], None)) == 1

    src = tiny_models["llama"]
    base = load_model(src)
    _run(src, text_data, tmp_path / "one", "2,4,6", steps=4)
    _run(src, text_data, tmp_path / "same", "2,4,6", steps=4, shared_lr_scale=1.0)
    _run(src, text_data, tmp_path / "slow", "2,4,6", steps=4, shared_lr_scale=0.01)
    one, same, slow = (load_model(tmp_path / x) for x in ("one", "same", "slow"))
    for (n, p1), (_, p2) in zip(one.state_dict().items(), same.state_dict().items()):
        assert torch.equal(p1, p2), n
    moved = lambda m, n: (m.state_dict()[n] - base.state_dict()[n]).abs().max().item()  # noqa: E731
    for n in ("model.norm.weight", "lm_head.weight"):
        assert moved(slow, n) < 0.05 * moved(one, n), n
    n = "model.layers.0.mlp.up_proj.weight"
    assert moved(slow, n) > 0.2 * moved(one, n)
    prov = json.loads((tmp_path / "slow" / "surgeon_provenance.json").read_text())["operations"][-1]["soft"]
    assert prov["shared_lr_scale"] == 0.01


def test_exit_weight_schemes_and_curriculum():
    from surgeon.soft.losses import curriculum_exits, scheme_weights

    assert scheme_weights("uniform", [10, 20, 30], 30) == pytest.approx([1 / 3] * 3)
    assert scheme_weights(None, [10, 30], 30) == pytest.approx([0.5, 0.5])
    # LayerSkip's scale: exit n weighs n(n-1)/2, the full model L-1 + (L-1)(L-2)/2
    raw = [45.0, 190.0, 29 + 29 * 28 / 2]
    assert scheme_weights("depth", [10, 20, 30], 30) == pytest.approx([r / sum(raw) for r in raw])
    assert scheme_weights("anchor", [10, 20, 30], 30) == pytest.approx([0.25, 0.25, 0.5])
    assert scheme_weights("anchor:0.8", [10, 20, 30], 30) == pytest.approx([0.1, 0.1, 0.8])
    assert scheme_weights([1, 1, 2], [10, 20, 30], 30) == pytest.approx([0.25, 0.25, 0.5])
    for bad in ("linear", "anchor:0", "anchor:1.5", [1, 2]):
        with pytest.raises(ValueError):
            scheme_weights(bad, [10, 20, 30], 30)
    assert curriculum_exits([10, 20, 30], 0, 100) == [30]
    assert curriculum_exits([10, 20, 30], 50, 100) == [20, 30]
    assert curriculum_exits([10, 20, 30], 100, 100) == [10, 20, 30]
    assert curriculum_exits([10, 20, 30], 0, 0) == [10, 20, 30]
    assert curriculum_exits([10, 20, 30], None, 100) == [10, 20, 30]


def test_curriculum_trains_only_the_entered_exits(tiny_models):
    from surgeon.soft.losses import SortedLoss, naive_exit_losses

    model = load_model(tiny_models["llama"])
    batch = _batch()
    fn = SortedLoss([2, 4, 6], curriculum=10)
    loss, metrics = fn(model, {**batch, "step": 0, "micro": 0})
    assert set(metrics) == {"loss@6"}
    assert float(loss.detach()) == pytest.approx(float(naive_exit_losses(model, batch, [6])[0].detach()), rel=1e-5)
    _, metrics = fn(model, {**batch, "step": 10, "micro": 0})
    assert set(metrics) == {"loss@2", "loss@4", "loss@6"}


def test_checkpointed_path_for_wrapped_heads_matches_naive(tiny_models):
    """A head that is not a plain nn.Linear (peft / bitsandbytes) goes through torch.utils.checkpoint."""

    from surgeon.soft.losses import SortedLoss, naive_exit_losses

    model = load_model(tiny_models["llama"])
    _wrap_head(model)
    batch = _batch(1)
    ref = sum(naive_exit_losses(model, batch, [3, 6])) / 2
    model.zero_grad()
    ref.backward()
    g_ref = _grads(model)
    model.zero_grad()
    loss, _ = SortedLoss([3, 6], chunk_tokens=16)(model, batch)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    _assert_close_grads(_grads(model), g_ref)


def test_exit_below_L_stops_the_forward_pass_early(tiny_models):
    from surgeon.eval.capture import capture_exits, exit_modules

    model = load_model(tiny_models["llama"])
    mods = exit_modules(model)
    ran = []
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(mods.layers)]
    batch = _batch()
    hidden = capture_exits(model, mods, [2, 3], batch["input_ids"], batch["attention_mask"])
    for h in hooks:
        h.remove()
    assert ran == [0, 1, 2] and set(hidden) == {2, 3}


def test_stochastic_loss_samples_one_exit_per_micro_batch_reproducibly(tiny_models):
    from surgeon.soft.losses import SortedLoss, naive_exit_losses

    model = load_model(tiny_models["llama"])
    batch = _batch()
    picks = []
    for step in range(12):
        fn = SortedLoss([2, 4, 6], "stochastic", seed=3)
        loss, metrics = fn(model, {**batch, "step": step, "micro": 0})
        again, metrics2 = SortedLoss([2, 4, 6], "stochastic", seed=3)(model, {**batch, "step": step, "micro": 0})
        assert metrics == metrics2
        n = int(metrics["sampled_exit"])
        picks.append(n)
        assert float(loss.detach()) == pytest.approx(float(naive_exit_losses(model, batch, [n])[0].detach()), rel=1e-5)
    assert len(set(picks)) > 1  # 12 draws from 3 exits: all equal has probability 3^-11
    # weights bias the sampler
    heavy = [int(SortedLoss([2, 6], "stochastic", [0.0, 1.0], seed=s)(model, {**batch, "step": 0, "micro": 0})[1]
                 ["sampled_exit"]) for s in range(4)]
    assert heavy == [6, 6, 6, 6]


def test_chunked_loss_keeps_no_logits_for_backward(tiny_models):
    """What autograd keeps between forward and backward: the naive loss keeps every exit's
    (tokens x vocab) logits; the chunked loss keeps no vocabulary-wide tensor at all."""
    import torch

    from surgeon.soft.losses import SortedLoss, naive_exit_losses

    model = load_model(tiny_models["llama"])
    vocab = model.config.vocab_size
    head_storage = model.lm_head.weight.untyped_storage().data_ptr()
    ids = torch.randint(3, 500, (4, 64), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    exits = [1, 2, 3, 4, 5, 6]

    def vocab_bytes_saved(fn):
        seen = {}

        def pack(t):
            is_weight = t.untyped_storage().data_ptr() == head_storage  # the head's own weight (V x D)
            if t.dim() >= 1 and t.shape[-1] == vocab and not is_weight:
                seen[t.data_ptr()] = t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = fn()
        loss.backward()
        model.zero_grad(set_to_none=True)
        return sum(seen.values())

    naive = vocab_bytes_saved(lambda: sum(naive_exit_losses(model, batch, exits)) / len(exits))
    chunked = vocab_bytes_saved(lambda: SortedLoss(exits, chunk_tokens=32)(model, batch)[0])
    assert naive >= (len(exits) - 1) * 4 * 63 * vocab * 4  # float32 logits of every exit
    assert chunked == 0


# ---------------------------------------------------------------------------------------- eval


def test_exit_quality_of_the_full_exit_is_the_model_loss(tiny_models):
    from surgeon.eval import heldout_loss, measure_exits

    model = load_model(tiny_models["gemma2"])
    b = _batch(2)
    examples = [{"input_ids": b["input_ids"][i].tolist(), "labels": b["labels"][i].tolist()} for i in range(2)]
    q, tokens = measure_exits(model, examples, [3, 6], batch_size=1, chunk_tokens=5)
    ref = heldout_loss(model, examples)
    assert tokens == ref.tokens
    assert q[1].loss == pytest.approx(ref.loss, rel=1e-5)
    assert q[1].kl_full_exit == pytest.approx(0.0, abs=1e-6) and q[1].top1_agreement == 1.0
    assert q[0].kl_full_exit > 0


def test_eval_cli_json_and_errors(tiny_models, tmp_path):
    from surgeon.testing import corpus

    data = tmp_path / "c.txt"
    data.write_text("\n\n".join(corpus(400)))
    r = run_cli("eval", tiny_models["llama"], "--exit", "3", "--data", data, "--seq-len", "32", "--samples", "4", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [e["exit"] for e in out["exits"]] == [3] and out["tokens"] > 0
    assert run_cli("eval", tiny_models["llama"], "--exit", "7", "--data", data).exit_code != 0
    r = run_cli("eval", tiny_models["llama"], "--data", data)
    assert r.exit_code == 2 and "--all-exits" in r.stderr


# ---------------------------------------------------------------------------------------- recipe


@pytest.fixture(scope="module")
def text_data(tmp_path_factory) -> Path:
    from surgeon.testing import corpus

    p = tmp_path_factory.mktemp("softdata") / "corpus.txt"
    p.write_text("\n\n".join(corpus(1500, seed=1)))
    return p


def _run(model, data, out, exits, **kw):
    from surgeon.commands.soft import SoftOptions
    from surgeon.commands.soft import run as soft

    opts = dict(model=Path(model), data=str(data), exits=exits, method="full", quant="none", steps=40, lr=3e-3,
                warmup=2, seq_len=64, batch_size=8, eval_samples=0, save_every=0, output=out)
    opts.update(kw)
    return soft(SoftOptions(**opts))


def test_soft_beats_sft_on_intermediate_exits_and_keeps_the_final_exit(tiny_models, text_data, tmp_path):
    """Same steps and data: the paper's SoFT (uniform mean, every exit on the labels) takes its
    intermediate exits to a clearly lower held-out loss than SFT's (read through the shared norm and
    head), its final exit within 10% of SFT's. The default (the full exit anchored at 0.95, the others
    distilled) trades part of that gain for the full model: its full exit is nearer SFT's than the paper's
    and its intermediate exit still below SFT's."""
    from surgeon.data import training_examples
    from surgeon.eval import measure_exits

    src = tiny_models["llama"]
    sft = _run(src, text_data, tmp_path / "sft", "6")
    _run(src, text_data, tmp_path / "soft", "2,4,6", exit_weights="uniform", exit_loss="ce")
    default = _run(src, text_data, tmp_path / "default", "2,4,6")
    assert sft.train.losses[-1] < sft.train.losses[0]  # both actually trained
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    held = list(training_examples(str(text_data), tok, seq_len=64, role="eval", max_examples=24))
    q_sft = {q.exit: q.loss for q in measure_exits(load_model(tmp_path / "sft"), held, [2, 4, 6], kl=False)[0]}
    q_srt = {q.exit: q.loss for q in measure_exits(load_model(tmp_path / "soft"), held, [2, 4, 6], kl=False)[0]}
    assert q_srt[2] < q_sft[2] - 0.1, (q_srt, q_sft)
    assert q_srt[4] < q_sft[4], (q_srt, q_sft)
    assert q_srt[6] <= 1.10 * q_sft[6], (q_srt, q_sft)
    # the intermediate exit is nearly as good as the full model only after SoFT
    assert q_srt[2] - q_srt[6] < 0.5 * (q_sft[2] - q_sft[6]), (q_srt, q_sft)
    q_def = {q.exit: q.loss for q in measure_exits(load_model(tmp_path / "default"), held, [2, 4, 6], kl=False)[0]}
    assert abs(q_def[6] - q_sft[6]) < abs(q_srt[6] - q_sft[6]) and q_def[6] < q_sft[6] + 0.03, (q_def, q_srt, q_sft)
    assert q_def[2] < q_sft[2] - 0.02, (q_def, q_sft)
    d = json.loads((tmp_path / "default" / "surgeon_provenance.json").read_text())["operations"][-1]["soft"]
    assert d["exit_loss"] == "kd" and d["exit_weights"]["scheme"] == "anchor:0.95"
    assert d["exit_weights"]["normalized"] == [0.025, 0.025, 0.95] and default.train.losses[-1] < default.train.losses[0]
    assert json.loads((tmp_path / "sft" / "surgeon_provenance.json").read_text())["operations"][-1]["soft"][
        "exit_loss"] == "ce"  # one exit: nothing to distil
    # the output records its exits: sorted manifest (when the executor writes one) and provenance
    prov = json.loads((tmp_path / "soft" / "surgeon_provenance.json").read_text())["operations"][-1]
    assert prov["operation"] == "soft" and prov["exits"] == [2, 4, 6] and prov["soft"]["loss"] == "sum"
    names = {e["name"]: e["layers"] for e in json.loads((tmp_path / "soft" / "sorted_manifest.json").read_text())["exits"]}
    assert names["depth-2"] == [0, 1] and names["depth-4"] == [0, 1, 2, 3]


def test_soft_lora_stochastic_on_instruction_data(tiny_models, tmp_path):
    """Alpaca-style records (loss on the response only), LoRA, stochastic loss with accumulation."""
    from surgeon.testing import corpus

    lines = corpus(400, seed=2)
    data = tmp_path / "instr.jsonl"
    data.write_text("".join(json.dumps({"instruction": lines[i], "input": "", "output": lines[i + 1]}) + "\n"
                            for i in range(0, 400, 2)))
    r = _run(tiny_models["qwen2"], data, tmp_path / "o", "3,6", method="lora", quant="none", loss="stochastic",
             steps=4, grad_accum=2, eval_samples=4, exit_weights="1,3", rank=4, seq_len=256)
    assert [q.exit for q in r.before] == [3, 6] == [q.exit for q in r.after]
    assert all(q.loss > 0 for q in r.after)
    # the manifest carries each exit's measured quality (the numbers measured on the output weights)
    exits = {e["name"]: e for e in json.loads((tmp_path / "o" / "sorted_manifest.json").read_text())["exits"]}
    q3 = {q["metric"]: q["value"] for q in exits["depth-3"]["quality"]}
    assert q3["loss"] == pytest.approx(r.after[0].loss, abs=1e-5) and set(q3) == {"loss", "perplexity", "kl_full_exit",
                                                                                   "top1_agreement"}
    from surgeon.manifest.store import read_manifest

    assert read_manifest(tmp_path / "o") is not None  # validates


def test_soft_cli_rejects_bad_input_before_training(tiny_models, text_data, tmp_path):
    m = tiny_models["llama"]
    cases = [
        (["--exits", "4,2"], "must increase"),
        (["--exits", "0,6"], "keeps no layer"),
        (["--exits", "2,9"], "deeper than the model"),
        (["--exits", "2,2,6"], "listed twice"),
        (["--exits", "2,6", "--exit-weights", "1,2,3"], "one weight per exit"),
        (["--exits", "2,6", "--exit-weights", "steep"], "neither a scheme nor a list of numbers"),
        (["--exits", "2,6", "--exit-weights", "anchor:2"], "anchor share must be a number in (0, 1]"),
        (["--exits", "6", "--exit-loss", "kd"], "needs at least two exits"),
        (["--curriculum", "-1"], "--curriculum must be >= 0"),
        (["--shared-lr-scale", "0"], "--shared-lr-scale must be positive"),
        (["--method", "full", "--quant", "nf4"], "cannot train 4-bit"),
    ]
    for args, words in cases:
        r = run_cli("soft", m, "--data", text_data, "-o", tmp_path / "x", *args)
        assert r.exit_code != 0 and words in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.output
    assert not (tmp_path / "x").exists()


def test_method_full_defaults_to_a_float_base(tiny_models, tmp_path):
    """`--method full` alone means `--quant none`; LoRA keeps the QLoRA default; full + nf4 stays an error."""
    from surgeon.commands.heal import HealOptions
    from surgeon.commands.soft import SoftOptions

    common = dict(model=tiny_models["llama"], output=tmp_path / "o", data="builtin:sotu")
    for cls in (SoftOptions, HealOptions):
        assert cls(**common, method="full").quant == "none"
        assert cls(**common).quant == "nf4"
        assert cls(**common, method="full").model_setup().quant == "none"
        with pytest.raises(UsageError, match="cannot train 4-bit"):
            cls(**common, method="full", quant="nf4")


def test_soft_along_width_trains_nested_ffn_widths(tiny_models, text_data, tmp_path):
    """--ffn-exits: the narrow (depth, width) sub-models end clearly better than after depth-only
    SoFT with the same steps, the manifest lists them, and surgeon.load cuts them out exactly."""
    import torch
    from transformers import AutoTokenizer

    import surgeon
    from surgeon.data import training_examples
    from surgeon.eval import measure_exits
    from surgeon.width.masking import width_mask

    src = tiny_models["llama"]
    depth_only = tmp_path / "depth"
    _run(src, text_data, depth_only, "3,6", steps=120)
    r = _run(src, text_data, tmp_path / "width", "3,6", ffn_exits="0.25,0.5", eval_samples=8, steps=120)
    assert r.extra["ffn_exits"] == [32, 64, 128]
    assert set(r.extra["width"]) == {"32", "64"}
    tok = AutoTokenizer.from_pretrained(src)
    held = list(training_examples(str(text_data), tok, seq_len=64, role="eval", max_examples=24))

    def losses(path, ffn):
        m = load_model(path)
        with width_mask(m, ffn=ffn):
            return {q.exit: q.loss for q in measure_exits(m, held, [3, 6], kl=False)[0]}

    w, d = losses(tmp_path / "width", 32), losses(depth_only, 32)
    assert w[6] < d[6] - 0.1 and w[3] < d[3] - 0.1, (w, d)
    wf, df = losses(tmp_path / "width", 128), losses(depth_only, 128)
    assert wf[6] <= 1.10 * df[6], (wf, df)  # the full width pays a bounded price
    manifest = json.loads((tmp_path / "width" / "sorted_manifest.json").read_text())
    names = {e["name"]: e for e in manifest["exits"]}
    assert names["depth-3-ffn32"]["widths"] == {"ffn": 32} and names["depth-6-ffn64"]["layers"] == list(range(6))
    assert "width-prefix" in manifest["required_features"]
    # the loaded width exit equals the full model run under the width mask
    ids = torch.tensor([held[0]["input_ids"][:20]])
    exit_model = surgeon.load(tmp_path / "width", exit="depth-3-ffn32")
    full = load_model(tmp_path / "width")
    from surgeon.surgery.inmemory import keep_layers_in_memory

    keep_layers_in_memory(full, [0, 1, 2])
    with torch.no_grad(), width_mask(full, ffn=32):
        ref = full(ids).logits
    with torch.no_grad():
        assert (exit_model(ids).logits - ref).abs().max().item() <= 1e-5


def test_ffn_exits_parsing():
    from surgeon.soft.width import parse_ffn_exits

    assert parse_ffn_exits("0.25,0.5,0.75,1.0", 128) == (32, 64, 96, 128)
    assert parse_ffn_exits("16,64", 128) == (16, 64, 128)
    assert parse_ffn_exits(None, 128) == ()
    for spec, words in [("0.5,0.25", "must increase"), ("1.5", "outside (0, 1]"), ("0.5,,1", "empty item")]:
        with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
            parse_ffn_exits(spec, 128)


def test_soft_resume_equals_uninterrupted_run(tiny_models, text_data, tmp_path):
    """Killed (here: an exception) after step 5 with a checkpoint at step 3, then --resume: the written
    weights equal an uninterrupted run's, with stochastic exits and sampled FFN widths."""
    import torch
    from safetensors.torch import load_file

    class Stop(Exception):
        pass

    def stop_at(k):
        def progress(done, total, label):
            if label.startswith("training") and done == k:
                raise Stop
        return progress

    from surgeon.commands.soft import SoftOptions
    from surgeon.commands.soft import run as soft

    common = dict(model=Path(tiny_models["qwen3"]), data=str(text_data), exits="2,4,6", loss="stochastic",
                  ffn_exits="0.25,0.5", method="lora", quant="none", rank=4, steps=8, lr=1e-2, warmup=1,
                  seq_len=32, batch_size=2, grad_accum=2, eval_samples=0, save_every=3, seed=3)
    soft(SoftOptions(output=tmp_path / "ref", **common))
    with pytest.raises(Stop):
        soft(SoftOptions(output=tmp_path / "res", **common), progress=stop_at(5))
    assert not (tmp_path / "res").exists()
    r = soft(SoftOptions(output=tmp_path / "res", resume=True, **common))
    assert r.train.resumed_from == 3
    from surgeon.testing import load_weights

    a, b = load_weights(tmp_path / "ref"), load_weights(tmp_path / "res")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    src = load_file(str(Path(tiny_models["qwen3"]) / "model.safetensors"))
    assert any(not torch.equal(a[k], src[k]) for k in a if "mlp" in k)  # it did train
