"""``surgeon sort-width``: permute every layer's FFN channels and KV groups by importance.

The permutation is applied consistently to every tensor that touches a channel or head (gate/up
rows and down columns; q rows of the group's query heads, k/v rows of the KV head, o columns;
fused Phi-3 ``gate_up_proj`` / ``qkv_proj`` segments), so the sorted model computes the same
function: its logits equal the original's up to float summation order. Afterwards
``surgeon extract --ffn K --heads H`` keeps the most important channels and heads ("first k").

Scores are activation-based (see :mod:`surgeon.width.importance`), measured on the training slice
of ``--data`` (``role="train"``: the held-out passages of a local file stay unseen).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from ..data.calibration import check_calibration_args
from ..errors import UsageError
from ..io.checkpoint import Checkpoint
from ..options import opt
from ..surgery.execute import DEFAULT_MAX_SHARD_BYTES, ExecuteResult, Progress, execute
from ..surgery.plan import Plan
from ..units import parse_size
from .importance import WidthImportance, width_importance
from .plan import plan_width

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SortWidthOptions:
    model: Path = opt(help="Checkpoint folder.", cli=False)
    output: Path | None = opt(None, "Output checkpoint folder.", flags=("-o", "--output"))
    data: str = opt("c4", "Calibration data: c4, hf:NAME[:CONFIG][@SPLIT], builtin:sotu, or a .txt/.jsonl/.parquet file.")
    samples: int = opt(128, "Calibration sequences (the first N usable documents).")
    seq_len: int = opt(512, "Tokens per calibration sequence.")
    pack: bool = opt(False, "Concatenate short documents instead of skipping them.")
    batch_size: int = opt(4, "Sequences per forward pass.")
    dtype: str | None = opt(None, "Convert floating weights while streaming.", choices=("bf16", "fp16", "fp32"))
    max_shard_size: str = opt("5GB", "Largest output shard.")
    force: bool = opt(False, "Replace a non-empty output folder.")

    def __post_init__(self):
        if self.output is None:
            raise UsageError("-o/--output is required", "give an output folder for the sorted checkpoint")
        check_calibration_args(self.samples, self.seq_len, self.batch_size)
        parse_size(self.max_shard_size, "--max-shard-size")


@dataclass
class SortWidthResult:
    plan: Plan
    importance: WidthImportance
    order: dict[int, dict[str, list[int]]]
    calibration: dict
    result: ExecuteResult

    def moved(self) -> dict[str, float]:
        """Fraction of FFN channels / KV heads whose position changed (how much sorting did)."""
        f = [sum(i != j for i, j in enumerate(o["ffn"])) / max(len(o["ffn"]), 1) for o in self.order.values()]
        k = [sum(i != j for i, j in enumerate(o["kv"])) / max(len(o["kv"]), 1) for o in self.order.values()]
        return {"ffn": sum(f) / max(len(f), 1), "kv": sum(k) / max(len(k), 1)}


def sort_width(opts: SortWidthOptions, progress: Progress | None = None) -> SortWidthResult:
    """Score channels/heads on calibration data, then stream out the permuted checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..arch.registry import resolve_family
    from ..data import calibration_samples

    ckpt = Checkpoint.open(opts.model)
    cfg = ckpt.text_config
    fam = resolve_family(cfg, ckpt.tensors)
    plan_width(ckpt)  # validate the architecture before the expensive part
    tok = AutoTokenizer.from_pretrained(str(opts.model))
    calib = calibration_samples(opts.data, tok, samples=opts.samples, seq_len=opts.seq_len, pack=opts.pack,
                                role="train")
    model = AutoModelForCausalLM.from_pretrained(str(opts.model), dtype=torch.float32)
    imp = width_importance(model, fam, calib.input_ids, batch_size=opts.batch_size, progress=progress)
    del model
    order = imp.order()
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}
    plan = plan_width(ckpt, order=order, operation="sort-width", dtype=opts.dtype, options=options)
    extra = {
        "calibration": calib.describe(),
        "score": "ffn: mean |input of down_proj|; kv group: mean sum of its query heads' ||o_proj input||_2",
        "permutation": {str(i): o for i, o in order.items()},
    }
    res = execute(plan, opts.output, force=opts.force,
                  max_shard_bytes=parse_size(opts.max_shard_size) if opts.max_shard_size else DEFAULT_MAX_SHARD_BYTES,
                  extra_provenance=extra, progress=progress)
    return SortWidthResult(plan, imp, order, calib.describe(), res)
