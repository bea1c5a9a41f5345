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
EXIT_LOSSES = ("ce", "kd")
WEIGHT_SCHEMES = ("uniform", "depth", "anchor")
# ``surgeon soft``'s defaults, chosen on the measured frontier (benchmarks/soft_frontier.py, README): the
# full exit keeps 95% of the weight and the other exits distil it. The library's SortedLoss keeps the
# paper's eq. 1 (uniform, cross-entropy) as its own default.
DEFAULT_EXIT_WEIGHTS = "anchor:0.95"
DEFAULT_EXIT_LOSS = "kd"


def scheme_weights(spec: str | Sequence[float] | None, exits: Sequence[int], num_layers: int) -> tuple[float, ...]:
    """Per-exit weights from a scheme name or explicit numbers (one per exit).

    - ``uniform`` (and None): every exit alike, Sorted LLaMA's eq. 1 (the mean over exits).
    - ``depth``: LayerSkip's early-exit loss scale, increasing with depth: exit ``n`` (the output of
      layer n-1) weighs sum_{i<n} i = n(n-1)/2, the full model (n = L) L-1 + (L-1)(L-2)/2.
    - ``anchor`` / ``anchor:S``: the deepest exit a fixed share S (default 1/2) of the total, the others
      splitting the rest equally.
    The weights are normalized to sum to 1.
    """
    exits = [int(n) for n in exits]
    if spec is None or spec == "uniform":
        w = [1.0] * len(exits)
    elif spec == "depth":
        w = [(n - 1) + (n - 1) * (n - 2) / 2 if n == num_layers else n * (n - 1) / 2 for n in exits]
    elif isinstance(spec, str) and (spec == "anchor" or spec.startswith("anchor:")):
        share = float(spec.split(":", 1)[1]) if ":" in spec else 0.5
        if not 0.0 < share <= 1.0:
            raise ValueError(f"anchor share must be in (0, 1], got {share}")
        rest = len(exits) - 1
        w = [share] if rest == 0 else [(1.0 - share) / rest] * rest + [share]
    elif isinstance(spec, str):
        raise ValueError(f"unknown exit-weight scheme {spec!r} (use {', '.join(WEIGHT_SCHEMES)}, anchor:S or numbers)")
    else:
        w = [float(x) for x in spec]
    if len(w) != len(exits) or any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError("weights must be one non-negative number per exit, not all zero")
    total = sum(w)
    return tuple(x / total for x in w)


def curriculum_exits(exits: Sequence[int], step: int | None, ramp: int) -> list[int]:
    """The exits active at optimizer ``step`` when they enter gradually over ``ramp`` steps, deepest
    first (LayerSkip's gradual curriculum): the deepest at step 0, the j-th shallower one at step
    ramp * j / (number of exits - 1). ``ramp`` 0 or an unknown step: every exit."""
    exits = sorted(exits)
    if ramp <= 0 or step is None or len(exits) == 1:
        return list(exits)
    m = len(exits) - 1
    return [n for i, n in enumerate(exits) if step >= ramp * (m - i) / m]


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


def _chunk_logits(h, weight, bias, softcap):
    """float32 logits of one chunk, soft-capped; also tanh(z / cap) when capped (for the gradient)."""
    import torch

    z = torch.nn.functional.linear(h, weight, bias).float()
    if not softcap:
        return z, None
    t = torch.tanh(z / softcap)
    return t * softcap, t


def _chunk_teacher(h, weight, bias, softcap):
    """(probabilities, sum p log p per row) of the teacher's chunk: the target of self-distillation."""
    z, _ = _chunk_logits(h, weight, bias, softcap)
    logp = z.log_softmax(dim=-1)
    p = logp.exp()
    return p, (p * logp).sum(dim=-1)


def _chunk_kd_and_grad(h, weight, bias, teacher, softcap, want_grad: bool):
    """Summed KL(p_teacher || softmax(z)) of one chunk and (optionally) its gradient in the logits
    before the cap: softmax(z) - p_teacher (the teacher is a constant)."""
    p_t, neg_entropy = teacher
    z, t = _chunk_logits(h, weight, bias, softcap)
    lse = z.logsumexp(dim=-1)
    loss = (neg_entropy + lse - (p_t * z).sum(dim=-1)).sum()
    if not want_grad:
        return loss, None
    g = z.sub_(lse.unsqueeze(1)).exp_().sub_(p_t)
    if t is not None:
        g.mul_(t.mul_(t).neg_().add_(1.0))
    return loss, g


