"""Downstream runtimes against transformers: views, extracts and pruned models in vLLM, MLX-LM,
llama.cpp and a stock transformers without surgeon.

    bash benchmarks/runtimes/setup.sh          # once per machine: the runtimes, each in its own venv
    python benchmarks/runtimes.py [--only smollm2,gemma3] [--skip vllm]

All models are built and their reference tokens taken first; then each runtime runs every model in ONE
worker process (one start-up: vLLM's engine, MLX, transformers), and llama.cpp converts and runs each.

SmolLM2-135M-Instruct (imported by `surgeon import-gguf`): a pruned model (`prune --start 13 --n 6`),
a depth extract (`extract --depth 20`), a width extract (`extract --ffn 0.75`), and two views
(`view --exit depth-10`, `depth-20`) of a sorted checkpoint written by `manifest --exits 10,20 -o`
(exit-aligned shards). A pruned random Gemma 3 (12 layers, sliding window 8, layers 1-2 dropped) and a
depth extract of it. For each model and runtime, the greedy continuation (8 new tokens) of three
prompts is compared with transformers' in surgeon's environment (`surgeon.load` of the same model or
exit, fp32): the same tokens. llama.cpp gets an fp32 GGUF from its own `convert_hf_to_gguf.py`, and
its text is compared (it tokenizes the prompt itself), for Gemma 3 before and after `surgeon
fix-gguf`. MLX-LM's logits on the imported SmolLM2 are compared position by position (top-1
agreement, max |diff|), also with the v4 `rope_theta` key removed from config.json (what MLX-LM
read before import-gguf wrote it). Writes benchmarks/results/runtimes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import write_result  # noqa: E402

SETUP = Path(__file__).resolve().parent / "runtimes" / "setup.sh"
# the machine's runtime cache, keyed by setup.sh's pins (SURGEON_RUNTIMES overrides it)
RUNTIMES = Path(subprocess.run(["bash", str(SETUP), "--root"], capture_output=True, text=True,
                               check=True).stdout.strip())
WORKER = Path(__file__).resolve().parent / "runtimes" / "greedy_worker.py"
SURGEON = [str(Path(sys.executable).with_name("surgeon"))]
PROMPTS = [
    "The history of the city begins with a small settlement on the river, where traders from the north met",
    "In the first year of the war the army moved south along the coast, and the fleet followed it from",
    "A good teacher explains the idea first, then shows an example, and finally asks the students to",
]
MAX_NEW = 8


def sh(*cmd, env=None) -> str:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} failed:\n{p.stderr[-3000:]}")
    return p.stdout


def surgeon(*args) -> str:
    return sh(*SURGEON, *args)


def reference(model_dir: Path, exit: str | None, prompts: list[list[int]]) -> list[list[int]]:
    """Greedy tokens from surgeon's environment: ``surgeon.load`` of the model (or of its exit)."""
    import torch

    import surgeon as sg

    model = sg.load(model_dir, exit=exit) if exit else sg.load(model_dir)
    with torch.no_grad():
        return [model.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW, do_sample=False)[0, len(ids):].tolist()
                for ids in prompts]


def run_batch(runtime: str, jobs: list[dict], work: Path) -> list[dict]:
    """Every job of one runtime in ONE worker process (one start-up, vLLM's engine above all)."""
    venv = RUNTIMES / runtime
    path = work / f"jobs-{runtime}.json"
    out = work / f"out-{runtime}.json"
    path.write_text(json.dumps({"jobs": [{"max_new": MAX_NEW, "logits": False, **j} for j in jobs]}))
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               VLLM_LOGGING_LEVEL="ERROR", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    t = time.time()
    sh(venv / "bin" / "python", WORKER, runtime, path, out, env=env)
    results = json.loads(out.read_text())["results"]
    print(f"  {runtime}: {len(jobs)} models in one process, {time.time() - t:.0f} s "
          f"({', '.join(str(r['seconds']) for r in results)} s each)", flush=True)
    return results


