"""The reference runtime: exits share one model; speculative and early-exit decoding are exact."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from surgeon.errors import UsageError
from surgeon.runtime import SortedModel
from surgeon.testing import run_cli

PROMPT = "the river model layer prune of the"
N = 28  # new tokens: prompt (8) + N exceeds the tiny sliding windows (16, 32)


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def loaded(tiny_models):
    cache: dict[str, SortedModel] = {}

    def get(family: str) -> SortedModel:
        if family not in cache:
            cache[family] = SortedModel.from_pretrained(tiny_models[family])
        return cache[family]

    return get


def _hf_greedy(sm: SortedModel, ids: list[int], n: int) -> list[int]:
    """Ground truth: transformers' own greedy generate on the stock model (EOS disabled)."""
    t = torch.tensor([ids])
    out = sm.model.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                            pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_decoding_modes_equal_full_greedy(family_model, loaded):
    """Per family: plain decoding == transformers' greedy generate; self-speculative decoding with a
    shallow and a deep draft and early exit with thresholds of 1.0 == plain full greedy."""
    family, _ = family_model
    sm = loaded(family)
    ids = sm.encode(PROMPT)
    full = sm.generate(ids, N, stop_at_eos=False)
    assert full.mode == "full" and full.tokens == _hf_greedy(sm, ids, N)
    for draft in (1, 4):
        spec = sm.generate(ids, N, draft_exit=draft, stop_at_eos=False)
        assert spec.mode == "speculative" and spec.draft_exit == draft
        assert spec.tokens == full.tokens, draft
        assert spec.drafted >= spec.accepted >= 0 and spec.verify_steps > 0
    ee = sm.generate(ids, N, early_exit={2: 1.0, 4: 1.0}, stop_at_eos=False)
    assert ee.tokens == full.tokens
    assert ee.exit_counts == {2: 0, 4: 0, 6: N}


def test_speculative_rolls_back_past_the_sliding_window(loaded):
    """Gemma 3 (sliding + full layers): drafts are both accepted and rejected, the sequence outgrows the
    window (16), and the output still equals full greedy, so the crop after rejections is right."""
    sm = loaded("gemma3_text")
    ids = sm.encode(PROMPT)
    full = sm.generate(ids, 60, stop_at_eos=False)
    spec = sm.generate(ids, 60, draft_exit=5, stop_at_eos=False)
    assert spec.tokens == full.tokens
    assert 0 < spec.accepted < spec.drafted
    assert len(ids) + 60 > 2 * sm.model.config.sliding_window


def test_speculative_sampling_low_temperature_is_greedy_and_seeded(loaded):
    sm = loaded("llama")
    ids = sm.encode(PROMPT)
    full = sm.generate(ids, N, stop_at_eos=False)
    cold = sm.generate(ids, N, draft_exit=3, do_sample=True, temperature=1e-4, seed=1, stop_at_eos=False)
    assert cold.tokens == full.tokens  # one-hot p and q: accept iff equal, else resample = the target
    a = sm.generate(ids, N, draft_exit=3, do_sample=True, temperature=1.0, top_p=0.9, seed=7, stop_at_eos=False)
    b = sm.generate(ids, N, draft_exit=3, do_sample=True, temperature=1.0, top_p=0.9, seed=7, stop_at_eos=False)
    assert a.tokens == b.tokens and len(a.tokens) == N
    assert all(0 <= t < sm.model.config.vocab_size for t in a.tokens)


def test_draft_head_scores_a_vocabulary_subset_like_the_full_head(loaded):
    """DraftHead logits == the model's own logits restricted to the subset (final norm, head, soft-capping)."""
    from surgeon.runtime.draft import DraftHead
    from surgeon.runtime.stack import SharedCache

    sm = loaded("gemma3_text")
    sm.model.config.final_logit_softcapping = 3.0  # exercise the capping on a model that reads it
    try:
        ids = torch.tensor([sm.encode(PROMPT)])
        pos = torch.arange(ids.shape[1]).unsqueeze(0)
        sub = torch.tensor([0, 5, 7, 19, 64, 100])
        head = DraftHead(sm.model, sub[torch.randperm(len(sub))])
        layers = tuple(range(3))
        normed = sm.stack.forward(ids, pos, SharedCache(), layers, head=False).normed
        want = sm.stack.forward(ids, pos, SharedCache(), layers).logits[..., sub]
        torch.testing.assert_close(head.logits(normed), want, rtol=1e-5, atol=1e-5)
        assert head.ids.tolist() == sub.tolist() and [head.token(i) for i in range(len(sub))] == sub.tolist()
        q = torch.softmax(torch.randn(len(sub)), -1)
        full = head.full_probs(q)
        assert torch.equal(full[sub], q) and float(full.sum()) == pytest.approx(1.0)
    finally:
        sm.model.config.final_logit_softcapping = None


