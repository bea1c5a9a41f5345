"""Reference runtime for sorted checkpoints: exits sharing one model's weights and KV cache.

:class:`SortedModel` serves any exit (budget generation), self-speculative decoding (draft with the
first K layers, verify with the rest, reusing the draft's K/V) and confidence-based early exit.
Heavy imports happen when a model is loaded, not when this package is imported: the public names
below are exported lazily (module ``__getattr__``), so importing ``surgeon.runtime.result`` (as
``surgeon generate --help`` does) pulls in neither torch nor transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .result import GenerationResult
    from .sorted_model import SortedModel

__all__ = ["GenerationResult", "SortedModel"]

_EXPORTS = {"GenerationResult": ".result", "SortedModel": ".sorted_model"}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # resolved once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
