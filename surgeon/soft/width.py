"""SoFT along width: nested FFN widths trained with the depth exits (SortedNet, thesis ch. 4).

Sub-model (n, k) = layers 0..n-1, each keeping its first ``k`` FFN channels, + the shared final
norm and LM head: no new parameters, and ``surgeon extract --depth n --ffn k`` cuts it out. Run
``surgeon sort-width`` first so "first k" starts from the most important channels.

Each micro-batch samples one width ``k`` (uniformly, from ``(seed, step, micro)``, so a resumed run
draws the same widths), runs the forward pass under :func:`surgeon.width.masking.width_mask`, and
computes the depth part of the loss as :class:`~.losses.SortedLoss` does (every depth exit with
``--loss sum``, one sampled exit with ``--loss stochastic``): SortedNet's Algorithm 2 over
(depth, width) pairs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..errors import UsageError
from ..width.masking import width_mask
from .losses import SortedLoss


def parse_ffn_exits(spec: str | None, full: int) -> tuple[int, ...]:
    """``"0.25,0.5,0.75,1.0"`` (fractions of ``full``) or counts -> increasing channel counts ending
    with ``full`` (the full width is always trained, as the full depth is)."""
    if spec is None:
        return ()
    from ..width.plan import width_count

    items = [p.strip() for p in spec.split(",")]
    if not all(items):
        raise UsageError(f"--ffn-exits {spec!r} has an empty item", "give comma-separated widths, e.g. 0.25,0.5,0.75,1.0")
    counts = [width_count(p, full, "ffn-exits") for p in items]
    for a, b in zip(counts, counts[1:]):
        if b <= a:
            raise UsageError(f"--ffn-exits must increase ({a} channels then {b})",
                             "list the widths from narrowest to widest, e.g. 0.25,0.5,0.75,1.0")
    if counts[-1] != full:
        counts.append(full)
    return tuple(counts)


class SortedWidthLoss:
    """``loss_fn(model, batch)``: one sampled FFN width per micro-batch, depth exits as ``depth_loss``."""

    def __init__(self, depth_loss: SortedLoss, widths: Sequence[int], family=None, seed: int = 0):
        self.depth_loss = depth_loss
        self.widths = tuple(int(k) for k in widths)
        self.family = family
        self.seed = seed
        self.rng = random.Random(f"{seed}:width")

    def __call__(self, model, batch):
        rng = random.Random(f"{self.seed}:width:{batch['step']}:{batch['micro']}") if "step" in batch else self.rng
        k = rng.choice(self.widths)
        with width_mask(model, ffn=k, family=self.family):
            loss, metrics = self.depth_loss(model, batch)
        return loss, {**metrics, "sampled_ffn": float(k)}
