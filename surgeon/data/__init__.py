"""Data loading shared by every command that takes ``--data``.

Public API:

- :func:`parse_data_spec` ``(spec) -> DataSpec``: ``c4`` (allenai/c4 ``en``, streamed; train split
  for training, validation for analysis/eval), ``alpaca`` (tatsu-lab/alpaca, train only),
  ``hf:NAME[:CONFIG][@SPLIT]``, ``builtin:sotu`` (text shipped with surgeon), or a local ``.txt``
  (documents separated by blank lines), ``.jsonl`` (``text`` or ``instruction``/``input``/``output``),
  ``.json`` (a list of such objects) or ``.parquet`` file. ``DataSpec.describe()`` is a provenance line.
- :func:`iter_records` ``(spec, role="all"|"train"|"eval")``: ``{"text"}`` or
  ``{"instruction", "input", "output"}`` dicts. Hub specs: ``train`` -> train split,
  ``eval``/``all`` -> validation split (or ``@SPLIT``). Local files and alpaca: ``all`` = every
  record, ``eval`` = records 0, 20, 40, ... (``HELDOUT_EVERY``), ``train`` = the rest.
- :func:`calibration_samples` ``(spec, tokenizer, *, samples=256, seq_len=1024, pack=False,
  shuffle=False, seed=0, role="all") -> CalibrationSet``: each document tokenized on its own,
  truncated to ``seq_len``; shorter ones skipped unless ``pack``; the first N in file order.
- :func:`training_examples` ``(spec, tokenizer, *, seq_len, role="train", seed=0)``: packed text
  blocks, or Alpaca-template instruction examples with the prompt masked (``labels`` = -100).

With no network, a hub spec fails at once (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``, or a
quick probe of the hub) with a :class:`~surgeon.errors.DataError` naming the local-file alternative.
"""

from __future__ import annotations

from .calibration import CalibrationSet, calibration_samples, check_calibration_args
from .records import ROLES, hub_offline_reason, iter_records
from .spec import BUILTIN, HELDOUT_EVERY, DataSpec, parse_data_spec
from .templates import PROMPT_NO_INPUT, PROMPT_WITH_INPUT, alpaca_prompt, record_text
from .training import IGNORE_INDEX, collate, instruction_example, training_examples

__all__ = [
    "BUILTIN", "HELDOUT_EVERY", "IGNORE_INDEX", "PROMPT_NO_INPUT", "PROMPT_WITH_INPUT", "ROLES",
    "CalibrationSet", "DataSpec", "alpaca_prompt", "collate", "calibration_samples", "check_calibration_args", "hub_offline_reason",
    "instruction_example", "iter_records", "parse_data_spec", "record_text", "training_examples",
]