def test_rank_vocabulary_frequency_then_id_order(loaded):
    from surgeon.runtime.draft import rank_vocabulary

    sm = loaded("llama")
    ids = sm.encode("river river river layer layer model")
    ranked = rank_vocabulary(sm.model.config.vocab_size, sm.tokenizer, ["river river river layer layer model"])
    assert sorted(ranked) == list(range(sm.model.config.vocab_size))
    counts = {t: ids.count(t) for t in set(ids) if t not in sm.tokenizer.all_special_ids}
    top = ranked[: len(counts)]
    assert set(top) == set(counts) and [counts[t] for t in top] == sorted(counts.values(), reverse=True)
    rest = ranked[len(counts):]
    assert rest == sorted(rest)
    assert rank_vocabulary(10) == list(range(10))


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "phi3"])
def test_draft_vocab_and_confidence_keep_full_greedy(loaded, family):
    """A draft head over a subset that misses some of full greedy's tokens, and a confidence stop, only
    change how much is drafted: the output stays full greedy's, token for token, and sampling stays seeded."""
    sm = loaded(family)
    ids = sm.encode(PROMPT)
    full = sm.generate(ids, N, stop_at_eos=False)
    base = sm.generate(ids, N, draft_exit=3, stop_at_eos=False)
    missing = sorted(set(full.tokens))[: max(1, len(set(full.tokens)) // 3)]
    keep = [t for t in range(sm.model.config.vocab_size) if t not in missing]
    from surgeon.runtime.draft import DraftHead

    head = DraftHead(sm.model, torch.tensor(keep))
    sub = sm.generate(ids, N, draft_exit=3, draft_vocab=head, stop_at_eos=False)
    assert sub.tokens == full.tokens and sub.drafted > 0
    assert sub.accepted <= base.accepted  # tokens outside the subset can only be rejected
    conf = sm.generate(ids, N, draft_exit=3, draft_confidence=0.99, stop_at_eos=False)
    assert conf.tokens == full.tokens and conf.drafted < base.drafted  # tiny random models are never 99% sure
    both = sm.generate(ids, N, draft_exit=3, draft_vocab=64, draft_confidence=0.2, stop_at_eos=False)
    assert both.tokens == full.tokens
    cold = sm.generate(ids, N, draft_exit=3, draft_vocab=head, do_sample=True, temperature=1e-4, seed=1,
                       stop_at_eos=False)
    assert cold.tokens == full.tokens
    a, b = (sm.generate(ids, N, draft_exit=3, draft_vocab=head, do_sample=True, seed=3, stop_at_eos=False)
            for _ in range(2))
    assert a.tokens == b.tokens


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3"])
def test_onednn_kernels_same_model_same_decoding(tiny_models, family):
    """Prepacked oneDNN linears: logits equal the stock kernels' up to summation order, the module tree and
    parameters are untouched, speculative decoding still equals full greedy, and unpacking is exact."""
    from surgeon.runtime.kernels import is_packed, pack_linears, stock_kernels, unpack_linears

    sm = SortedModel.from_pretrained(tiny_models[family])
    ids = torch.tensor([sm.encode(PROMPT)])
    ref = sm.model(ids).logits
    params = {k: v.clone() for k, v in sm.model.state_dict().items()}
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in sm.model.modules())
    assert pack_linears(sm.model) == n_linear and pack_linears(sm.model) == 0  # idempotent
    with torch.no_grad():
        torch.testing.assert_close(sm.model(ids).logits, ref, rtol=1e-4, atol=1e-4)
        with stock_kernels(sm.model):
            assert torch.equal(sm.model(ids).logits, ref)
    assert all(torch.equal(v, params[k]) for k, v in sm.model.state_dict().items())
    full = sm.generate(ids[0].tolist(), N, stop_at_eos=False)
    spec = sm.generate(ids[0].tolist(), N, draft_exit=2, stop_at_eos=False)
    assert spec.tokens == full.tokens and spec.drafted > 0
    head = sm.draft_head(40)
    assert is_packed(head.linear)
    assert sm.generate(ids[0].tolist(), N, draft_exit=2, draft_vocab=head, stop_at_eos=False).tokens == full.tokens
    x = torch.randn(1, 3, sm.model.config.hidden_size, requires_grad=True)  # training falls back to the stock kernel
    lin = sm.model.get_output_embeddings()
    lin(x).sum().backward()
    assert x.grad is not None
    assert unpack_linears(sm.model) == n_linear
    assert torch.equal(sm.model(ids).logits, ref)


def test_onednn_kernels_load_option(tiny_models):
    from surgeon.runtime.kernels import is_packed

    sm = SortedModel.from_pretrained(tiny_models["llama"], kernels="onednn")
    assert any(is_packed(m) for m in sm.model.modules())
    with pytest.raises(UsageError, match="unknown kernels"):
        SortedModel.from_pretrained(tiny_models["llama"], kernels="fast")
    with pytest.raises(UsageError, match="CPU kernels"):
        SortedModel.from_pretrained(tiny_models["llama"], kernels="onednn", device="meta")


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_early_exit_tokens_are_exact_exit_predictions(loaded, family):
    """With mixed exits, every token must be the argmax of the exit it left at, computed from scratch on the
    final sequence (so the lazily caught-up K/V of skipped layers are the full model's), and the confidence
    rule must hold at every exit it passed."""
    sm = loaded(family)
    ids = sm.encode(PROMPT)
    full = sm.generate(ids, N, stop_at_eos=False).tokens
    seq = torch.tensor([ids + full])
    conf = {k: torch.softmax(sm.exit_logits(seq, k)[0].float(), -1).max(-1).values for k in (2, 4)}
    plan = {k: float(conf[k][len(ids):].median()) for k in (2, 4)}  # about half the tokens pass each exit
    ee = sm.generate(ids, N, early_exit=plan, stop_at_eos=False)
    assert len(set(ee.exit_depths)) >= 2 and ee.catchup_positions > 0
    out = torch.tensor([ids + ee.tokens])
    logits = {k: sm.exit_logits(out, k)[0] for k in (2, 4, 6)}
    for i, (tok, depth) in enumerate(zip(ee.tokens, ee.exit_depths)):
        row = len(ids) + i - 1
        assert int(logits[depth][row].argmax()) == tok, (i, depth)
        for k in (2, 4):
            p = float(torch.softmax(logits[k][row].float(), -1).max())
            if i and k < depth:
                assert p < plan[k] + 1e-5, (i, k)
            if i and k == depth:
                assert p >= plan[k] - 1e-5, (i, k)


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "qwen2"])
def test_exit_generation_equals_extracted_model(tiny_models, loaded, tmp_path, family):
    from surgeon.commands.extract import ExtractOptions
    from surgeon.commands.extract import run as extract

    out = tmp_path / "k3"
    extract(ExtractOptions(model=tiny_models[family], output=out, depth=3))
    sm = loaded(family)
    ids = sm.encode(PROMPT)
    small = SortedModel.from_pretrained(out)
    r = sm.generate(ids, N, exit=3, stop_at_eos=False)
    assert r.mode == "exit" and r.exit_layers == 3
    assert r.tokens == _hf_greedy(small, ids, N)
    t = torch.tensor([ids])
    assert torch.allclose(sm.exit_logits(t, 3), small.model(t).logits, atol=1e-5)