def llamacpp_text(model_dir: Path, work: Path, fix: bool, prompts: list[str]) -> tuple[list[str], dict]:
    venv = RUNTIMES / "llamacpp"
    gguf = work / f"{model_dir.name}.gguf"
    sh(venv / "bin" / "python", venv / "src" / "convert_hf_to_gguf.py", model_dir, "--outtype", "f32", "--outfile", gguf)
    info = {"converted": True}
    if fix:
        fixed = work / f"{model_dir.name}-fixed.gguf"
        out = json.loads(surgeon("fix-gguf", gguf, "--model", model_dir, "-o", fixed, "--json"))
        info["fix"] = out["reason"]
        gguf = fixed if out["output"] else gguf
    texts = []
    for p in prompts:
        texts.append(sh(venv / "src" / "build" / "bin" / "llama-completion", "-m", gguf, "-p", p, "-n", str(MAX_NEW),
                        "--temp", "0", "-no-cnv", "--no-display-prompt", "-c", "256", "--no-warmup", "--ignore-eos",
                        "-t", "2").rstrip("\n"))  # llama-completion ends its output with blank lines
    return texts, info


def compare(name: str, runtime: str, got, want) -> dict:
    same = [(g.rstrip("\n") == w.rstrip("\n")) if isinstance(g, str) else g == w for g, w in zip(got, want)]
    return {"model": name, "runtime": runtime, "equal": all(same), "prompts_equal": f"{sum(same)}/{len(same)}",
            "got": got, "want": want}


def smollm2_models(work: Path) -> tuple[list[dict], dict]:
    """SmolLM2's models (name, folder, prompts, transformers' tokens, llama.cpp mode) and the MLX-LM logits
    jobs on the import."""
    import torch
    from transformers import AutoTokenizer

    from surgeon.commands.demo import ensure_demo_model

    src = ensure_demo_model()
    tok = AutoTokenizer.from_pretrained(src)
    prompts = [tok(p).input_ids for p in PROMPTS]
    sorted_ckpt = work / "smol-sorted"
    surgeon("prune", src, "--start", "13", "--n", "6", "-o", work / "smol-pruned")
    surgeon("extract", src, "--depth", "20", "-o", work / "smol-depth20")
    surgeon("extract", src, "--ffn", "0.75", "-o", work / "smol-ffn75")
    surgeon("manifest", src, "--exits", "10,20", "-o", sorted_ckpt, "--no-verify")
    views = {}
    for e in ("depth-10", "depth-20"):
        views[e] = json.loads(surgeon("view", sorted_ckpt, "--exit", e, "-o", work / f"smol-view-{e}", "--json"))
    models = []
    for name, folder, exit in (("pruned", "smol-pruned", None), ("depth20", "smol-depth20", None),
                               ("ffn75", "smol-ffn75", None), ("view-depth-10", "smol-view-depth-10", "depth-10"),
                               ("view-depth-20", "smol-view-depth-20", "depth-20")):
        want = reference(sorted_ckpt, exit, prompts) if exit else reference(work / folder, None, prompts)
        models.append({"name": f"smollm2-{name}", "folder": work / folder, "prompts": prompts, "want": want,
                       "text": [tok.decode(w) for w in want], "llamacpp": "plain" if exit else None})
    # MLX-LM's logits on the import, with and without the v4 rope_theta key
    import surgeon as sg

    model = sg.load(src)
    with torch.no_grad():
        ref = [model(torch.tensor([ids])).logits[0].numpy() for ids in prompts]
    stripped = work / "smol-v5-only"
    shutil.copytree(src, stripped)
    cfg = json.loads((stripped / "config.json").read_text())
    for k in ("rope_theta", "rope_scaling", "torch_dtype"):
        cfg.pop(k, None)
    (stripped / "config.json").write_text(json.dumps(cfg, indent=2))
    logits = [{"label": "import-gguf config", "folder": src, "prompts": prompts, "ref": ref},
              {"label": "v5 keys only", "folder": stripped, "prompts": prompts, "ref": ref}]
    disk = {e: {"mode": v["mode"], "bytes_added": v["bytes_added"], "linked_files": len(v["linked"])}
            for e, v in views.items()}
    return models, {"views": disk, "logits": logits}


