"""Self-speculative decoding: draft with the first K layers, verify with the full model, one KV cache.

One cycle, with the cache holding every layer's K/V for positions ``0..n-1`` and token ``x`` (the last
accepted one, at position ``n``) not yet run:

1. **Draft.** Run layers ``0..K-1`` + final norm + LM head one token at a time on ``x, d1, .., d(g-1)``
   to propose ``d1..dg``, then layers ``0..K-1`` (no head) on ``dg``. Each step appends that position to
   the cache of layers ``0..K-1`` and keeps the pre-norm residual stream after layer ``K-1``.
2. **Verify.** The full model's layers ``0..K-1`` on ``x, d1..dg`` are *the same computation* as the
   draft's (same weights, same inputs, same cached prefix), so the verifier does not redo them: it runs
   only layers ``K..L-1`` over the ``g+1`` positions at once, starting from the saved residual streams
   (injected at depth K), then norm + head -> the full model's next-token logits at every position.
3. **Accept.** Greedy: keep the longest prefix of drafts equal to the verifier's argmax, then the
   verifier's token at the first mismatch (or after the last draft) -> ``a+1`` new tokens for ``a``
   accepted drafts. Sampling: the standard speculative-sampling test (accept ``d`` with probability
   ``min(1, p(d)/q(d))``, on rejection sample from ``max(0, p-q)``), which keeps the full model's
   distribution.
4. **Roll back.** Every layer now caches ``n+g+1`` positions; positions after the last accepted draft
   are cropped (``DynamicLayer.crop``), leaving ``n+a+1`` cached positions in all layers and the new
   token pending, which restores the invariant.

Draft length adapts like transformers' assisted generation (and the thesis, app. D.0.1): start at 4,
``+2`` after a fully accepted draft, ``-1`` (at least 1) after a rejection.

Two options make drafts cheaper without changing the output: a draft head over the most frequent
tokens only (:mod:`surgeon.runtime.draft`), and a confidence stop that ends a draft after a token the
draft itself is unsure of (the next ones would most likely be rejected anyway).

Only prefix drafts reuse the cache: a draft exit that is not layers ``0..K-1`` computes different K/V.
Greedy output equals plain full-model greedy decoding token for token, up to floating-point
differences between one batched pass and single-token passes over layers K..L-1: none seen in fp32;
in bf16, oneDNN rounds multi-row products differently and near-tie tokens do change (see the README).
"""

from __future__ import annotations

import logging
import time

import torch

from .draft import DraftHead
from .result import GenerationResult
from .sampling import Sampler
from .stack import SharedCache, Stack

log = logging.getLogger(__name__)

INITIAL_DRAFT = 4  # thesis app. D.0.1 and transformers' default num_assistant_tokens


