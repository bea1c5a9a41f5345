"""Greedy continuations (and, on request, per-position logits) from one downstream runtime, run with
that runtime's own virtual environment (see setup.sh); imports nothing from surgeon. One process
runs every model of a runtime (its start-up, vLLM's above all, is paid once).

    python greedy_worker.py RUNTIME JOBS.json OUT.json      RUNTIME: hf | vllm | mlx

JOBS: {"jobs": [{"model": DIR, "prompts": [[token ids], ...], "max_new": N, "logits": false}, ...]}
OUT:  {"results": [{"tokens": [[new token ids], ...], "logits_file": an .npz (arr_i: prompt i's
      positions x vocab) or null, "seconds": S}, ...]}   (one per job, in order)
"""

import gc
import json
import sys
import time
from pathlib import Path


def hf(job):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32).eval()
    out, logits = [], []
    with torch.no_grad():
        for ids in job["prompts"]:
            x = torch.tensor([ids])
            out.append(model.generate(x, max_new_tokens=job["max_new"], do_sample=False)[0, len(ids):].tolist())
            if job.get("logits"):
                logits.append(model(x).logits[0].numpy())
    return out, logits


def vllm(job):
    from vllm import LLM, SamplingParams

    llm = LLM(model=job["model"], dtype="float32", max_model_len=256, enforce_eager=True, seed=0)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=job["max_new"], ignore_eos=True)
        res = llm.generate([{"prompt_token_ids": ids} for ids in job["prompts"]], params)
        return [list(r.outputs[0].token_ids) for r in res], []
    finally:  # stop this engine (its core process) before the next model's
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if hasattr(core, "shutdown"):
            core.shutdown()
        del llm, engine, core
        gc.collect()


def mlx(job):
    import mlx.core as mx
    import mlx_lm
    import numpy as np
    from mlx_lm.generate import generate_step

    model, _ = mlx_lm.load(job["model"])
    out, logits = [], []
    for ids in job["prompts"]:  # MLX-LM's own generation loop (KV cache), greedy
        steps = generate_step(mx.array(ids), model, max_tokens=job["max_new"], sampler=lambda x: mx.argmax(x, axis=-1))
        out.append([int(tok) for tok, _ in steps])
        if job.get("logits"):
            logits.append(np.array(model(mx.array([ids]))[0].astype(mx.float32)))
    return out, logits


def main():
    runtime, job_path, out_path = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    results = []
    for i, job in enumerate(json.loads(job_path.read_text())["jobs"]):
        t = time.time()
        tokens, logits = {"hf": hf, "vllm": vllm, "mlx": mlx}[runtime](job)
        logits_file = None
        if logits:
            import numpy as np

            logits_file = str(out_path.with_name(f"{out_path.stem}-{i}.npz"))
            np.savez(logits_file, *logits)
        results.append({"tokens": tokens, "logits_file": logits_file, "seconds": round(time.time() - t, 1)})
        gc.collect()
    out_path.write_text(json.dumps({"results": results}))


if __name__ == "__main__":  # vLLM starts its engine processes with spawn
    main()
