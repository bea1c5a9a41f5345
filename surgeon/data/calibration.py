"""Calibration samples: token sequences for analysis and held-out evaluation.

Each document is tokenized on its own with the tokenizer's defaults (``tokenizer(text)``, so
BOS is added when the tokenizer adds it) and truncated to ``seq_len`` tokens. Documents shorter
than ``seq_len`` are skipped, unless ``pack=True`` concatenates documents (EOS between them) and
cuts the stream into ``seq_len`` chunks. The first ``samples`` usable documents in file order are
taken (a seeded shuffle only with ``shuffle=True``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..errors import DataError, UsageError
from .records import iter_records
from .spec import DataSpec, parse_data_spec
from .templates import record_text

log = logging.getLogger(__name__)


@dataclass
class CalibrationSet:
    """Token sequences (``input_ids``: a list of lists of ints) and how they were made."""

    input_ids: list[list[int]]
    spec: str
    role: str
    seq_len: int
    pack: bool = False
    shuffle: bool = False
    seed: int = 0
    documents_read: int = 0
    documents_skipped: int = 0
    source: str = ""  # DataSpec.describe()
    requested: int = 0
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_tokens(self) -> int:
        return sum(len(x) for x in self.input_ids)

    def describe(self) -> dict:
        """Provenance: the data, the role (split / held-out slice), and how samples were cut."""
        return {
            "data": self.spec, "source": self.source, "role": self.role, "samples": len(self.input_ids),
            "samples_requested": self.requested, "seq_len": self.seq_len, "pack": self.pack,
            "shuffle": self.shuffle, "seed": self.seed, "num_tokens": self.num_tokens,
            "documents_read": self.documents_read, "documents_skipped": self.documents_skipped,
        }


def _eos_id(tokenizer) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise DataError("the tokenizer has no EOS token, which --pack puts between documents",
                        "add eos_token to the tokenizer config, or calibrate without --pack")
    return int(eos)


def check_calibration_args(samples: int, seq_len: int, batch_size: int = 1) -> None:
    """The usage checks of ``--samples``/``--seq-len``/``--batch-size``, shared by every command that
    calibrates, so bad values fail when the options are built, before any model is loaded."""
    if samples < 1:
        raise UsageError(f"--samples {samples} is below 1", "give the number of calibration sequences, e.g. --samples 256")
    if seq_len < 2:
        raise UsageError(f"--seq-len {seq_len} is below 2", "give tokens per sequence, e.g. --seq-len 1024")
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size} is below 1", "give --batch-size 1 or more")


def calibration_samples(
    spec: str | DataSpec,
    tokenizer,
    *,
    samples: int = 256,
    seq_len: int = 1024,
    pack: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    role: str = "all",
) -> CalibrationSet:
    """The first ``samples`` usable sequences of ``seq_len`` tokens from ``spec`` (see module doc).

    Raises :class:`UsageError` for ``samples``/``seq_len`` below 1 and :class:`DataError` when
    the data cannot be read or holds no usable document. Fewer usable documents than asked is
    not an error: the set is smaller (logged as a warning; ``requested`` records the ask).
    """
    check_calibration_args(samples, seq_len)
    ds = parse_data_spec(spec)
    out: list[list[int]] = []
    read = skipped = longest = 0
    buf: list[int] = []
    eos = _eos_id(tokenizer) if pack else None
    for rec in iter_records(ds, role, shuffle=shuffle, seed=seed):
        read += 1
        ids = list(tokenizer(record_text(rec))["input_ids"])
        longest = max(longest, len(ids))
        if pack:
            buf.extend(ids)
            buf.append(eos)
            while len(buf) >= seq_len and len(out) < samples:
                out.append(buf[:seq_len])
                buf = buf[seq_len:]
        elif len(ids) >= seq_len:
            out.append(ids[:seq_len])
        else:
            skipped += 1
        if len(out) >= samples:
            break
    if not out:
        if read == 0:
            raise DataError(f"{ds.spec} has no {role} records", "give a file with more documents")
        if pack:
            raise DataError(f"{ds.spec} ({role}) holds fewer than --seq-len {seq_len} tokens in all ({read} documents)",
                            "give more text or a smaller --seq-len")
        raise DataError(
            f"no usable documents in {ds.spec} ({role}): all {read} are shorter than --seq-len {seq_len} tokens "
            f"(longest {longest})",
            "add --pack to concatenate documents, or give a smaller --seq-len",
        )
    if len(out) < samples:
        log.warning("%s gave %d usable sequences of %d tokens, fewer than the %d asked for",
                    ds.spec, len(out), seq_len, samples)
    return CalibrationSet(out, ds.spec, role, seq_len, pack, shuffle, seed, read, skipped, ds.describe(), samples)
