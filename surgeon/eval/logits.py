"""Exit scores from the LM head one vocabulary slice at a time, with online reductions.

Cross-entropy, KL(full || exit) and top-1 agreement need each row's whole distribution over the
vocabulary, but not all of it at once. :func:`score_rows` reads the logits of a
:class:`VocabHead` slice by slice (``chunk_tokens`` rows x one slice of the vocabulary, float32) and
keeps, per row and exit, an online log-sum-exp (running max ``m`` and ``s = sum exp(z - m)``,
rescaled by ``exp(m_old - m_new)`` when the max grows), the target token's logit, and the first
index of the running max. KL(p || q) = sum_v p_v (z_v - y_v) - lse(z) + lse(y) for full-model logits
``z`` and exit logits ``y``; the first term is ``a / s_z`` with ``a = sum exp(z - m_z) (z - y)``, an
online sum rescaled by the same factor as ``s_z``. So one pass over the vocabulary gives the exact
results of full-vocabulary log-softmaxes (tested to 1e-5 against them), and neither the head nor a
(tokens x vocabulary) float tensor is ever whole: at most four (rows x slice) float32 blocks exist
at once (the full model's logits and their exponentials, one exit's logits, one temporary).

:class:`VocabHead` slices a loaded model's head (:class:`~surgeon.eval.capture.ExitModules`) by
:func:`default_vocab_chunk` rows when it is a plain linear layer in memory, else runs it whole; the
layer-streamed model (:class:`~surgeon.eval.streamed.StreamedModel`) reads its head from the
checkpoint in such slices, each in its stored dtype and cast when used.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass

from .capture import CHUNK_ELEMENTS, ExitModules, default_chunk_tokens


def default_vocab_chunk(hidden_size: int) -> int:
    """Head rows per vocabulary slice: 64 MiB of float32 weights (CHUNK_ELEMENTS), the budget of one
    chunk of logits; 8192 rows for hidden size 2048, 2048 for 8192."""
    return max(1, CHUNK_ELEMENTS // max(1, hidden_size))


class VocabHead:
    """The final norm, LM head and soft-cap of ``mods`` as vocabulary slices of ``vocab_chunk`` rows
    (default :func:`default_vocab_chunk`). A plain linear head in memory (``nn.Linear``, or a frozen head
    held narrow, :class:`~surgeon.train.frozen.HeldLinear`) is sliced directly: views of its weight, cast
    to its compute dtype slice by slice; any other (peft- or bitsandbytes-wrapped, offloaded by a
    device map) is one slice, the module's own forward."""

    def __init__(self, mods: ExitModules, vocab_chunk: int | None = None):
        self.mods = mods
        head = mods.head
        self.vocab = int(getattr(head, "out_features", None) or head.weight.shape[0])
        self.chunk = vocab_chunk or default_vocab_chunk(int(getattr(head, "in_features", 0) or head.weight.shape[1]))
        self.sliced = _in_memory_linear(head)

    def norm(self, hidden):
        """The final norm of residual-stream rows."""
        return self.mods.norm(hidden)

    def weights(self, start: int, stop: int) -> tuple:
        """``(weight, bias or None)`` of vocabulary rows ``start .. stop - 1`` in the dtype the head computes in."""
        head = self.mods.head
        dtype = getattr(head, "compute_dtype", head.weight.dtype)
        bias = head.bias[start:stop].to(dtype) if head.bias is not None else None
        return head.weight[start:stop].to(dtype), bias

    def slices(self) -> Iterator[tuple[int, int, Callable]]:
        """``(start, width, logits)`` per slice of the vocabulary, in order: ``logits(normed rows)`` are
        the soft-capped float32 logits of tokens ``start .. start + width - 1``."""
        import torch

        cap, head = self.mods.cap, self.mods.head
        if not self.sliced:
            yield 0, self.vocab, lambda h: cap(head(h)).float()
            return
        for start in range(0, self.vocab, self.chunk):
            stop = min(self.vocab, start + self.chunk)
            w, b = self.weights(start, stop)
            yield start, stop - start, lambda h, w=w, b=b: cap(torch.nn.functional.linear(h.to(w.dtype), w, b)).float()


