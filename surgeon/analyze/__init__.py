"""Layer similarity analysis (Gromov et al., sec. 3.2 and 4.3; ShortGPT Block Influence).

- :func:`analyze` ``(AnalyzeOptions, progress) -> AnalysisResult``: the ``surgeon analyze`` command
  (writes ``analysis.json`` and ``angular_distance.png``).
- :func:`compute_analysis`: the same measurement without writing anything (used by ``prune``).
- :func:`~.similarity.layer_similarity` / :func:`~.offload.offloaded_similarity`: the distance
  table of a loaded model (forward hooks) or of a checkpoint streamed one layer at a time.
"""

from __future__ import annotations

from .report import JSON_NAME, PNG_NAME, AnalysisResult, BlockChoice, argmin_blocks
from .run import AnalyzeOptions, analyze, compute_analysis

__all__ = ["JSON_NAME", "PNG_NAME", "AnalysisResult", "AnalyzeOptions", "BlockChoice", "analyze", "argmin_blocks",
           "compute_analysis"]
