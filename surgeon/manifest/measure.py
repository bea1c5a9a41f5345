"""Measurements that need weights: verification records and quality per exit.

Verification record (SPEC.md, "Verification"): the exit is loaded with weights upcast to float32
and run once on :func:`prompt_ids` (no cache); the logits ``[T, vocab]`` are rounded to
``decimals`` places (``round(x * 10**decimals)`` as little-endian int64) and hashed with sha256.
The argmax per position and the last position's top-5 (rounded) let a runtime with different
numerics still check that it loaded the right exit.

Quality (per exit, on held-out data): mean next-token loss (nats) and perplexity, KL(full || exit)
in nats per token, and top-1 agreement with the full model, all over the same predicted tokens.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

DECIMALS = 3  # logits are hashed after rounding to 1e-3
PROMPT_LEN = 16
TOP_K = 5
# Runtimes whose kernels differ compare argmax and top-5 values within this tolerance instead.
ATOL = 0.05
CHUNK = 64  # positions per float32 log-softmax slice when measuring quality


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


def verification_record(path: str | Path, exit: str | int | dict | None, vocab_size: int) -> dict:
    """Load ``exit`` of the checkpoint at ``path`` in float32 and record its logits on the fixed prompt."""
    import torch

    from ..loading import load

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


def measure_quality(
    path: str | Path,
    exits: list[dict],
    data,
    *,
    data_spec: str,
    split: str,
    batch_size: int = 4,
    dtype=None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, list[dict]]:
    """Quality entries per exit name: loss, perplexity, KL(full||exit), top-1 agreement.

    ``data``: a :class:`~surgeon.data.CalibrationSet` (equal-length sequences). The full model and
    one exit at a time are held in memory; both run on each batch.
    """
    import torch
    import torch.nn.functional as F

    from ..loading import load

    seqs = [list(x) for x in data.input_ids]
    if not seqs:
        from ..errors import DataError

        raise DataError("no evaluation sequences", "give more or longer --eval-data")
    seq_len = max(len(s) for s in seqs)
    full = load(path, exits[-1], dtype=dtype)
    full_name = exits[-1]["name"]
    wdtype = str(next(full.parameters()).dtype).replace("torch.", "")
    out: dict[str, list[dict]] = {}
    for n, e in enumerate(exits):
        is_full = e["name"] == full_name
        model = full if is_full else load(path, e, dtype=dtype)
        ce = kl = agree = 0.0
        count = 0
        with torch.inference_mode():
            for b in range(0, len(seqs), batch_size):
                batch = seqs[b:b + batch_size]
                width = min(len(s) for s in batch)
                ids = torch.tensor([s[:width] for s in batch])
                out_x = model(ids, use_cache=False).logits
                out_f = out_x if is_full else full(ids, use_cache=False).logits
                for s in range(0, width - 1, CHUNK):  # float32 temporaries for one chunk of positions
                    e_ = min(s + CHUNK, width - 1)
                    lx, lf, tgt = out_x[:, s:e_].float(), out_f[:, s:e_].float(), ids[:, s + 1:e_ + 1]
                    lpx, lpf = F.log_softmax(lx, -1), F.log_softmax(lf, -1)
                    ce += float(F.nll_loss(lpx.reshape(-1, lpx.shape[-1]), tgt.reshape(-1), reduction="sum"))
                    kl += float((lpf.exp() * (lpf - lpx)).sum())
                    agree += float((lx.argmax(-1) == lf.argmax(-1)).sum())
                    count += tgt.numel()
                del out_x, out_f
        if not is_full:
            del model
        loss = ce / count
        common = {"data": data_spec, "split": split, "tokens": count, "seq_len": seq_len, "dtype": wdtype,
                  "samples": len(seqs)}
        out[e["name"]] = [
            dict(common, metric="loss", value=round(loss, 6)),
            dict(common, metric="perplexity", value=round(math.exp(min(loss, 700.0)), 6)),
            dict(common, metric="kl_full_exit", value=round(max(kl / count, 0.0), 6), reference=full_name),
            dict(common, metric="top1_agreement", value=round(agree / count, 6), reference=full_name),
        ]
        if progress:
            progress(n + 1, len(exits), e["name"])
    return out