def _make_linear_ce():
    import torch

    class _LinearCE(torch.autograd.Function):
        """sum_k coef_k * loss_sum_k for several exits, fused and chunked.

        loss_k is CE_sum(head(h_k), targets), or with ``kd[k]`` the summed KL(p_teacher || p_k) toward
        the detached distribution of the last exit (``hs[-1]``, the teacher).
        Inputs: weight, bias (or None), targets (N,), coefs (list of floats), softcap, chunk,
        grad_on (grad mode of the caller), kd (a bool per exit), *hs (each (N, D), already normed).
        Returns (weighted loss scalar, per-exit mean loss vector).
        """

        @staticmethod
        def forward(ctx, weight, bias, targets, coefs, softcap, chunk, grad_on, kd, *hs):
            n_rows = targets.shape[0]
            need_h = [grad_on and h.requires_grad for h in hs]
            need_w = grad_on and weight.requires_grad
            need_b = grad_on and bias is not None and bias.requires_grad
            gw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            gb = torch.zeros(bias.shape, dtype=torch.float32, device=weight.device) if need_b else None
            per_exit = torch.zeros(len(hs), dtype=torch.float32, device=weight.device)
            ghs = [torch.empty_like(h) if need_h[k] else None for k, h in enumerate(hs)]
            for s in range(0, n_rows, chunk):  # chunks outside, exits inside: one teacher chunk serves every exit
                e = min(s + chunk, n_rows)
                teacher = _chunk_teacher(hs[-1][s:e], weight, bias, softcap) if any(kd) else None
                for k, h in enumerate(hs):
                    want = need_h[k] or need_w or need_b
                    if kd[k]:
                        loss, g = _chunk_kd_and_grad(h[s:e], weight, bias, teacher, softcap, want)
                    else:
                        loss, g = _chunk_ce_and_grad(h[s:e], weight, bias, targets[s:e], softcap, want)
                    per_exit[k] += loss
                    if g is None:
                        continue
                    g.mul_(coefs[k])
                    gc = g.to(h.dtype)
                    if ghs[k] is not None:
                        torch.mm(gc, weight.to(h.dtype), out=ghs[k][s:e])
                    if gw is not None:
                        if h.dtype == torch.float32:
                            gw.addmm_(gc.t(), h[s:e])  # in place: no (vocab x hidden) temporary
                        else:
                            gw += (gc.t() @ h[s:e]).float()
                    if gb is not None:
                        gb += g.sum(0)
                    del g, gc
                del teacher
            total = (per_exit * torch.tensor(coefs, dtype=torch.float32, device=per_exit.device)).sum()
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
            return (gw, gb, None, None, None, None, None, None, *ghs)

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

    def chunk_loss(h, t):
        z = mods.cap(mods.head(h)).float()
        return torch.nn.functional.cross_entropy(z, t, reduction="sum")

    return _sum_checkpointed_chunks(chunk_loss, normed, targets, chunk)