def _with_manifest(src, dst, exits):
    """A copy of ``src`` with a (valid) sorted manifest of ``exits``: the reader is strict
    (surgeon.manifest.resolve; a manifest that fails validation is an error, tests/test_resolve.py)."""
    from surgeon.manifest.stamp import stamp

    shutil.copytree(src, dst)
    stamp(dst, exits=exits, verify=False)
    return dst


def test_manifest_exit_names(tiny_models, tmp_path):
    from surgeon.commands.extract import ExtractOptions
    from surgeon.commands.extract import run as extract

    path = _with_manifest(tiny_models["llama"], tmp_path / "m", [
        {"name": "e3", "layers": [0, 1, 2]}, {"name": "skip", "layers": [0, 1, 4, 5]},
        {"name": "narrow", "layers": [0, 1], "widths": {"ffn": 64}}, {"name": "full", "layers": list(range(6))}])
    sm = SortedModel.from_pretrained(path)
    assert sm.exits == {"e3": (0, 1, 2), "skip": (0, 1, 4, 5), "full": tuple(range(6))}
    ids = sm.encode(PROMPT)
    assert sm.generate(ids, 12, exit="e3", stop_at_eos=False).tokens == sm.generate(ids, 12, exit=3,
                                                                                    stop_at_eos=False).tokens
    # a non-prefix exit runs its layers in order: same logits as the extracted model
    extract(ExtractOptions(model=tiny_models["llama"], output=tmp_path / "skip", layers="0,1,4,5"))
    t = torch.tensor([ids])
    skip = SortedModel.from_pretrained(tmp_path / "skip")
    assert torch.allclose(sm.exit_logits(t, "skip"), skip.model(t).logits, atol=1e-5)
    assert sm.generate(ids, 16, exit="skip", stop_at_eos=False).tokens == _hf_greedy(skip, ids, 16)
    with pytest.raises(UsageError, match="prefix"):
        sm.generate(ids, 4, draft_exit="skip")
    with pytest.raises(UsageError, match="no exit named 'narrow'"):
        sm.generate(ids, 4, exit="narrow")
    # a list of thresholds maps onto the manifest's intermediate prefix exits (here: e3)
    ee = sm.generate(ids, 8, early_exit=[1.0], stop_at_eos=False)
    assert set(ee.exit_counts) == {3, 6}
    with pytest.raises(UsageError, match="thresholds"):
        sm.generate(ids, 4, early_exit=[0.9, 0.9])


