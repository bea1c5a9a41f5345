"""The similarity measurement on a checkpoint (``surgeon analyze`` and ``prune --strategy similarity``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..devices import compute_dtype, load_causal_lm, resolve_device
from ..errors import CheckpointError
from ..progress import Progress
from ..tokenizer import load_tokenizer
from ..units import short_name
from .report import AnalysisResult, build_result

log = logging.getLogger(__name__)


def compute_analysis(model: Path, data: str = "c4", *, samples: int = 256, seq_len: int = 1024, pack: bool = False,
                     shuffle: bool = False, seed: int = 0, batch_size: int = 8, dtype: str | None = None,
                     offload: str = "none", role: str = "all", progress: Progress | None = None,
                     device: str = "auto", device_map: str | None = None,
                     max_memory: str | None = None, loaded=None) -> AnalysisResult:
    """Angular distances, l*(n) and Block Influence of the checkpoint at ``model`` (nothing written).

    ``device`` / ``device_map`` / ``max_memory`` / ``offload``: where the model runs (see
    :mod:`surgeon.devices`; ``offload="layer"`` streams one decoder layer at a time onto ``device``).
    ``dtype``: compute dtype (default: bf16 on GPUs that support it, fp32 elsewhere). ``loaded``: the
    model already loaded from ``model`` (``surgeon sweep`` measures the same model afterwards), used
    instead of loading it again; the placement arguments then only name the dtype recorded.

    Raises :class:`~surgeon.errors.CheckpointError` for an unreadable checkpoint or tokenizer and
    :class:`~surgeon.errors.DataError` / :class:`~surgeon.errors.UsageError` for unusable data.
    """

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
    dev = resolve_device(device)
    torch_dtype = compute_dtype(dev, dtype)
    if loaded is not None:
        table = layer_similarity(loaded, family.layers, batches, progress)
    elif offload == "layer":
        table = offloaded_similarity(ckpt.path, batches, torch_dtype, progress, device=dev)
    else:
        m = load_causal_lm(ckpt.path, device=dev, dtype=torch_dtype, device_map=device_map, max_memory=max_memory)
        table = layer_similarity(m, family.layers, batches, progress)
        del m
    if table.num_layers != ckpt.num_layers:
        raise CheckpointError(f"the model ran {table.num_layers} layers but config.json says {ckpt.num_layers}",
                              "the checkpoint and its config disagree")
    return build_result(
        table, model=ckpt.source if ckpt.hub is not None else str(model), seq_len=seq_len, data=calib.spec, data_source=calib.describe(),
        dtype=short_name(torch_dtype), offload=offload, seconds=time.time() - t0,
    )
