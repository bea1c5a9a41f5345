"""Distillation losses for healing (``--distill``): pull the pruned student toward the unpruned teacher.

- ``logits``: cross-entropy on the labels + ``weight`` x KL(teacher || student) of the next-token
  distributions on the supervised positions.
- ``residual``: the pruning paper's eq. 8 idea: cross-entropy + ``weight`` x the mean squared
  mismatch between the student's residual stream entering the first layer after the cut
  (``hidden_states[start]``) and the teacher's entering layer ``start + n`` (the same point of
  the unpruned stack), normalized by the teacher's mean square so the weight is scale-free.

The teacher runs under ``torch.no_grad`` in eval mode, never wrapped by DDP.
"""

from __future__ import annotations

from collections.abc import Callable

from ..data.training import IGNORE_INDEX
from ..errors import UsageError

MODES = ("none", "logits", "residual")


def distill_loss(teacher, mode: str, weight: float = 1.0, cut: tuple[int, int] | None = None) -> Callable:
    """A ``loss_fn(model, batch) -> (loss, metrics)`` for :func:`surgeon.train.train`.

    ``cut`` = ``(start, n)``: the first dropped layer and how many were dropped (``residual`` only).
    Metrics: ``ce`` (the plain cross-entropy) and ``aux`` (the distillation term).
    """
    import torch
    import torch.nn.functional as F

    if mode not in MODES[1:]:
        raise UsageError(f"unknown --distill {mode!r}", "use logits or residual")
    if mode == "residual" and cut is None:
        raise UsageError("--distill residual needs to know where the layers were cut",
                         "heal a model written by surgeon prune (its provenance records the block), or use --distill logits")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss_fn(model, batch):
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        hidden = mode == "residual"
        with torch.no_grad():
            t_out = teacher(**inputs, use_cache=False, output_hidden_states=hidden)
        s_out = model(**inputs, labels=batch["labels"], use_cache=False, output_hidden_states=hidden)
        ce = s_out.loss
        if mode == "logits":
            mask = (batch["labels"][:, 1:] != IGNORE_INDEX)  # positions whose next token is scored
            s = F.log_softmax(s_out.logits[:, :-1].float(), dim=-1)[mask]
            t = F.log_softmax(t_out.logits[:, :-1].float(), dim=-1)[mask]
            aux = F.kl_div(s, t, log_target=True, reduction="batchmean")
        else:
            start, n = cut
            mask = batch["attention_mask"].bool()
            sh = s_out.hidden_states[start].float()[mask]
            th = t_out.hidden_states[start + n].float()[mask]
            aux = ((sh - th) ** 2).mean() / (th ** 2).mean().clamp_min(1e-8)
        return ce + weight * aux, {"ce": float(ce.detach()), "aux": float(aux.detach())}

    return loss_fn
