"""Which contiguous block of layers to drop: explicit, the deepest-but-last, or l*(n) from an analysis.

The strategies of the pruning paper (Gromov et al.): ``similarity`` (sec. 4.3) drops the block at
l*(n), the start that minimizes the angular distance between the residual stream entering layer l
and entering layer l+n, among blocks that keep the final layer (all blocks with ``allow_last``);
``deepest`` (sec. 4.4) drops layers L-1-n .. L-2, keeping the final layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError


@dataclass
class Block:
    start: int
    n: int
    strategy: str
    distance: float | None = None
    analysis: dict | None = None  # where the distance came from (data, samples, seq_len, file)

    @property
    def layers(self) -> list[int]:
        return list(range(self.start, self.start + self.n))


def deepest_block(num_layers: int, n: int) -> Block:
    """Layers L-1-n .. L-2: the deepest block that keeps the final layer."""
    if n < 1 or n >= num_layers:
        raise UsageError(f"--n {n} is outside 1..{num_layers - 1}", f"the model has {num_layers} layers; drop fewer")
    if n > num_layers - 1:
        raise UsageError(f"--n {n} leaves nothing but the final layer", f"choose --n below {num_layers - 1}")
    return Block(num_layers - 1 - n, n, "deepest")


def block_from_analysis(analysis: dict, n: int, allow_last: bool, num_layers: int) -> Block:
    """Pick l*(n) from an analysis report (``best_keep_last`` unless ``allow_last``)."""
    if analysis.get("num_layers") != num_layers:
        raise UsageError(
            f"the analysis is for {analysis.get('num_layers')} layers but the model has {num_layers}",
            "rerun surgeon analyze on this model",
        )
    key = "best" if allow_last else "best_keep_last"
    entry = (analysis.get(key) or {}).get(str(n))
    if not isinstance(entry, dict) or "start" not in entry or "distance" not in entry:
        raise UsageError(f"the analysis has no {key} entry for n={n}", "rerun surgeon analyze on this model")
    source = {k: analysis.get(k) for k in ("data", "samples", "seq_len", "dtype") if k in analysis}
    return Block(int(entry["start"]), n, "similarity", float(entry["distance"]), source)
