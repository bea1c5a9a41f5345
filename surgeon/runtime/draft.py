"""A reduced-vocabulary LM head for drafting (FR-Spec, Zhao et al. 2025): cheaper drafts, same output.

At batch size 1 the LM head of a small model is a large share of one decoding step (SmolLM2-135M:
49,152 x 576, 12% of a bf16 step), and a draft pays it once per drafted token. Drafting only needs
a *proposal*, so the draft may score a subset of the vocabulary: the ``n`` most frequent tokens.
The verifier still uses the full head, so greedy output stays equal to full greedy decoding (a token
outside the subset can never be drafted: it is simply produced by the verifier after a rejection),
and speculative sampling stays exact (the draft distribution is zero outside the subset, which the
acceptance test handles like any other ``q``).

The subset is ranked by token frequency in texts the caller gives (the data the exits were trained
on is the natural choice); ids the texts never use follow in id order, which for byte-level BPE
vocabularies is the merge order and roughly frequency order. Special tokens (EOS above all) are
always kept. The subset's rows of the head are copied once (``n x hidden``; 9 MiB for 8,192 rows
of SmolLM2 in bf16); the rest of the model is shared as everywhere in the runtime.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import torch

from ..errors import UsageError
from .kernels import is_packed, pack_linears


def rank_vocabulary(vocab_size: int, tokenizer=None, texts: Iterable[str] | None = None) -> list[int]:
    """Token ids, most frequent in ``texts`` first, then the rest in id order."""
    counts: Counter[int] = Counter()
    if texts is not None:
        if tokenizer is None:
            raise UsageError("ranking the draft vocabulary by text needs a tokenizer", "load a checkpoint with one")
        for t in texts:
            counts.update(i for i in tokenizer(t, add_special_tokens=False)["input_ids"] if 0 <= i < vocab_size)
    seen = [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    used = set(seen)
    return seen + [i for i in range(vocab_size) if i not in used]


class DraftHead:
    """Final norm's output -> logits over a token subset; ``token(index)`` maps back to vocabulary ids.

    The subset's rows form an ``nn.Linear`` of their own; when the model runs oneDNN kernels
    (:mod:`surgeon.runtime.kernels`), it is packed the same way.
    """

    def __init__(self, model, ids: torch.Tensor):
        head = model.get_output_embeddings()
        if head is None or getattr(head, "weight", None) is None:
            raise UsageError(f"{type(model).__name__} has no output embedding to take draft rows from",
                             "drop --draft-vocab")
        vocab = head.weight.shape[0]
        ids = torch.unique(torch.as_tensor(ids, dtype=torch.long))
        if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise UsageError(f"draft vocabulary ids must be in 0..{vocab - 1}", "give ids of this model's vocabulary")
        self.vocab_size = vocab
        self.ids = ids.to(head.weight.device)
        bias = getattr(head, "bias", None)
        self.linear = torch.nn.Linear(head.weight.shape[1], len(self.ids), bias=bias is not None, device="meta")
        with torch.no_grad():
            self.linear.weight = torch.nn.Parameter(head.weight.index_select(0, self.ids), requires_grad=False)
            if bias is not None:
                self.linear.bias = torch.nn.Parameter(bias.index_select(0, self.ids), requires_grad=False)
        if is_packed(head):
            pack_linears(self.linear, batch_hint=1)
        self.softcap = getattr(model.config, "final_logit_softcapping", None)

    @classmethod
    def top(cls, model, n: int, tokenizer=None, texts: Iterable[str] | None = None, keep: Iterable[int] = ()) -> DraftHead:
        """The ``n`` highest-ranked ids (:func:`rank_vocabulary`) plus ``keep`` (special tokens)."""
        vocab = model.get_output_embeddings().weight.shape[0]
        if n < 1:
            raise UsageError(f"draft vocabulary size {n} < 1", "give a positive size, or 0 for the full vocabulary")
        ranked = rank_vocabulary(vocab, tokenizer, texts)[: min(n, vocab)]
        return cls(model, torch.tensor(sorted(set(ranked) | {k for k in keep if 0 <= k < vocab})))

    def __len__(self) -> int:
        return int(self.ids.numel())

    def logits(self, normed: torch.Tensor) -> torch.Tensor:
        """``normed``: final-norm output [..., hidden] -> [..., len(self)] logits (soft-capped like the model)."""
        out = self.linear(normed)
        if self.softcap:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out

    def token(self, index: int) -> int:
        return int(self.ids[index])

    def full_probs(self, q: torch.Tensor) -> torch.Tensor:
        """A distribution over the subset -> the same distribution over the whole vocabulary (zeros elsewhere)."""
        return torch.zeros(self.vocab_size, dtype=q.dtype, device=q.device).index_copy_(0, self.ids, q)
