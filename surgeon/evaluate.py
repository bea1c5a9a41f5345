"""Held-out loss: mean token-level cross-entropy (nats) and perplexity of a causal LM.

:func:`heldout_loss` takes a loaded model and either a :class:`~surgeon.data.CalibrationSet`,
a list of token lists (every next token is predicted), or examples ``{"input_ids", "labels"}``
(tokens labelled -100 are not scored). Sequences are right-padded per batch with an attention
mask; at most one batch of logits exists at a time, and the cross-entropy is computed in float32
in slices of the sequence so a bf16 model does not double its logits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from .errors import DataError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass
class LossResult:
    """Mean next-token cross-entropy in nats over ``tokens`` predicted tokens."""

    loss: float
    perplexity: float
    tokens: int
    sequences: int

    def to_dict(self) -> dict:
        return asdict(self)


def _examples(data) -> list[dict]:
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


def heldout_loss(
    model,
    data: Iterable,
    batch_size: int = 8,
    progress: Callable[[int, int, str], None] | None = None,
    slice_tokens: int = 256,
) -> LossResult:
    """Mean cross-entropy (nats) of ``model`` over all predicted tokens of ``data`` (see module doc)."""
    import torch

    from .train.loop import collate

    examples = _examples(data)
    if batch_size < 1:
        raise DataError(f"batch size {batch_size} is below 1", "give --batch-size 1 or more")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for b in range(0, len(examples), batch_size):
                batch = collate(examples[b:b + batch_size])
                ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
                width = ids.shape[1]
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
                targets = labels[:, 1:].to(device)
                for s in range(0, width - 1, slice_tokens):
                    e = min(s + slice_tokens, width - 1)
                    lg = logits[:, s:e].float()
                    tg = targets[:, s:e]
                    total += float(torch.nn.functional.cross_entropy(
                        lg.reshape(-1, lg.shape[-1]), tg.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"))
                    count += int((tg != IGNORE_INDEX).sum())
                del logits
                if progress:
                    progress(min(b + batch_size, len(examples)), len(examples), "evaluating")
    finally:
        model.train(was_training)
    if count == 0:
        raise DataError("the sequences have no predicted tokens (all labels are -100 or length 1)",
                        "give longer sequences or examples with supervised tokens")
    loss = total / count
    return LossResult(loss, math.exp(min(loss, 700.0)), count, len(examples))