def test_real_manifest_exits(tiny_models, tmp_path):
    """Exits of a manifest written (and validated) by surgeon.manifest resolve by name; a list of
    thresholds maps onto its intermediate prefix exits."""
    from surgeon.exits import ExitSpec
    from surgeon.manifest.stamp import stamp

    path = tmp_path / "stamped"
    shutil.copytree(tiny_models["qwen3"], path)
    stamp(path, exits=[ExitSpec(None, list(range(k))).to_dict() for k in (2, 4, 6)], verify=False)
    sm = SortedModel.from_pretrained(path)
    assert sm.exits == {"depth-2": (0, 1), "depth-4": (0, 1, 2, 3), "depth-6": tuple(range(6))}
    ids = sm.encode(PROMPT)
    full = sm.generate(ids, 16, stop_at_eos=False)
    assert sm.generate(ids, 16, draft_exit="depth-4", stop_at_eos=False).tokens == full.tokens
    ee = sm.generate(ids, 16, early_exit=[1.0, 1.0], stop_at_eos=False)
    assert ee.tokens == full.tokens and set(ee.exit_counts) == {2, 4, 6}


def test_as_exit_swaps_and_restores(loaded):
    sm = loaded("qwen2")
    t = torch.tensor([sm.encode(PROMPT)])
    full = sm.model(t).logits
    with sm.as_exit(2) as model:
        assert torch.equal(model(t).logits, sm.exit_logits(t, 2))
    assert torch.equal(sm.model(t).logits, full)


def test_hf_assistant_early_exit_backend(loaded):
    sm = loaded("llama")
    ids = sm.encode(PROMPT)
    r = sm.generate(ids, 16, draft_exit=3, backend="hf")
    assert r.mode == "hf-assisted" and r.draft_exit == 3
    assert r.tokens == sm.generate(ids, 16).tokens


