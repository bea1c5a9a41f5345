"""The one metrics engine: held-out loss, perplexity, KL(full || exit) and top-1 agreement of any exits.

:func:`measure_exits` takes a loaded model, held-out examples (``{"input_ids", "labels"}``; tokens
labelled -100 are not scored) and any set of exits (a layer count K, or an
:class:`~surgeon.exits.ExitSpec` with explicit layers and/or widths). Per batch, the residual stream
at every exit comes from as few forward passes as possible, none of which copies a weight:

- one pass with hooks serves every full-width prefix exit and the full model (the KL reference);
- each distinct narrower width serves its prefix exits from one pass under
  :func:`~surgeon.width.masking.width_mask`;
- each non-prefix exit gets a pass with the other layers passed through (the runtime's layer-subset
  forward, :meth:`surgeon.runtime.stack.Stack.using`).

Each exit's scored rows are then read through the shared final norm and LM head (with the family's
soft-capping) and reduced in float32 by :func:`~surgeon.eval.logits.score_rows`: ``chunk_tokens``
rows at a time, one slice of the vocabulary at a time (the whole vocabulary for a loaded model's head;
slices read from the checkpoint for a layer-streamed one), with an online log-sum-exp, so at most two
blocks of logits (the full model's and one exit's) exist at once. For each exit, over the same
scored tokens: mean cross-entropy (nats), perplexity, KL(full || exit) in nats per token, and the
fraction of tokens whose top-1 token matches the full model's.

:func:`heldout_loss` is the full model's loss alone, for a :class:`~surgeon.data.CalibrationSet`, a
list of token lists (every next token scored) or examples.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass

from ..data.training import IGNORE_INDEX, collate
from ..devices import execution_device, input_device
from ..errors import DataError
from ..exits import ExitSpec
from ..progress import Progress
from .capture import ExitModules, capture_exits, exit_modules
from .logits import VocabHead, score_rows

log = logging.getLogger(__name__)


@dataclass
class LossResult:
    """Mean next-token cross-entropy in nats over ``tokens`` predicted tokens."""

    loss: float
    perplexity: float
    tokens: int
    sequences: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ExitQuality:
    """Held-out quality of the exit with ``exit`` layers (read through the shared norm and head)."""

    exit: int
    loss: float
    perplexity: float
    kl_full_exit: float | None = None
    top1_agreement: float | None = None


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))


def as_examples(data) -> list[dict]:
    """``{"input_ids", "labels"}`` examples from a CalibrationSet, token lists, or examples."""
    seqs = getattr(data, "input_ids", data)  # a CalibrationSet has .input_ids
    out = []
    for x in seqs:
        if isinstance(x, dict):
            ids = list(x["input_ids"])
            labels = list(x.get("labels", ids))
        else:
            ids = list(x)
            labels = list(ids)
        if len(ids) != len(labels):
            raise DataError("an example's labels and input_ids differ in length", "build examples with training_examples()")
        if ids:
            out.append({"input_ids": ids, "labels": labels})
    if not out:
        raise DataError("no sequences to evaluate", "give at least one non-empty sequence")
    return out


def _passes(exits: Sequence[ExitSpec], L: int, kl: bool) -> list[tuple[tuple, tuple[int, ...] | None, dict | None]]:
    """Group exits into forward passes: ``[(exit keys, kept layers or None = all, widths or None)]``.

    A key is ``(tuple(layers), widths items)``; the first pass always runs the full-width stack.
    """
    def key(e: ExitSpec) -> tuple:
        return tuple(e.layers), tuple(sorted((e.widths or {}).items()))

    full = [key(e) for e in exits if e.depth is not None]
    if kl:
        full.append((tuple(range(L)), ()))
    out = [(tuple(dict.fromkeys(full)), None, None)]
    by_width: dict[tuple, list] = {}
    for e in exits:
        if e.depth is None and e.widths and e.layers == list(range(len(e.layers))):
            by_width.setdefault(key(e)[1], []).append(key(e))
        elif e.depth is None:
            out.append(((key(e),), tuple(e.layers), e.widths))
    for w, keys in by_width.items():
        out.append((tuple(keys), None, dict(w)))
    return [p for p in out if p[0]]


def _run_pass(model, mods: ExitModules, keys: tuple, layers, widths, ids, mask) -> dict:
    """Residual streams ``{key: (B, T, D)}`` of one pass (see module doc)."""
    from ..runtime.stack import Stack
    from ..train.model import unwrap
    from ..width.masking import width_mask

    depths = {k: (k[0][-1] + 1) for k in keys}  # capture after the exit's last kept layer
    with ExitStack() as stack:
        if widths:
            stack.enter_context(width_mask(model, ffn=widths.get("ffn"), kv_heads=widths.get("kv_heads")))
        if layers is not None:
            stack.enter_context(Stack(unwrap(model, peft=True)).using(tuple(layers)))
        hidden = capture_exits(model, mods, sorted(set(depths.values())), ids, mask, stop_early=layers is None)
    return {k: hidden[d] for k, d in depths.items()}


class _Scores:
    """Cross-entropy, KL(full || exit) and top-1 agreement sums of every exit key (:func:`~.logits.score_rows`)."""

    def __init__(self, keys, full_key, kl: bool, chunk_tokens: int | None):
        self.keys, self.full_key, self.kl, self.chunk_tokens = keys, full_key, kl, chunk_tokens
        self.ce = dict.fromkeys(keys, 0.0)
        self.kls = dict.fromkeys(keys, 0.0)
        self.agree = dict.fromkeys(keys, 0)
        self.count = 0

    def add(self, head: VocabHead, normed: dict, targets) -> None:
        """Score the normed residual-stream rows ``{key: (N, D)}`` of ``N`` scored tokens against ``targets``
        (every exit key, and the full model's when ``kl``)."""
        full = self.full_key if self.kl else None
        wanted = dict.fromkeys([*self.keys, full] if full is not None else self.keys)
        got = score_rows(head, {k: normed[k] for k in wanted}, targets, full, self.chunk_tokens)
        for k in self.keys:
            self.ce[k] += got[k].ce
            self.kls[k] += got[k].kl
            self.agree[k] += got[k].agree
        self.count += len(targets)

    def qualities(self, specs: Sequence[ExitSpec], keys: Sequence) -> list[ExitQuality]:
        if self.count == 0:
            raise DataError("the evaluation data has no scored tokens (all labels are -100, or sequences of length 1)",
                            "give longer sequences or examples with supervised tokens")
        out, n, kl = [], self.count, self.kl
        for e, k in zip(specs, keys):
            loss = self.ce[k] / n
            out.append(ExitQuality(e.num_layers, loss, perplexity(loss), self.kls[k] / n if kl else None,
                                   self.agree[k] / n if kl else None))
        return out


def _scored(labels):
    """Flattened next-token targets of a batch and the indices of the scored ones."""
    targets = labels[:, 1:].reshape(-1)
    keep = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    return targets[keep], keep


def _select(h, keep):
    return h[:, :-1].reshape(-1, h.shape[-1]).index_select(0, keep.to(h.device))


def measure_exits(model, examples: Sequence[dict], exits: Iterable[int | ExitSpec], *, batch_size: int = 4,
                  kl: bool = True, chunk_tokens: int | None = None, progress: Progress | None = None,
                  mods: ExitModules | None = None) -> tuple[list[ExitQuality], int]:
    """Quality of every exit over ``examples`` (see module doc); returns ``(qualities in the order
    given, scored tokens)``. ``kl=True`` also runs the full depth to compare against. ``model`` is a
    loaded model or a :class:`~surgeon.eval.streamed.StreamedModel` (one decoder layer in memory at a time)."""
    import torch

    from .streamed import StreamedModel

    streamed = isinstance(model, StreamedModel)
    mods = None if streamed else (mods or exit_modules(model))
    L = model.num_layers if streamed else mods.num_layers
    specs = [e if isinstance(e, ExitSpec) else ExitSpec(None, list(range(int(e)))) for e in exits]
    keys = [(tuple(e.layers), tuple(sorted((e.widths or {}).items()))) for e in specs]
    scores = _Scores(list(dict.fromkeys(keys)), (tuple(range(L)), ()), kl, chunk_tokens)
    passes = _passes(specs, L, kl)
    if streamed:
        _measure_streamed(model, examples, passes, scores, batch_size, progress)
        return scores.qualities(specs, keys), scores.count
    device = input_device(model)  # with a device map the layers, and the exits' hidden states, live elsewhere
    head_device = execution_device(mods.head, device)
    head = VocabHead(mods)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in range(0, len(examples), batch_size):
                batch = collate(examples[b:b + batch_size])
                ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                hidden: dict = {}
                for pkeys, layers, widths in passes:
                    hidden.update(_run_pass(model, mods, pkeys, layers, widths, ids, mask))
                targets, keep = _scored(batch["labels"].to(head_device))
                normed = {k: head.norm(_select(h, keep).to(head_device)) for k, h in hidden.items()}
                del hidden
                scores.add(head, normed, targets)
                if progress:
                    progress(min(b + batch_size, len(examples)), len(examples), "evaluating")
    finally:
        model.train(was_training)
    return scores.qualities(specs, keys), scores.count


def _measure_streamed(sm, examples, passes, scores: _Scores, batch_size: int, progress) -> None:
    """:func:`measure_exits` layer-major: every pass is a stream; exit rows are kept until the head runs."""
    import torch

    from .streamed import Stream

    batches = [collate(examples[b:b + batch_size]) for b in range(0, len(examples), batch_size)]
    scored = [_scored(batch["labels"]) for batch in batches]
    prepared = sm.prepare([{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]} for b in batches])
    streams, capture = [], []  # capture[s]: {layer index: [keys captured after it]}
    for pkeys, layers, widths in passes:
        at: dict[int, list] = {}
        for k in pkeys:
            at.setdefault(k[0][-1], []).append(k)
        streams.append(Stream(frozenset(layers if layers is not None else range(max(at) + 1)), widths))
        capture.append(at)
    rows = [dict() for _ in batches]

    def on_output(s, l, b, x_in, x_out):
        for k in capture[s].get(l, ()):
            rows[b][k] = _select(x_out, scored[b][1])

    depth = max(max(st.layers) for st in streams) + 1
    sm.run(prepared, streams, on_output, depth=depth, progress=progress)
    del prepared
    with sm.head() as head, torch.inference_mode():  # every batch's rows in one pass over the head's slices
        normed = {}
        for k in list(rows[0]):
            normed[k] = torch.cat([head.norm(r.pop(k).to(sm.device)) for r in rows])
        scores.add(head, normed, torch.cat([t for t, _ in scored]).to(sm.device))


def heldout_loss(model, data, batch_size: int = 8, progress: Progress | None = None,
                 chunk_tokens: int | None = None) -> LossResult:
    """Mean cross-entropy (nats) of ``model`` (the full model; loaded or a
    :class:`~surgeon.eval.streamed.StreamedModel`) over all scored tokens of ``data``."""
    from .streamed import StreamedModel

    if batch_size < 1:
        raise DataError(f"batch size {batch_size} is below 1", "give --batch-size 1 or more")
    examples = as_examples(data)
    mods = None if isinstance(model, StreamedModel) else exit_modules(model)
    L = mods.num_layers if mods else model.num_layers
    quality, tokens = measure_exits(model, examples, [L], batch_size=batch_size, kl=False,
                                    chunk_tokens=chunk_tokens, progress=progress, mods=mods)
    return LossResult(quality[0].loss, quality[0].perplexity, tokens, len(examples))
