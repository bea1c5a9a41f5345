"""The analysis report: optimal blocks l*(n) (eq. 6), ``analysis.json`` and the heatmap (Fig. 4)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .similarity import SimilarityTable, iter_blocks

log = logging.getLogger(__name__)

JSON_NAME = "analysis.json"
PNG_NAME = "angular_distance.png"


@dataclass
class BlockChoice:
    """The block ``start .. start+n-1`` and its angular distance d(start, start+n)."""

    start: int
    distance: float


@dataclass
class AnalysisResult:
    """Everything ``surgeon analyze`` measured (``to_dict()`` is the ``analysis.json`` content)."""

    model: str
    num_layers: int
    samples: int
    seq_len: int
    tokens: int
    data: str
    data_source: dict
    dtype: str
    offload: str
    angular_distance: dict[int, list[float]]  # n -> [d(0,n), ..., d(L-n,n)]
    best: dict[int, BlockChoice]  # row minimum over all blocks (eq. 6)
    best_keep_last: dict[int, BlockChoice]  # row minimum over blocks that end before layer L-1
    block_influence: list[float]
    seconds: float
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "model": self.model, "num_layers": self.num_layers, "samples": self.samples, "seq_len": self.seq_len,
            "tokens": self.tokens, "data": self.data, "data_source": self.data_source, "dtype": self.dtype,
            "offload": self.offload, "metric": "angular distance arccos(cos(x_l, x_{l+n}))/pi, last token, "
            "x_L before the final norm; block influence 1 - cos(x_l, x_{l+1}) over all tokens",
            "angular_distance": {str(n): row for n, row in self.angular_distance.items()},
            "best": {str(n): asdict(b) for n, b in self.best.items()},
            "best_keep_last": {str(n): asdict(b) for n, b in self.best_keep_last.items()},
            "block_influence": self.block_influence, "seconds": round(self.seconds, 3),
        }

    def choice(self, n: int, allow_last: bool = False) -> BlockChoice:
        return (self.best if allow_last else self.best_keep_last)[n]


def argmin_blocks(table: SimilarityTable, keep_last: bool) -> dict[int, BlockChoice]:
    """l*(n) for every n in 1..L-1: the first start with the smallest d(l, l+n) (ties: shallowest)."""
    out = {}
    for n in range(1, table.num_layers):
        starts = list(iter_blocks(table.num_layers, n, keep_last))
        if not starts:
            continue
        l = min(starts, key=lambda s: (table.d(s, n), s))
        out[n] = BlockChoice(l, table.d(l, n))
    return out


def build_result(table: SimilarityTable, **meta) -> AnalysisResult:
    L = table.num_layers
    return AnalysisResult(
        num_layers=L, samples=table.samples, tokens=table.tokens,
        angular_distance={n: table.row(n) for n in range(1, L)},
        best=argmin_blocks(table, keep_last=False), best_keep_last=argmin_blocks(table, keep_last=True),
        block_influence=table.block_influence, **meta,
    )


def write_json(result: AnalysisResult, path: Path) -> None:
    path.write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_heatmap(result: AnalysisResult, path: Path) -> None:
    """Rows n (block size), columns l (first dropped layer), each row min-max normalized; the row
    minimum l*(n) is marked (x), and the keep-the-final-layer choice (o) where it differs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    L = result.num_layers
    grid = np.full((L - 1, L), np.nan)
    for n, row in result.angular_distance.items():
        r = np.asarray(row, dtype=float)[:L]  # d(L-n+1.., n) would start past the last layer
        span = r.max() - r.min()
        grid[n - 1, : len(r)] = (r - r.min()) / span if span > 0 else 0.0
    fig, ax = plt.subplots(figsize=(min(4 + 0.22 * L, 16), min(3 + 0.2 * L, 14)), dpi=110)
    im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", interpolation="nearest",
                   extent=(-0.5, L - 0.5, 0.5, L - 0.5))
    for n, b in result.best.items():
        ax.plot(b.start, n, marker="x", color="red", markersize=6, mew=1.5)
    for n, b in result.best_keep_last.items():
        if result.best.get(n) and result.best[n].start != b.start:
            ax.plot(b.start, n, marker="o", mfc="none", color="white", markersize=6, mew=1.2)
    ax.set_xlabel("first layer of the block, l   (x: l*(n) over all blocks; o: l*(n) keeping the final layer)",
                  fontsize=8)
    ax.set_ylabel("block size, n")
    ax.set_title(f"angular distance d(l, l+n), row-normalized\n{Path(result.model).name}, {result.samples} samples "
                 f"x {result.seq_len} tokens ({result.data})", fontsize=9)
    fig.colorbar(im, ax=ax, label="row-normalized distance")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