def _sum_checkpointed_chunks(fn, rows, other, chunk: int):
    """sum over chunks of ``fn(rows[s:e], other[s:e])``, each chunk under ``torch.utils.checkpoint`` when
    gradients are on (its full-vocabulary logits are recomputed in the backward pass, one chunk at a time)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    total = rows.new_zeros((), dtype=torch.float32)
    for s in range(0, rows.shape[0], chunk):
        e = min(s + chunk, rows.shape[0])
        if torch.is_grad_enabled():
            total = total + checkpoint(fn, rows[s:e], other[s:e], use_reentrant=False)
        else:
            total = total + fn(rows[s:e], other[s:e])
    return total


def _checkpointed_kd(mods: ExitModules, normed, teacher_normed, chunk: int):
    """Summed KL(p_teacher || p_exit) of one exit through a generic head, one checkpointed chunk at a
    time; the teacher's rows are detached (no gradient reaches the teacher through this term).

    The exit's and the teacher's rows of a chunk go through the head in one call (half a chunk of each):
    a sharded (FSDP2) head is then gathered once per chunk, as for the cross-entropy."""
    import torch

    half = max(1, chunk // 2)

    def chunk_kl(h, ht):
        z = mods.cap(mods.head(torch.cat([h, ht]))).float()
        logp, logp_t = z[: h.shape[0]].log_softmax(dim=-1), z[h.shape[0]:].detach().log_softmax(dim=-1)
        return torch.nn.functional.kl_div(logp, logp_t, reduction="sum", log_target=True)

    return _sum_checkpointed_chunks(chunk_kl, normed, teacher_normed.detach(), half)


def exits_ce(mods: ExitModules, hidden: dict, labels, exits: Sequence[int], coefs: Sequence[float],
             chunk_tokens: int | None = None, kd: Sequence[bool] | None = None):
    """``(sum_k coef_k * mean loss of exit k, per-exit mean loss (detached), supervised tokens)``.

    The loss of exit k is its cross-entropy on the labels, or with ``kd[k]`` its KL divergence
    KL(p_teacher || p_k) from the detached distribution of the deepest exit (the teacher, which keeps
    its cross-entropy), both over the supervised tokens.
    ``hidden[n]`` is the (B, T, D) residual stream after layer n-1; ``labels`` (B, T) uses -100
    for tokens without loss; position t predicts label t+1.
    """
    import torch

    kd = tuple(bool(x) for x in (kd or [False] * len(exits)))
    if kd[-1]:
        raise ValueError("the deepest exit is the distillation teacher: it keeps the cross-entropy")
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
    normed = [mods.norm(hidden[n][:, :-1].reshape(-1, anyh.shape[-1]).index_select(0, keep)) for n in exits]
    head = mods.head
    if type(head) is torch.nn.Linear:
        total, per_exit = _linear_ce().apply(head.weight, head.bias, targets, [c / count for c in coefs],
                                             mods.softcap, chunk, torch.is_grad_enabled(), kd, *normed)
        return total, per_exit.detach().cpu(), count
    sums = [_checkpointed_kd(mods, h, normed[-1], chunk) if d else _checkpointed_ce(mods, h, targets, chunk)
            for h, d in zip(normed, kd)]
    total = sum(c * s for c, s in zip(coefs, sums)) / count
    per_exit = torch.stack([s.detach().float() for s in sums]).cpu() / count
    return total, per_exit, count


class SortedLoss:
    """``loss_fn(model, batch) -> (loss, metrics)`` for the shared training loop.

    ``exits``: increasing layer counts; ``mode``: ``"sum"`` or ``"stochastic"`` (module doc);
    ``weights``: per-exit weights or a scheme name (:func:`scheme_weights`; default uniform, the
    paper's); ``exit_loss``: ``"ce"`` (every exit on the labels, the paper's) or ``"kd"`` (exits below
    the deepest distil the deepest exit's detached distribution, KL; the deepest keeps the labels);
    ``curriculum``: steps over which the exits enter, deepest first (:func:`curriculum_exits`; 0: all
    from the start); ``seed``: the sampler's seed; ``num_layers``: L, for the ``depth`` scheme.
    Metrics: ``loss@n`` (cross-entropy) or ``kl@n`` (distillation) per exit (sum), or ``sampled_exit``
    (stochastic). In stochastic mode the exit is drawn from ``(seed, batch["step"], batch["micro"])``,
    so resuming repeats the draws.
    """

    def __init__(self, exits: Sequence[int], mode: str = "sum", weights: Sequence[float] | str | None = None,
                 seed: int = 0, chunk_tokens: int | None = None, exit_loss: str = "ce", curriculum: int = 0,
                 num_layers: int | None = None):
        if mode not in LOSS_MODES:
            raise ValueError(f"mode must be one of {LOSS_MODES}, got {mode!r}")
        if exit_loss not in EXIT_LOSSES:
            raise ValueError(f"exit_loss must be one of {EXIT_LOSSES}, got {exit_loss!r}")
        self.exits = tuple(int(n) for n in exits)
        self.mode = mode
        self.weights = scheme_weights(weights, self.exits, num_layers or max(self.exits))
        self.exit_loss = exit_loss
        self.curriculum = int(curriculum)
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
        active = curriculum_exits(self.exits, batch.get("step"), self.curriculum)
        weight = dict(zip(self.exits, self.weights))
        if self.mode == "stochastic":
            # A pure function of (seed, step, micro) when the loop says where it is: a resumed run
            # samples the same exits as an uninterrupted one.
            rng = random.Random(f"{self.seed}:{batch['step']}:{batch['micro']}") if "step" in batch else self.rng
            exits = rng.choices(active, weights=[weight[n] for n in active], k=1)
            coefs = [1.0]
        else:
            exits = list(active)
            total_w = sum(weight[n] for n in exits)
            coefs = [weight[n] / total_w for n in exits]
        deepest = self.exits[-1]
        kd = [self.exit_loss == "kd" and n != deepest for n in exits]
        captured = sorted(set(exits) | ({deepest} if any(kd) else set()))
        hidden = capture_exits(model, mods, captured, batch["input_ids"], batch.get("attention_mask"))
        if any(kd) and exits[-1] != deepest:  # a sampled shallow exit: the teacher rides along at weight 0
            exits, coefs, kd = [*exits, deepest], [*coefs, 0.0], [*kd, False]
        loss, per_exit, _ = exits_ce(mods, hidden, batch["labels"], exits, coefs, self.chunk_tokens, kd)
        if self.mode == "stochastic":  # the loop averages metrics over micro-batches
            return loss, {"sampled_exit": float(exits[0])}
        return loss, {f"{'kl' if d else 'loss'}@{n}": float(v) for n, v, d in zip(exits, per_exit, kd)}


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