def test_bad_modes(loaded):
    sm = loaded("llama")
    with pytest.raises(UsageError):
        sm.generate("the", 4, exit=2, draft_exit=3)
    with pytest.raises(UsageError, match="outside"):
        sm.generate("the", 4, exit=7)
    with pytest.raises(UsageError, match="full model"):
        sm.generate("the", 4, draft_exit=6)
    with pytest.raises(UsageError, match="not a probability"):
        sm.generate("the", 4, early_exit={2: 1.5})
    with pytest.raises(UsageError, match="draft_exit"):
        sm.generate("the", 4, draft_vocab=16)
    with pytest.raises(UsageError, match="outside"):
        sm.generate("the", 4, draft_exit=3, draft_confidence=1.0)
    with pytest.raises(UsageError, match="size"):
        sm.draft_head(0)


def test_cli_generate(tiny_models):
    p = tiny_models["llama"]
    r = run_cli("generate", p, "--prompt", PROMPT, "--max-new-tokens", "10", "--draft-exit", "3", "--compare", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["result"]["mode"] == "speculative" and d["matches_baseline"] is True
    assert d["result"]["tokens"] == d["baseline"]["tokens"] and d["result"]["new_tokens"] <= 10
    r = run_cli("generate", p, "--prompt", PROMPT, "--max-new-tokens", "4", "--early-exit", "2:0.9,4:0.9")
    assert r.exit_code == 0 and "early-exit" in r.stdout and "tokens/s" in r.stdout
    r = run_cli("generate", p, "--prompt", PROMPT, "--max-new-tokens", "10", "--draft-exit", "3", "--draft-vocab", "50",
                "--draft-vocab-data", "builtin:sotu", "--draft-confidence", "0.3", "--compare", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["matches_baseline"] is True
    r = run_cli("generate", p, "--prompt", PROMPT, "--max-new-tokens", "8", "--draft-exit", "3", "--kernels", "onednn",
                "--compare", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["matches_baseline"] is True
    for bad, needle in ((["--draft-vocab", "50"], "--draft-exit"), (["--draft-exit", "3", "--draft-vocab", "-1"], "< 0"),
                        (["--draft-exit", "3", "--draft-vocab-data", "builtin:sotu"], "--draft-vocab N"),
                        (["--draft-exit", "3", "--draft-confidence", "1.5"], "outside")):
        r = run_cli("generate", p, "--prompt", PROMPT, *bad)
        assert r.exit_code == 2 and r.stderr.startswith("error:") and needle in r.stderr, (bad, r.stderr)
    r = run_cli("generate", p, "--prompt", PROMPT, "--exit", "9")
    assert r.exit_code == 2 and r.stderr.startswith("error:")
    r = run_cli("generate", p, "--prompt", PROMPT, "--early-exit", "x")
    assert r.exit_code == 2 and "thresholds" in r.stderr


@pytest.mark.slow
def test_smollm2_speculative_and_early_exit_equal_full(smollm2):
    sm = SortedModel.from_pretrained(smollm2)
    ids = sm.encode("Explain why the sky is blue in two sentences.", chat=True)
    full = sm.generate(ids, 48)
    assert full.tokens == _hf_greedy(sm, ids, len(full.tokens))
    for k in (10, 20, 26):
        spec = sm.generate(ids, 48, draft_exit=k)
        assert spec.tokens == full.tokens, k
        assert spec.drafted > 0
    assert sm.generate(ids, 48, early_exit={10: 1.0, 20: 1.0}).tokens == full.tokens


@pytest.mark.slow
def test_smollm2_onednn_kernels_and_cheap_drafts_equal_full(smollm2):
    """On the real model: oneDNN kernels keep full greedy's tokens, and speculative decoding with a reduced
    draft vocabulary and a confidence stop still equals full greedy on those kernels."""
    stock = SortedModel.from_pretrained(smollm2)
    sm = SortedModel.from_pretrained(smollm2, kernels="onednn")
    ids = sm.encode("List three tips for learning a new language.", chat=True)
    full = sm.generate(ids, 48)
    assert full.tokens == stock.generate(ids, 48).tokens
    for k in (10, 20):
        spec = sm.generate(ids, 48, draft_exit=k, draft_vocab=8192, draft_confidence=0.3)
        assert spec.tokens == full.tokens, k
        assert spec.drafted > 0
