"""``analyze --offload layer``: the similarity analysis with one decoder layer in memory at a time.

The layer-streamed engine (:class:`surgeon.eval.streamed.StreamedModel`) runs the full stack layer-major;
each layer's input and output feed the same accumulator as the in-memory path. The final norm and LM
head are never read (``logits=False``), nor the whole embedding (only the rows of the samples' ids).
Peak memory: the activations of all samples + the larger of one batch's embedding rows and one layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..eval.streamed import Stream, StreamedModel
from ..progress import Progress
from .similarity import Batch, SimilarityAccumulator, SimilarityTable


def offloaded_similarity(path: str | Path, batches: Sequence[Batch], dtype, progress: Progress | None = None,
                         device="cpu") -> SimilarityTable:
    """The same table as :func:`~.similarity.layer_similarity`, one layer resident at a time (on ``device``)."""
    sm = StreamedModel(path, device=device, dtype=dtype, logits=False)  # residual streams only: no head read
    prepared = sm.prepare([{"input_ids": b.input_ids, "attention_mask": b.attention_mask,
                            "position_ids": b.position_ids} for b in batches])
    acc = SimilarityAccumulator(sm.num_layers)
    sm.run(prepared, [Stream()], lambda s, l, b, x_in, x_out: acc.observe(batches[b], l, x_in, x_out),
           progress=progress)
    for batch in batches:
        acc.flush(batch)
    return acc.table()