def speculative_generate(stack: Stack, input_ids: torch.Tensor, max_new_tokens: int, draft_exit: int,
                         sampler: Sampler, eos: set[int], initial_draft: int = INITIAL_DRAFT,
                         max_draft: int = 16, draft_head: DraftHead | None = None,
                         confidence: float = 0.0) -> GenerationResult:
    """Generate with ``draft_exit`` (a layer count K < L) drafting for the full model. ``input_ids``: [1, n].

    ``draft_head``: score drafts over a vocabulary subset (:class:`~surgeon.runtime.draft.DraftHead`)
    instead of the full LM head. ``confidence``: stop a draft early after a token whose draft probability
    is below it (transformers' ``assistant_confidence_threshold``); 0 drafts the full length.
    """
    L = stack.num_layers
    if not 1 <= draft_exit < L:
        raise ValueError(f"draft exit {draft_exit} must be in 1..{L - 1}")
    if not 0.0 <= confidence < 1.0:
        raise ValueError(f"draft confidence {confidence} must be in [0, 1)")
    full = tuple(range(L))
    draft_layers, rest = tuple(range(draft_exit)), tuple(range(draft_exit, L))
    t0 = time.perf_counter()
    cache = SharedCache()
    n = input_ids.shape[1]
    logits = stack.forward(input_ids, torch.arange(n).unsqueeze(0), cache, full, logits_to_keep=1).logits
    x = sampler.pick(logits[0, -1])
    prefill = time.perf_counter() - t0
    out = [x]
    res = GenerationResult([], n, "speculative", L, 0.0, prefill, draft_exit=draft_exit)
    gamma = initial_draft

    def step(tok: int, pos: int, layers, **kw):
        return stack.forward(torch.tensor([[tok]]), torch.tensor([[pos]]), cache, layers, **kw)

    while len(out) < max_new_tokens and x not in eos:
        g = min(gamma, max_new_tokens - len(out) - 1)
        if g <= 0:  # one token left: a plain full-model step
            x = sampler.pick(step(x, n, full, logits_to_keep=1).logits[0, -1])
            out.append(x)
            n += 1
            continue
        # 1. draft
        hidden, drafts, q_rows, cur = [], [], [], x
        for i in range(g):
            if draft_head is None:
                o = step(cur, n + i, draft_layers, keep_hidden=True, logits_to_keep=1)
                row = o.logits[0, -1]
            else:
                o = step(cur, n + i, draft_layers, head=False, keep_hidden=True)
                row = draft_head.logits(o.normed[0, -1:])[0]
            hidden.append(o.hidden)
            if sampler.do_sample:
                q = sampler.probs(row)
                j = sampler.sample(q)
                q_rows.append(q if draft_head is None else draft_head.full_probs(q))
                p_draft = float(q[j])
            else:
                j = int(torch.argmax(row))
                p_draft = float(torch.softmax(row.float(), dim=-1)[j]) if confidence else 1.0
            cur = j if draft_head is None else draft_head.token(j)
            drafts.append(cur)
            if cur in eos or p_draft < confidence:
                break
        g = len(drafts)
        hidden.append(step(cur, n + g, draft_layers, head=False, keep_hidden=True).hidden)
        # 2. verify: layers K..L-1 over x, d1..dg, resumed from the draft's residual streams
        ids = torch.tensor([[x] + drafts])
        pos = torch.arange(n, n + g + 1).unsqueeze(0)
        vlogits = stack.forward(ids, pos, cache, rest, start=draft_exit, start_hidden=torch.cat(hidden, dim=1)).logits[0]
        # 3. accept
        if sampler.do_sample:
            a, nxt = _accept_sampled(sampler, vlogits, drafts, q_rows)
        else:
            target = torch.argmax(vlogits, dim=-1).tolist()
            a = 0
            while a < g and drafts[a] == target[a]:
                a += 1
            nxt = target[a]
        res.drafted += g
        res.accepted += a
        res.verify_steps += 1
        done = False
        for t in drafts[:a] + [nxt]:
            out.append(t)
            if t in eos or len(out) >= max_new_tokens:
                done = True
                break
        if done:
            break
        # 4. roll back the rejected drafts' K/V (all layers hold n+g+1 positions)
        n += a + 1
        cache.truncate(n)
        x = nxt
        gamma = min(max_draft, gamma + 2) if a == g else max(1, gamma - 1)
    res.tokens = _until_eos(out[:max_new_tokens], eos)
    res.seconds = time.perf_counter() - t0
    return res


def _accept_sampled(sampler: Sampler, vlogits: torch.Tensor, drafts: list[int], q_rows: list[torch.Tensor]):
    """Speculative sampling (Leviathan et al. 2023; Chen et al. 2023): (accepted count, next token)."""
    p_rows = sampler.probs(vlogits)
    for i, d in enumerate(drafts):
        p, q = p_rows[i], q_rows[i]
        u = torch.rand((), generator=sampler.generator)
        if float(u) * float(q[d]) <= float(p[d]):
            continue
        resid = torch.clamp(p - q, min=0)
        total = float(resid.sum())
        return i, (sampler.sample(resid / total) if total > 0 else sampler.sample(p))
    return len(drafts), sampler.sample(p_rows[len(drafts)])


def _until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens
