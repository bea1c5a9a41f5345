"""``surgeon sort-width``: permute every layer's FFN channels and KV groups by importance.

The permutation is applied consistently to every tensor that touches a channel or head (gate/up
rows and down columns; q rows of the group's query heads, k/v rows of the KV head, o columns;
fused Phi-3 ``gate_up_proj`` / ``qkv_proj`` segments), so the sorted model computes the same
function: its logits equal the original's up to float summation order. Afterwards
``surgeon extract --ffn K --heads H`` keeps the most important channels and heads ("first k").

Scores are activation-based (see :mod:`surgeon.analyze.importance`), measured on the training slice
of ``--data`` (``role="train"``: the held-out passages of a local file stay unseen).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..analyze.importance import WidthImportance, width_importance
from ..io.checkpoint import Checkpoint
from ..options import CalibrationOptions, OutputOptions, PlacementOptions, as_record, opt, with_default
from ..progress import Progress
from ..surgery.execute import ExecuteResult
from ..surgery.plan import Plan
from ..width.plan import plan_width
from .output import write_output

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SortWidthOptions(OutputOptions, CalibrationOptions, PlacementOptions):
    model: Path = opt(help="Checkpoint folder.", cli=False)
    samples: int = with_default(CalibrationOptions, "samples", 128)
    seq_len: int = with_default(CalibrationOptions, "seq_len", 512)
    batch_size: int = with_default(CalibrationOptions, "batch_size", 4)

    def __post_init__(self):
        self.check_output("sorted checkpoint")
        self.check_calibration()
        self.check_placement()


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


def run(opts: SortWidthOptions, progress: Progress | None = None) -> SortWidthResult:
    """Score channels/heads on calibration data, then stream out the permuted checkpoint."""
    import torch

    from ..arch.registry import resolve_family
    from ..data import calibration_samples
    from ..devices import load_causal_lm, resolve_device
    from ..eval.streamed import StreamedModel
    from ..tokenizer import load_tokenizer

    ckpt = Checkpoint.open(opts.model)
    cfg = ckpt.text_config
    fam = resolve_family(cfg, ckpt.tensors)
    plan_width(ckpt)  # validate the architecture before the expensive part
    tok = load_tokenizer(opts.model)
    calib = calibration_samples(opts.data, tok, samples=opts.samples, seq_len=opts.seq_len, pack=opts.pack,
                                role="train")
    device = resolve_device(opts.device)
    if opts.offload == "layer":  # one decoder layer in memory at a time
        model = StreamedModel(opts.model, device=device, dtype=torch.float32, logits=False)  # activations only
    else:  # fp32: scores are ranked, ties should not come from rounding
        model = load_causal_lm(opts.model, device=device, dtype="fp32", device_map=opts.device_map,
                               max_memory=opts.max_memory)
    imp = width_importance(model, fam, calib.input_ids, batch_size=opts.batch_size, progress=progress)
    del model
    order = imp.order()
    options = as_record(opts)
    plan = plan_width(ckpt, order=order, operation="sort-width", dtype=opts.dtype, options=options)
    extra = {
        "calibration": calib.describe(),
        "score": "ffn: mean |input of down_proj|; kv group: mean sum of its query heads' ||o_proj input||_2",
        "permutation": {str(i): o for i, o in order.items()},
    }
    res = write_output(plan, opts.output, force=opts.force, max_shard_bytes=opts.max_shard_bytes,
                       extra_provenance=extra, progress=progress)
    return SortWidthResult(plan, imp, order, calib.describe(), res)
