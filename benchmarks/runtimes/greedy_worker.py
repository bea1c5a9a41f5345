"""Greedy continuations (and, on request, per-position logits) from one downstream runtime, run with
that runtime's own virtual environment (see setup.sh); imports nothing from surgeon.

    python greedy_worker.py RUNTIME JOB.json OUT.json      RUNTIME: hf | vllm | mlx

JOB: {"model": DIR, "prompts": [[token ids], ...], "max_new": N, "logits": false}
OUT: {"tokens": [[new token ids], ...], "logits_file": an .npz (arr_i: prompt i's positions x vocab) or null}
"""

import json
import sys
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
    params = SamplingParams(temperature=0.0, max_tokens=job["max_new"], ignore_eos=True)
    res = llm.generate([{"prompt_token_ids": ids} for ids in job["prompts"]], params)
    return [list(r.outputs[0].token_ids) for r in res], []


def mlx(job):
    import mlx.core as mx
    import mlx_lm
    import numpy as np

    model, _ = mlx_lm.load(job["model"])
    out, logits = [], []
    for ids in job["prompts"]:
        seq = list(ids)
        for _ in range(job["max_new"]):
            seq.append(int(mx.argmax(model(mx.array([seq]))[0, -1]).item()))
        out.append(seq[len(ids):])
        if job.get("logits"):
            logits.append(np.array(model(mx.array([ids]))[0].astype(mx.float32)))
    return out, logits


def main():
    runtime, job_path, out_path = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    job = json.loads(job_path.read_text())
    tokens, logits = {"hf": hf, "vllm": vllm, "mlx": mlx}[runtime](job)
    logits_file = None
    if logits:
        import numpy as np

        logits_file = str(out_path.with_suffix(".npz"))
        np.savez(logits_file, *logits)
    out_path.write_text(json.dumps({"tokens": tokens, "logits_file": logits_file}))


if __name__ == "__main__":  # vLLM starts its engine processes with spawn
    main()
