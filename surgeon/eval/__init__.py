"""Evaluation: one metrics engine for every command that measures a model, and the lm-eval bridge.

- :func:`~.metrics.measure_exits`: loss, perplexity, KL(full || exit) and top-1 agreement of any set
  of exits (prefix, narrowed, or explicit layers) from the fewest forward passes, float32 chunked
  cross-entropy. ``surgeon eval``, ``surgeon manifest`` quality records, and heal's / soft's
  before-and-after measurements all use it.
- :func:`~.metrics.heldout_loss`: the full model's loss on held-out data.
- :mod:`.capture`: the shared final norm / LM head of a loaded model and the residual stream at
  each exit, captured by forward hooks in one pass.
- :func:`~.harness.evaluate_tasks`: lm-evaluation-harness accuracy of an in-memory model (an exit view,
  a model with layers swapped) on benchmark tasks, from local data (:mod:`.task_sources`, fetched by
  :mod:`.task_data`) or the hub (``surgeon eval --tasks``, ``surgeon sweep``).

Importing this package does not import torch.
"""

from .metrics import ExitQuality, LossResult, heldout_loss, measure_exits

__all__ = ["ExitQuality", "LossResult", "heldout_loss", "measure_exits"]