def _in_memory_linear(head) -> bool:
    """True for an ``nn.Linear`` or held-narrow head whose weight is in memory and that no hook moves."""
    import torch

    from ..train.frozen import HeldLinear

    weight = getattr(head, "weight", None)
    return (type(head) in (torch.nn.Linear, HeldLinear) and weight is not None and weight.device.type != "meta"
            and not hasattr(head, "_hf_hook"))


@dataclass
class RowScores:
    """Per-exit sums over the scored rows: cross-entropy (nats), KL(full || exit) (nats; 0 without
    a reference) and the number of rows whose top-1 token is the full model's."""

    ce: float = 0.0
    kl: float = 0.0
    agree: int = 0


class _Online:
    """Running log-sum-exp, target logit and first argmax of ``n`` rows (module doc); ``a``: the KL
    sum against the full model's logits (exits other than the full model, when there is a reference)."""

    def __init__(self, n: int, device, kl: bool):
        import torch

        self.m = torch.full((n,), float("-inf"), device=device)
        self.s = torch.zeros(n, device=device)
        self.target = torch.zeros(n, device=device)
        self.arg = torch.zeros(n, dtype=torch.long, device=device)
        self.a = torch.zeros(n, device=device) if kl else None

    def fold(self, rows: slice, start: int, z, t, keep: bool = False):
        """Fold logits ``z`` (vocabulary columns ``start ..``) of rows ``rows`` with targets ``t``.
        ``z`` is consumed unless ``keep``; returns ``(exp(old max - new max), exp(z - new max))``."""
        import torch

        val, idx = z.max(-1)
        old = self.m[rows]
        new = torch.maximum(old, val)
        scale = (old - new).exp_()  # 0 on the first slice (old = -inf)
        inside = ((t >= start) & (t < start + z.shape[1])).nonzero().squeeze(1)
        self.target[inside + rows.start] = z[inside, t[inside] - start]
        self.arg[rows] = torch.where(val > old, idx + start, self.arg[rows])  # ties keep the earlier index
        e = (z - new[:, None]).exp_() if keep else z.sub_(new[:, None]).exp_()
        self.s[rows] = self.s[rows] * scale + e.sum(-1)
        self.m[rows] = new
        return scale, e

    def lse(self):
        return self.m + self.s.log()


def score_rows(head: VocabHead, normed: dict, targets, full: Hashable | None,
               chunk_tokens: int | None = None) -> dict[Hashable, RowScores]:
    """Scores of every key's normed rows ``{key: (N, D)}`` against ``targets`` (N,), slice by slice
    (module doc); ``chunk_tokens`` rows per block of logits (default: 64 MiB of float32 per block).
    ``full``: the key whose distribution the others' KL and top-1 compare against (None: CE only)."""
    import torch

    n = int(targets.shape[0])
    stats = {k: _Online(n, targets.device, full is not None and k != full) for k in normed}
    for start, width, logits in head.slices():
        chunk = int(chunk_tokens or default_chunk_tokens(width))
        for s in range(0, n, chunk):
            rows = slice(s, min(n, s + chunk))
            t = targets[rows]
            z = ez = scale = None
            if full is not None:  # the reference first: the exits' KL sums rescale with its max
                z = logits(normed[full][rows])
                scale, ez = stats[full].fold(rows, start, z, t, keep=True)
            for k, st in stats.items():
                if k == full:
                    continue
                y = logits(normed[k][rows])
                if st.a is not None:
                    st.a[rows] = st.a[rows] * scale + torch.sub(z, y).mul_(ez).sum(-1)
                st.fold(rows, start, y, t)
                del y
            del z, ez
        del logits  # the slice's weights go before the next slice is read
    ref = stats[full] if full is not None else None
    out = {}
    for k, st in stats.items():
        lse = st.lse()
        r = RowScores(ce=float((lse - st.target).double().sum()))  # float64 sums: the same however rows are batched
        if ref is not None:
            if st.a is not None:
                r.kl = float((st.a / ref.s - ref.lse() + lse).double().sum())
            r.agree = int((st.arg == ref.arg).sum())
        out[k] = r
    return out
