"""Layer similarity analysis (Gromov et al., sec. 3.2 and 4.3; ShortGPT Block Influence).

- :func:`compute_analysis`: angular distances, l*(n) and Block Influence of a checkpoint (nothing
  written; ``surgeon analyze`` is :func:`surgeon.commands.analyze.run`, ``prune`` uses it too).
- :func:`~.similarity.layer_similarity` / :func:`~.offload.offloaded_similarity`: the distance
  table of a loaded model (forward hooks) or of a checkpoint streamed one layer at a time.
- :mod:`.report`: l*(n) (eq. 6), ``analysis.json`` and the heatmap.
- :func:`~.importance.width_importance`: the importance of FFN channels and KV groups (``sort-width``).
"""

from __future__ import annotations

from .compute import compute_analysis
from .report import JSON_NAME, PNG_NAME, AnalysisResult, BlockChoice, argmin_blocks

__all__ = ["JSON_NAME", "PNG_NAME", "AnalysisResult", "BlockChoice", "argmin_blocks", "compute_analysis"]