def gemma3_models(work: Path) -> tuple[list[dict], dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3TextConfig

    from surgeon.commands.demo import ensure_demo_model

    tok = AutoTokenizer.from_pretrained(ensure_demo_model())  # a tokenizer llama.cpp's converter knows
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=12,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
                           sliding_window=8, max_position_embeddings=512, initializer_range=0.2,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=0)
    torch.manual_seed(0)
    base = work / "gemma3"
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(base)
    tok.save_pretrained(base)
    surgeon("prune", base, "--start", "1", "--n", "2", "-o", work / "gemma3-pruned")
    surgeon("extract", work / "gemma3-pruned", "--depth", "8", "-o", work / "gemma3-pruned-depth8")
    prompts = [tok(p).input_ids for p in PROMPTS]
    info = {"sliding_window": 8, "prompt_tokens": [len(p) for p in prompts], "layer_types": {}}
    models = []
    for name in ("gemma3", "gemma3-pruned", "gemma3-pruned-depth8"):
        info["layer_types"][name] = json.loads((work / name / "config.json").read_text())["layer_types"]
        want = reference(work / name, None, prompts)
        models.append({"name": name, "folder": work / name, "prompts": prompts, "want": want,
                       "text": [tok.decode(w) for w in want], "llamacpp": "fix"})
    return models, info


def run_runtimes(models: list[dict], logits: list[dict], work: Path, skip: set[str]) -> tuple[list[dict], dict]:
    """Each runtime once (one process for all its models), then llama.cpp per model."""
    import numpy as np

    rows, mlx = [], {}
    for runtime in ("hf", "mlx", "vllm"):
        if runtime in skip:
            continue
        extra = logits if runtime == "mlx" else []
        jobs = [{"model": str(m["folder"]), "prompts": m["prompts"]} for m in models]
        jobs += [{"model": str(x["folder"]), "prompts": x["prompts"], "logits": True} for x in extra]
        results = run_batch(runtime, jobs, work)
        rows += [compare(m["name"], runtime, r["tokens"], m["want"]) for m, r in zip(models, results)]
        for x, out in zip(extra, results[len(models):]):
            got = np.load(out["logits_file"])
            arrs = [got[f"arr_{i}"] for i in range(len(x["prompts"]))]
            top1 = sum(int((a.argmax(-1) == r.argmax(-1)).sum()) for a, r in zip(arrs, x["ref"]))
            mlx[x["label"]] = {"top1_equal_positions": f"{top1}/{sum(r.shape[0] for r in x['ref'])}",
                               "max_abs_logit_diff": float(max(np.abs(a - r).max() for a, r in zip(arrs, x["ref"])))}
            Path(out["logits_file"]).unlink(missing_ok=True)
    if "llamacpp" not in skip:
        for m in models:
            if m["llamacpp"] == "plain":
                got, _ = llamacpp_text(m["folder"], work, False, PROMPTS)
                rows.append(compare(m["name"], "llamacpp", got, m["text"]))
            elif m["llamacpp"] == "fix":
                got, _ = llamacpp_text(m["folder"], work, False, PROMPTS)
                rows.append(compare(m["name"], "llamacpp (converter only)", got, m["text"]))
                got, fix = llamacpp_text(m["folder"], work, True, PROMPTS)
                rows.append({**compare(m["name"], "llamacpp + surgeon fix-gguf", got, m["text"]), "fix": fix.get("fix")})
    return rows, mlx


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="smollm2,gemma3")
    ap.add_argument("--skip", default="", help="runtimes to leave out: hf,mlx,vllm,llamacpp")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    skip = {s for s in args.skip.split(",") if s}
    missing = [r for r in ("hf", "mlx", "vllm", "llamacpp") if r not in skip and not (RUNTIMES / r / ".done").is_file()]
    if missing:
        sys.exit(f"runtimes not built: {', '.join(missing)}; run bash benchmarks/runtimes/setup.sh {' '.join(missing)}")
    work = Path(tempfile.mkdtemp(prefix="surgeon-runtimes-"))
    t0 = time.time()
    models, logits, extra = [], [], {}
    try:
        if "smollm2" in args.only:
            m, e = smollm2_models(work)
            models += m
            logits = e.pop("logits")
            extra["smollm2"] = e
        if "gemma3" in args.only:
            m, e = gemma3_models(work)
            models += m
            extra["gemma3"] = e
        print(f"{len(models)} models built and their references taken in {time.time() - t0:.0f} s", flush=True)
        rows, mlx = run_runtimes(models, logits, work, skip)
        if "smollm2" in extra:
            extra["smollm2"]["mlx_logits"] = mlx
        for row in rows:
            print(f"{row['model']:28s} {row['runtime']:28s} {'equal' if row['equal'] else 'DIFFERS'} "
                  f"({row['prompts_equal']} prompts)", flush=True)
        path = write_result("runtimes", {"rows": rows, **extra, "max_new_tokens": MAX_NEW, "prompts": PROMPTS,
                                         "seconds": round(time.time() - t0, 1)})
        print(path)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
