"""Learning-rate schedule: linear warm-up then cosine decay to zero (the pruning paper, App. A.1)."""

from __future__ import annotations

import math

# The paper warms up for 100 steps; short runs cap warm-up at this fraction of the steps.
MAX_WARMUP_FRACTION = 0.1


def effective_warmup(warmup: int, steps: int) -> int:
    """``warmup`` capped at 10% of ``steps`` (a 50-step run warms up for 5 steps, not 100)."""
    return max(0, min(int(warmup), int(steps * MAX_WARMUP_FRACTION)))


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Multiplier of the peak LR for optimizer step ``step`` (0-based) of ``steps``.

    Warm-up ramps (step+1)/warmup so the first step already learns (HF's schedule spends
    step 0 at LR 0); the cosine then falls from 1 at the end of warm-up to 0 after the last step.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer, lr: float) -> None:
    """Every parameter group at ``lr`` times its ``lr_scale`` (1 when the group has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
