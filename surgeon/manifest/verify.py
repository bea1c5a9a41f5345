"""Verification records: the one manifest measurement that needs the weights.

Verification record (SPEC.md, "Verification"): the exit is loaded with weights upcast to float32
and run once on :func:`prompt_ids` (no cache); the logits ``[T, vocab]`` are rounded to
``decimals`` places (``round(x * 10**decimals)`` as little-endian int64) and hashed with sha256.
The argmax per position and the last position's top-5 (rounded) let a runtime with different
numerics still check that it loaded the right exit. Quality records (loss, KL, top-1 per exit)
come from the metrics engine, :func:`surgeon.eval.measure_exits`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

DECIMALS = 3  # logits are hashed after rounding to 1e-3
PROMPT_LEN = 16
TOP_K = 5
# Runtimes whose kernels differ compare argmax and top-5 values within this tolerance instead.
ATOL = 0.05


def prompt_ids(vocab_size: int, n: int = PROMPT_LEN) -> list[int]:
    """A fixed, tokenizer-independent prompt: ids spread over the vocabulary."""
    return [(1 + 97 * i) % vocab_size for i in range(n)]


def logits_record(logits, token_ids: list[int], decimals: int = DECIMALS) -> dict:
    """The verification record of float32 ``logits`` ``[T, V]`` for ``token_ids``."""
    import torch

    lg = logits.detach().float().cpu()
    q = torch.round(lg.double() * 10**decimals).to(torch.int64).contiguous()
    digest = hashlib.sha256(q.numpy().astype("<i8").tobytes()).hexdigest()
    top = torch.topk(lg[-1], min(TOP_K, lg.shape[-1]))
    return {
        "token_ids": list(token_ids), "logits_shape": list(lg.shape), "logits_dtype": "float32",
        "decimals": decimals, "logits_sha256": digest, "argmax": lg.argmax(-1).tolist(),
        "top": [[int(i), round(float(v), decimals)] for v, i in zip(top.values, top.indices)], "atol": ATOL,
    }


def exit_logits(model, token_ids: list[int]):
    import torch

    with torch.no_grad():
        return model(torch.tensor([token_ids]), use_cache=False).logits[0].float()


def verification_record(path: str | Path, exit: str | int | dict | None, vocab_size: int, load: Callable) -> dict:
    """Load ``exit`` of the checkpoint at ``path`` in float32 with ``load`` (``surgeon.load``, or a callable
    with its signature) and record its logits on the fixed prompt."""
    import torch

    ids = prompt_ids(vocab_size)
    model = load(path, exit, dtype=torch.float32)
    return logits_record(exit_logits(model, ids), ids)


def compare_record(record: dict, logits) -> tuple[bool, str]:
    """Check recomputed logits against a record: (ok, "exact" | "close" | why it failed)."""
    new = logits_record(logits, record["token_ids"], record["decimals"])
    if new["logits_shape"] != record["logits_shape"]:
        return False, f"logits shape {new['logits_shape']} != recorded {record['logits_shape']}"
    if new["logits_sha256"] == record["logits_sha256"]:
        return True, "exact"
    if new["argmax"] != record["argmax"]:
        bad = next(i for i, (a, b) in enumerate(zip(new["argmax"], record["argmax"])) if a != b)
        return False, f"argmax differs at position {bad}"
    atol = float(record.get("atol", ATOL))
    lg = logits.detach().float()[-1]
    for tok, val in record.get("top") or []:
        if abs(float(lg[tok]) - val) > atol:
            return False, f"logit of token {tok} at the last position is {float(lg[tok]):.4f}, recorded {val}"
    return True, "close"
