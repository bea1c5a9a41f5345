"""surgeon's download cache: ``$SURGEON_CACHE`` (default ``~/.cache/surgeon``).

It holds what surgeon fetches once and reuses: the demo model (``downloads/``, ``gguf/``, ``models/``) and
the benchmark task data (``task-data/``).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("SURGEON_CACHE") or Path.home() / ".cache" / "surgeon")
