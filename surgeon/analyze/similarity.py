"""Angular distance between residual streams (eq. 7 of Gromov et al.) and ShortGPT Block Influence.

For each sample, x_l is the last real token's residual stream entering decoder layer l
(l = 0..L-1) and x_L is the last layer's output *before* the final norm. Both are read by one
forward hook per decoder layer (``output_hidden_states`` would give the post-norm output as its
last entry). The table holds ``d(l, l+n) = arccos(cos(x_l, x_{l+n})) / pi`` averaged over samples
for every pair of depths 0 <= l < l+n <= L. Block Influence of layer l is
``1 - cos(x_l, x_{l+1})`` averaged over every real token of every sample.

Sequences of different lengths are batched with an attention mask, right- or left-padded;
position ids follow the real tokens, and "last token" is the last real token of each row.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..errors import DataError
from ..progress import Progress

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """One padded batch: ``input_ids``/``attention_mask``/``position_ids`` (B, T), ``last`` (B,)."""

    index: int
    input_ids: object
    attention_mask: object
    position_ids: object
    last: object

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


def make_batches(sequences: Sequence[Sequence[int]], batch_size: int = 8, padding: str = "right",
                 pad_id: int = 0) -> list[Batch]:
    """Pad ``sequences`` into batches (in order). ``padding`` is ``"right"`` or ``"left"``."""
    import torch

    if padding not in ("right", "left"):
        raise ValueError(f"padding must be 'right' or 'left', not {padding!r}")
    if batch_size < 1:
        raise DataError(f"batch size {batch_size} is below 1", "give --batch-size 1 or more")
    seqs = [list(s) for s in sequences]
    if not seqs or any(len(s) == 0 for s in seqs):
        raise DataError("no token sequences to analyze (or an empty one)", "give calibration data with text in it")
    out = []
    for b, start in enumerate(range(0, len(seqs), batch_size)):
        chunk = seqs[start:start + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, s in enumerate(chunk):
            sl = slice(width - len(s), width) if padding == "left" else slice(0, len(s))
            ids[i, sl] = torch.tensor(s, dtype=torch.long)
            mask[i, sl] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        if padding == "left":
            last = torch.full((len(chunk),), width - 1, dtype=torch.long)
        else:
            last = mask.sum(-1) - 1
        out.append(Batch(b, ids, mask, pos, last))
    return out


@dataclass
class SimilarityTable:
    """Mean angular distances ``distance[i][j]`` between depths i, j in 0..L, and Block Influence."""

    num_layers: int
    samples: int
    tokens: int
    distance: list[list[float]]  # (L+1) x (L+1), symmetric, zero diagonal
    block_influence: list[float]  # L entries

    def d(self, l: int, n: int) -> float:
        """Angular distance between the input of layer l and the input of layer l+n."""
        return self.distance[l][l + n]

    def row(self, n: int) -> list[float]:
        """``[d(0, n), d(1, n), ..., d(L-n, n)]``."""
        return [self.distance[l][l + n] for l in range(self.num_layers - n + 1)]


class SimilarityAccumulator:
    """Collects last-token vectors and Block Influence sums, layer by layer and batch by batch.

    ``observe`` may be called in any order (batch-major for a hooked forward pass, layer-major for
    the offloaded runner); ``flush(b)`` folds batch b's distances into the running sum once all its
    layers were observed.
    """

    def __init__(self, num_layers: int):
        import torch

        self.L = num_layers
        self.dist_sum = torch.zeros(num_layers + 1, num_layers + 1, dtype=torch.float64)
        self.bi_sum = torch.zeros(num_layers, dtype=torch.float64)
        self.bi_tokens = [0] * num_layers
        self.samples = 0
        self._vecs: dict[int, object] = {}
        self._seen: dict[int, set[int]] = {}
        self._norm_cache: dict[int, tuple] = {}  # batch -> (norms of the last x_out, that x_out)

    def observe(self, batch: Batch, layer: int, x_in, x_out) -> None:
        import torch

        B, T, D = x_in.shape
        dev = x_in.device
        vecs = self._vecs.get(batch.index)
        if vecs is None:
            vecs = self._vecs[batch.index] = torch.zeros(B, self.L + 1, D, dtype=torch.float32)
            self._seen[batch.index] = set()
        # last real token of each row, as one index_select on the flattened (B*T, D) view
        flat_last = torch.arange(B, device=dev) * T + batch.last.to(dev)
        a, b = x_in.reshape(B * T, D).float(), x_out.reshape(B * T, D).float()
        vecs[:, layer] = a.index_select(0, flat_last).cpu()
        if layer == self.L - 1:
            vecs[:, self.L] = b.index_select(0, flat_last).cpu()
        self._seen[batch.index].add(layer)
        # Block Influence: the output of layer l is the input of layer l+1, so its norms are reused.
        cached = self._norm_cache.get(batch.index)
        norm_in = cached[0] if cached is not None and cached[1] is x_in else None
        if norm_in is None:
            norm_in = torch.linalg.vector_norm(a, dim=-1)
        norm_out = torch.linalg.vector_norm(b, dim=-1)
        self._norm_cache[batch.index] = (norm_out, x_out)
        dot = torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(B * T)
        cos = dot / (norm_in * norm_out).clamp_min(1e-8)
        real = batch.attention_mask.to(dev).reshape(B * T).bool()
        self.bi_sum[layer] += float(torch.where(real, 1.0 - cos, torch.zeros_like(cos)).sum(dtype=torch.float64))
        self.bi_tokens[layer] += int(real.sum())
        if layer == self.L - 1:
            self._norm_cache.pop(batch.index, None)

    def flush(self, batch: Batch) -> None:
        import torch

        seen = self._seen.pop(batch.index, set())
        if len(seen) != self.L:
            missing = sorted(set(range(self.L)) - seen)
            raise RuntimeError(f"decoder layers {missing[:5]} never ran during the forward pass")
        v = self._vecs.pop(batch.index).double()
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        cos = (v @ v.transpose(1, 2)).clamp(-1.0, 1.0)
        self.dist_sum += torch.arccos(cos).sum(0) / math.pi
        self.samples += v.shape[0]

    def table(self) -> SimilarityTable:
        if self.samples == 0:
            raise DataError("no samples were analyzed", "give calibration data with at least one sequence")
        d = self.dist_sum / self.samples
        d.fill_diagonal_(0.0)
        bi = [float(s / max(t, 1)) for s, t in zip(self.bi_sum.tolist(), self.bi_tokens)]
        if not all(math.isfinite(x) for row in d.tolist() for x in row):
            raise RuntimeError("the angular distances are not finite (NaN/inf activations); try --compute-dtype fp32")
        return SimilarityTable(self.L, self.samples, self.bi_tokens[0], d.tolist(), bi)


def layer_similarity(model, layers_path: str, batches: Sequence[Batch],
                     progress: Progress | None = None) -> SimilarityTable:
    """One forward pass of a loaded causal LM over ``batches`` with hooks on its decoder layers.

    ``layers_path`` is the decoder ModuleList's path in ``model`` (``"model.layers"``). The LM head
    is not run: the forward stops at the base model.
    """
    import torch

    layers = model.get_submodule(layers_path)
    acc = SimilarityAccumulator(len(layers))
    current: dict[str, Batch] = {}

    def hook_for(l: int):
        def hook(module, args, kwargs, output):
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = output[0] if isinstance(output, (tuple, list)) else output
            acc.observe(current["batch"], l, x_in, x_out)
        return hook

    base = getattr(model, "base_model", model)
    device = next(model.parameters()).device
    handles = [layer.register_forward_hook(hook_for(l), with_kwargs=True) for l, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    total = sum(b.size for b in batches)
    done = 0
    try:
        with torch.inference_mode():
            for batch in batches:
                current["batch"] = batch
                base(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                     position_ids=batch.position_ids.to(device), use_cache=False)
                acc.flush(batch)
                done += batch.size
                if progress:
                    progress(done, total, "samples")
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return acc.table()


def iter_blocks(num_layers: int, n: int, keep_last: bool) -> Iterator[int]:
    """Starts l of the n-layer blocks l..l+n-1; ``keep_last`` keeps only blocks ending before L-1."""
    last = num_layers - n - (1 if keep_last else 0)
    return iter(range(0, last + 1))
