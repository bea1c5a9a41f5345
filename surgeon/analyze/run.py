"""``surgeon analyze``: options, the library entry point, and the shared compute step used by prune."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..data.calibration import check_calibration_args
from ..errors import CheckpointError
from ..options import opt
from .report import JSON_NAME, PNG_NAME, AnalysisResult, build_result, write_heatmap, write_json
from .similarity import Progress

log = logging.getLogger(__name__)

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class AnalyzeOptions:
    model: Path = opt(help="Checkpoint folder.", cli=False)
    data: str = opt("c4", "Calibration data: c4, hf:NAME[:CONFIG][@SPLIT], builtin:sotu, or a .txt/.jsonl/.json/.parquet file.")
    samples: int = opt(256, "Number of calibration sequences (the first usable documents in file order).")
    seq_len: int = opt(1024, "Tokens per sequence; shorter documents are skipped unless --pack.")
    pack: bool = opt(False, "Concatenate documents (EOS between) and cut the stream into --seq-len chunks.")
    shuffle: bool = opt(False, "Shuffle the documents (seeded) before taking the first --samples.")
    seed: int = opt(0, "Seed for --shuffle.")
    role: str = opt("all", "Records to use: all (hub: validation split), train (local files: all but every 20th "
                    "record, which is held out for evaluation), eval.", choices=("all", "train", "eval"))
    batch_size: int = opt(8, "Sequences per forward pass.")
    dtype: str = opt("fp32", "Compute dtype of the model.", choices=tuple(DTYPES))
    offload: str = opt("none", "`layer`: keep one decoder layer in memory at a time (models larger than RAM).",
                       choices=("none", "layer"))
    out: Path = opt(Path("analysis"), "Output folder for analysis.json and angular_distance.png.", flags=("-o", "--out"))
    force: bool = opt(False, "Replace a non-empty output folder that holds other files.")

    def __post_init__(self):
        check_calibration_args(self.samples, self.seq_len, self.batch_size)


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} has no usable tokenizer ({e.__class__.__name__})",
                              "the analysis tokenizes the calibration text: put the tokenizer files beside the weights") from None


def compute_analysis(model: Path, data: str = "c4", *, samples: int = 256, seq_len: int = 1024, pack: bool = False,
                     shuffle: bool = False, seed: int = 0, batch_size: int = 8, dtype: str = "fp32",
                     offload: str = "none", role: str = "all", progress: Progress | None = None) -> AnalysisResult:
    """Angular distances, l*(n) and Block Influence of the checkpoint at ``model`` (nothing written).

    Raises :class:`~surgeon.errors.CheckpointError` for an unreadable checkpoint or tokenizer and
    :class:`~surgeon.errors.DataError` / :class:`~surgeon.errors.UsageError` for unusable data.
    """
    import torch

    from ..arch.registry import resolve_family
    from ..data import calibration_samples
    from ..io.checkpoint import Checkpoint
    from .offload import offloaded_similarity
    from .similarity import layer_similarity, make_batches

    t0 = time.time()
    ckpt = Checkpoint.open(model)
    if ckpt.text_config is not ckpt.config:
        raise CheckpointError(f"{model} is a multimodal wrapper", "save the language model on its own and analyze that")
    family = resolve_family(ckpt.config, list(ckpt.tensors))
    tok = load_tokenizer(ckpt.path)
    calib = calibration_samples(data, tok, samples=samples, seq_len=seq_len, pack=pack, shuffle=shuffle,
                                seed=seed, role=role)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    batches = make_batches(calib.input_ids, batch_size, padding="right", pad_id=pad)
    torch_dtype = getattr(torch, DTYPES[dtype])
    if offload == "layer":
        table = offloaded_similarity(ckpt, family.layers, batches, torch_dtype, progress)
    else:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # surgeon draws its own
        m = AutoModelForCausalLM.from_pretrained(ckpt.path, dtype=torch_dtype)
        table = layer_similarity(m, family.layers, batches, progress)
        del m
    if table.num_layers != ckpt.num_layers:
        raise CheckpointError(f"the model ran {table.num_layers} layers but config.json says {ckpt.num_layers}",
                              "the checkpoint and its config disagree")
    return build_result(
        table, model=str(model), seq_len=seq_len, data=calib.spec, data_source=calib.describe(),
        dtype=dtype, offload=offload, seconds=time.time() - t0,
    )


def analyze(opts: AnalyzeOptions, progress: Progress | None = None) -> AnalysisResult:
    """Run the analysis and write ``analysis.json`` + ``angular_distance.png`` to ``opts.out``.

    A folder holding only a previous analysis is replaced without ``--force``.
    """
    from ..io.atomic import atomic_output, check_output

    out = Path(opts.out)
    previous = out.is_dir() and {p.name for p in out.iterdir()} <= {JSON_NAME, PNG_NAME}
    check_output(out, Path(opts.model), force=opts.force or previous)  # fail before the forward pass
    res = compute_analysis(opts.model, opts.data, samples=opts.samples, seq_len=opts.seq_len, pack=opts.pack,
                           shuffle=opts.shuffle, seed=opts.seed, batch_size=opts.batch_size, dtype=opts.dtype,
                           offload=opts.offload, role=opts.role, progress=progress)
    with atomic_output(out, Path(opts.model), force=opts.force or previous) as tmp:
        write_json(res, tmp / JSON_NAME)
        write_heatmap(res, tmp / PNG_NAME)
    res.files = [str(out / JSON_NAME), str(out / PNG_NAME)]
    return res
