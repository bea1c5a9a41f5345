"""Reference runtime for sorted checkpoints: exits sharing one model's weights and KV cache.

:class:`SortedModel` serves any exit (budget generation), self-speculative decoding (draft with the
first K layers, verify with the rest, reusing the draft's K/V) and confidence-based early exit.
Heavy imports happen when a model is loaded, not when this package is imported.
"""

from __future__ import annotations

from .result import GenerationResult
from .sorted_model import SortedModel

__all__ = ["GenerationResult", "SortedModel"]
