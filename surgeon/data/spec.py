"""Data specs (``--data``): what a user types, parsed into a :class:`DataSpec`.

Accepted forms:

- ``c4``: ``allenai/c4``, config ``en``, streamed through ``datasets`` (train split for training,
  validation split for analysis and evaluation).
- ``alpaca``: ``tatsu-lab/alpaca`` (train split only; the held-out slice is every 20th record).
- ``hf:NAME[:CONFIG][@SPLIT]``: any hub dataset with a ``text`` column or the Alpaca columns.
- ``builtin:NAME``: text shipped inside surgeon (``builtin:sotu``: State of the Union passages).
- a local file: ``.txt`` (documents separated by blank lines), ``.jsonl`` (one object per line:
  ``text``, or ``instruction``/``input``/``output``), ``.json`` (a list of such objects),
  ``.parquet`` (a ``text`` column or the instruction columns).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..errors import DataError

FILE_FORMATS = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}

# Every HELDOUT_EVERY-th record (indices 0, 20, 40, ...) is held out: never used for training.
HELDOUT_EVERY = 20

BUILTIN_DIR = Path(__file__).parent / "text"
BUILTIN = {
    "sotu": ("sotu.txt", "State of the Union addresses 2009-2021 in ~2,000-character passages (public domain)"),
}

# preset -> (hub name, config, train split, eval split or None when the hub has only a train split)
PRESETS = {
    "c4": ("allenai/c4", "en", "train", "validation"),
    "alpaca": ("tatsu-lab/alpaca", None, "train", None),
}

LOCAL_HINT = "use a local file instead, e.g. --data builtin:sotu or --data my_corpus.txt (.txt/.jsonl/.json/.parquet)"


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` value. ``kind`` is ``"file"`` or ``"hub"``."""

    spec: str
    kind: str
    path: Path | None = None
    format: str | None = None  # txt | jsonl | json | parquet (files)
    name: str | None = None  # hub dataset name
    config: str | None = None
    split: str | None = None  # explicit @SPLIT
    train_split: str = "train"
    eval_split: str | None = "validation"  # None: held-out slice of the train split

    @property
    def is_local(self) -> bool:
        return self.kind == "file"

    def split_for(self, role: str) -> str:
        """Hub split read for ``role`` (``train`` / ``eval`` / ``all``)."""
        if self.split:
            return self.split
        if role == "train" or self.eval_split is None:
            return self.train_split
        return self.eval_split

    def heldout_by_slice(self, role: str) -> bool:
        """Whether ``role`` is served by the every-20th-record rule (local files, train-only hubs)."""
        if self.is_local:
            return True
        return self.split is None and self.eval_split is None

    @cached_property
    def sha256(self) -> str | None:
        if not self.is_local or self.path is None or not self.path.is_file():
            return None
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
        return h.hexdigest()

    def describe(self) -> str:
        """One-line provenance: what was read, from where (with the file's sha256)."""
        if self.is_local:
            return f"{self.spec} ({self.format} file {self.path}, sha256 {self.sha256})"
        cfg = f" config {self.config}" if self.config else ""
        return f"{self.spec} (hub dataset {self.name}{cfg}, streaming)"


def parse_data_spec(spec: str | DataSpec) -> DataSpec:
    """Parse a ``--data`` value; raises :class:`DataError` for unknown or missing sources."""
    if isinstance(spec, DataSpec):
        return spec
    s = str(spec).strip()
    if not s:
        raise DataError("--data is empty", f"give c4, alpaca, hf:NAME[:CONFIG][@SPLIT] or a local file; {LOCAL_HINT}")
    if s.lower() in PRESETS:
        name, config, train, ev = PRESETS[s.lower()]
        return DataSpec(s.lower(), "hub", name=name, config=config, train_split=train, eval_split=ev)
    if s.startswith("hf:"):
        rest = s[3:]
        split = None
        if "@" in rest:
            rest, split = rest.rsplit("@", 1)
            if not split:
                raise DataError(f"--data {s} has an empty @SPLIT", "write hf:NAME@validation, or drop the @")
        name, _, config = rest.partition(":")
        if not name:
            raise DataError(f"--data {s} names no dataset", "write hf:NAME[:CONFIG][@SPLIT], e.g. hf:allenai/c4:en@validation")
        return DataSpec(s, "hub", name=name, config=config or None, split=split)
    if s.startswith("builtin:"):
        key = s.split(":", 1)[1]
        if key not in BUILTIN:
            raise DataError(f"unknown builtin text {key!r}", f"available: {', '.join('builtin:' + k for k in BUILTIN)}")
        return DataSpec(s, "file", path=BUILTIN_DIR / BUILTIN[key][0], format="txt")
    path = Path(s).expanduser()
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if path.is_dir():
        raise DataError(f"--data {s} is a folder", "give one file (.txt, .jsonl, .json or .parquet)")
    if not path.exists():
        if fmt is None and "/" not in s:
            raise DataError(f"unknown data spec {s!r}",
                            "use c4, alpaca, hf:NAME[:CONFIG][@SPLIT], builtin:sotu, or a local file path")
        raise DataError(f"{s} does not exist", "check the path of the --data file")
    if fmt is None:
        raise DataError(f"cannot tell the format of {s} from its extension",
                        "name it .txt (blank-line separated documents), .jsonl, .json or .parquet")
    return DataSpec(s, "file", path=path, format=fmt)
