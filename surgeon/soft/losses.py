"""The sorted loss (Sorted LLaMA eq. 1, SortedNet Alg. 2) from one forward pass, in chunks.

Every exit ``n`` is read through the shared final norm and LM head. The cross-entropy of all
exits is computed over the supervised tokens only (labels != -100), ``chunk_tokens`` rows at a
time, so at most one chunk of full-vocabulary logits exists at once, in the forward pass and in
the backward pass:

- When the head is a plain ``nn.Linear`` a fused linear + cross-entropy autograd function
  (:class:`_LinearCE`) computes each chunk's loss *and* its gradients (with respect to the normed
  hidden rows and the head weight) in the forward pass and keeps only those gradients: one
  ``(tokens, hidden)`` tensor per exit plus one head-sized float32 accumulator shared by all exits
  (only when the head is trained). No logits are recomputed in the backward pass.
- Otherwise (a peft- or bitsandbytes-wrapped head) each chunk runs under
  ``torch.utils.checkpoint``: its logits are recomputed, one chunk at a time, in the backward pass.

``mode="sum"``: loss = sum_n w_n L_n / sum_n w_n (uniform weights: eq. 1's mean over exits).
``mode="stochastic"``: one exit per call, drawn by a seeded ``random.Random`` from the weights
(uniform by default); the forward pass stops after that exit. With gradient accumulation this is
SortedNet's Algorithm 2.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

from ..data.training import IGNORE_INDEX
from ..eval.capture import ExitModules, capture_exits, default_chunk_tokens, exit_modules

log = logging.getLogger(__name__)

LOSS_MODES = ("sum", "stochastic")


def _chunk_ce_and_grad(h, weight, bias, targets, softcap, want_grad: bool):
    """Summed CE of one chunk and (optionally) d(sum CE)/d(logits before the cap), float32.

    One exp pass over the (rows x vocab) logits, reused for the loss and the softmax gradient,
    and in-place updates so the chunk needs one logits-sized buffer (two with soft-capping).
    """
    import torch

    z = torch.nn.functional.linear(h, weight, bias).float()
    t = None
    if softcap:
        t = torch.tanh(z / softcap)
        z = t * softcap
    rows = torch.arange(len(targets), device=z.device)
    target_logit = z[rows, targets]
    m = z.amax(dim=-1, keepdim=True)
    e = z.sub_(m).exp_()  # z is consumed: e = exp(z - max)
    total = e.sum(dim=-1, keepdim=True)
    loss = (total.log() + m).squeeze(1).sub_(target_logit).sum()
    if not want_grad:
        return loss, None
    g = e.div_(total)  # softmax
    g[rows, targets] -= 1.0
    if t is not None:
        g.mul_(t.mul_(t).neg_().add_(1.0))  # d cap*tanh(z/cap) / dz = 1 - tanh^2
    return loss, g


def _make_linear_ce():
    import torch

    class _LinearCE(torch.autograd.Function):
        """sum_k coef_k * CE_sum(head(h_k), targets) for several exits, fused and chunked.

        Inputs: weight, bias (or None), targets (N,), coefs (list of floats), softcap, chunk,
        grad_on (grad mode of the caller), *hs (each (N, D), already normed). Returns (weighted loss scalar, per-exit mean CE vector).
        """

        @staticmethod
        def forward(ctx, weight, bias, targets, coefs, softcap, chunk, grad_on, *hs):
            n_rows = targets.shape[0]
            need_h = [grad_on and h.requires_grad for h in hs]
            need_w = grad_on and weight.requires_grad
            need_b = grad_on and bias is not None and bias.requires_grad
            gw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            gb = torch.zeros(bias.shape, dtype=torch.float32, device=weight.device) if need_b else None
            total = torch.zeros((), dtype=torch.float32, device=weight.device)
            per_exit = torch.zeros(len(hs), dtype=torch.float32, device=weight.device)
            ghs = []
            for k, h in enumerate(hs):
                gh = torch.empty_like(h) if need_h[k] else None
                scale = coefs[k]
                for s in range(0, n_rows, chunk):
                    e = min(s + chunk, n_rows)
                    loss, g = _chunk_ce_and_grad(h[s:e], weight, bias, targets[s:e], softcap,
                                                 need_h[k] or need_w or need_b)
                    per_exit[k] += loss
                    if g is None:
                        continue
                    g.mul_(scale)
                    gc = g.to(h.dtype)
                    if gh is not None:
                        torch.mm(gc, weight.to(h.dtype), out=gh[s:e])
                    if gw is not None:
                        if h.dtype == torch.float32:
                            gw.addmm_(gc.t(), h[s:e])  # in place: no (vocab x hidden) temporary
                        else:
                            gw += (gc.t() @ h[s:e]).float()
                    if gb is not None:
                        gb += g.sum(0)
                    del g, gc
                total += scale * per_exit[k]
                ghs.append(gh)
            ctx.save_for_backward(*[g for g in ghs if g is not None])
            ctx.has_gh = need_h
            ctx.gw, ctx.gb = gw, gb
            ctx.wdtype = weight.dtype
            ctx.mark_non_differentiable(per_exit)
            return total, per_exit / max(1, n_rows)

        @staticmethod
        def backward(ctx, grad_total, grad_per_exit):
            saved = iter(ctx.saved_tensors)
            ghs = []
            for has in ctx.has_gh:
                g = next(saved) if has else None
                ghs.append(g * grad_total.to(g.dtype) if g is not None else None)
            gw = (ctx.gw * grad_total).to(ctx.wdtype) if ctx.gw is not None else None
            gb = (ctx.gb * grad_total).to(ctx.wdtype) if ctx.gb is not None else None
            ctx.gw = ctx.gb = None
            return (gw, gb, None, None, None, None, None, *ghs)

    return _LinearCE


_LINEAR_CE = None


def _linear_ce():
    global _LINEAR_CE
    if _LINEAR_CE is None:
        _LINEAR_CE = _make_linear_ce()
    return _LINEAR_CE


def _checkpointed_ce(mods: ExitModules, normed, targets, chunk: int):
    """Summed CE of one exit through a generic head, one checkpointed chunk at a time."""
    import torch
    from torch.utils.checkpoint import checkpoint

    def chunk_loss(h, t):
        z = mods.cap(mods.head(h)).float()
        return torch.nn.functional.cross_entropy(z, t, reduction="sum")

    total = normed.new_zeros((), dtype=torch.float32)
    for s in range(0, targets.shape[0], chunk):
        e = min(s + chunk, targets.shape[0])
        if torch.is_grad_enabled():
            total = total + checkpoint(chunk_loss, normed[s:e], targets[s:e], use_reentrant=False)
        else:
            total = total + chunk_loss(normed[s:e], targets[s:e])
    return total


def exits_ce(mods: ExitModules, hidden: dict, labels, exits: Sequence[int], coefs: Sequence[float],
             chunk_tokens: int | None = None):
    """``(sum_k coef_k * mean CE of exit k, per-exit mean CE (detached), supervised tokens)``.

    ``hidden[n]`` is the (B, T, D) residual stream after layer n-1; ``labels`` (B, T) uses -100
    for tokens without loss; position t predicts label t+1.
    """
    import torch

    targets_full = labels[:, 1:].reshape(-1)
    keep = (targets_full != IGNORE_INDEX).nonzero().squeeze(1)
    targets = targets_full[keep]
    count = int(targets.shape[0])
    anyh = hidden[exits[0]]
    if count == 0:  # nothing supervised in this micro-batch: a zero loss that still has a graph
        zero = sum(hidden[n].sum() for n in exits) * 0.0
        return zero.float(), torch.zeros(len(exits)), 0
    vocab = getattr(mods.head, "out_features", None) or mods.head.weight.shape[0]
    chunk = int(chunk_tokens or default_chunk_tokens(vocab))
    normed = []
    for n in exits:
        h = hidden[n][:, :-1].reshape(-1, anyh.shape[-1]).index_select(0, keep)
        normed.append(mods.norm(h))
    head = mods.head
    if type(head) is torch.nn.Linear:
        total, per_exit = _linear_ce().apply(head.weight, head.bias, targets, [c / count for c in coefs],
                                             mods.softcap, chunk, torch.is_grad_enabled(), *normed)
        return total, per_exit.detach().cpu(), count
    sums = [_checkpointed_ce(mods, h, targets, chunk) for h in normed]
    total = sum(c * s for c, s in zip(coefs, sums)) / count
    per_exit = torch.stack([s.detach().float() for s in sums]).cpu() / count
    return total, per_exit, count


class SortedLoss:
    """``loss_fn(model, batch) -> (loss, metrics)`` for the shared training loop.

    ``exits``: increasing layer counts; ``mode``: ``"sum"`` or ``"stochastic"`` (module doc);
    ``weights``: optional per-exit weights (default uniform); ``seed``: the sampler's seed.
    Metrics: ``loss@n`` per exit (sum), or ``sampled_exit`` (stochastic). In stochastic mode the
    exit is drawn from ``(seed, batch["step"], batch["micro"])``, so resuming repeats the draws.
    """

    def __init__(self, exits: Sequence[int], mode: str = "sum", weights: Sequence[float] | None = None,
                 seed: int = 0, chunk_tokens: int | None = None):
        if mode not in LOSS_MODES:
            raise ValueError(f"mode must be one of {LOSS_MODES}, got {mode!r}")
        self.exits = tuple(int(n) for n in exits)
        self.mode = mode
        w = [float(x) for x in (weights if weights is not None else [1.0] * len(self.exits))]
        if len(w) != len(self.exits) or any(x < 0 for x in w) or sum(w) <= 0:
            raise ValueError("weights must be one non-negative number per exit, not all zero")
        self.weights = tuple(w)
        self.chunk_tokens = chunk_tokens
        self.seed = seed
        self.rng = random.Random(seed)
        self._mods: ExitModules | None = None
        self._mods_of: int | None = None

    def modules(self, model) -> ExitModules:
        if self._mods is None or self._mods_of != id(model):
            self._mods, self._mods_of = exit_modules(model), id(model)
        return self._mods

    def __call__(self, model, batch):
        mods = self.modules(model)
        if self.mode == "stochastic":
            # A pure function of (seed, step, micro) when the loop says where it is: a resumed run
            # samples the same exits as an uninterrupted one.
            rng = random.Random(f"{self.seed}:{batch['step']}:{batch['micro']}") if "step" in batch else self.rng
            exits = rng.choices(self.exits, weights=self.weights, k=1)
            coefs = [1.0]
        else:
            exits = list(self.exits)
            total_w = sum(self.weights)
            coefs = [w / total_w for w in self.weights]
        hidden = capture_exits(model, mods, exits, batch["input_ids"], batch.get("attention_mask"))
        loss, per_exit, _ = exits_ce(mods, hidden, batch["labels"], exits, coefs, self.chunk_tokens)
        if self.mode == "stochastic":  # the loop averages metrics over micro-batches
            return loss, {"sampled_exit": float(exits[0])}
        return loss, {f"loss@{n}": float(v) for n, v in zip(exits, per_exit)}


def naive_exit_losses(model, batch, exits: Sequence[int]) -> list:
    """Reference: each exit's mean CE from full-vocabulary logits of ``output_hidden_states``.

    Exit ``L`` uses the model's own logits; exit ``n < L`` applies the final norm and head to
    ``hidden_states[n]``. Differentiable; for tests (it holds every exit's logits at once).
    """
    import torch

    mods = exit_modules(model)
    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                output_hidden_states=True, use_cache=False)
    labels = batch["labels"][:, 1:]
    losses = []
    for n in exits:
        logits = out.logits if n == mods.num_layers else mods.logits(out.hidden_states[n])
        logits = logits[:, :-1].float()
        losses.append(torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX))
    return losses
