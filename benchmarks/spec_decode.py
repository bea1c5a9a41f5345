"""Decoding speed of the sorted runtime on CPU: full greedy vs self-speculative vs confidence early exit.

    .venv/bin/python benchmarks/spec_decode.py                       # SmolLM2-135M-Instruct (imported once)
    .venv/bin/python benchmarks/spec_decode.py --model sorted-smollm2/ --name spec_decode_soft
    .venv/bin/python benchmarks/spec_decode.py --model sorted/ --dtype bf16 --prompt-data alpaca.json --prompt-start 900 \
        --draft-vocab 16384 --draft-confidence 0.3      # held-out instructions, cheaper drafts

For each mode, every prompt is generated (greedy, chat template) and tokens/s = new tokens / wall time
summed over prompts, prefill included; tokens per CPU-second (process time) is reported beside it
because the machine may be shared (CPU time is less sensitive to other processes). Modes run
interleaved per prompt, round after round; each round's ratios are taken against the full-greedy runs
of the same round, and the JSON reports the per-round medians.
Speculative output is compared token for token with full greedy (it must be identical); early exit
reports its agreement with full greedy (it is an approximation) and the tokens emitted per exit.
transformers' own greedy ``generate`` and its ``assistant_early_exit`` (layer-skip assisted decoding,
which keeps a separate draft cache and recomputes all layers when verifying) are measured as references.
Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import write_result  # noqa: E402

PROMPTS = [
    "Explain why the sky is blue in two sentences.",
    "Write a short story about a river that flows uphill.",
    "List three tips for learning a new language.",
]
# the thesis' thresholds (app. D.0.1, exits 12..36 of LLaMA-13B's 40 layers) mapped onto 30 layers
EARLY_EXIT = "9:0.95,12:0.95,15:0.9,18:0.9,21:0.8,24:0.8,27:0.7"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="checkpoint folder (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--draft-exits", default="6,10,15,20,25,28", help="candidate draft exits K")
    ap.add_argument("--early-exit", default=EARLY_EXIT, help="K:THRESHOLD pairs (or manifest thresholds)")
    ap.add_argument("--prompts", type=int, default=2, help="how many prompts")
    ap.add_argument("--prompt-data", type=Path,
                    help="take the prompts from this Alpaca-style .json/.jsonl (instruction + input) instead of the "
                         "built-in ones: records --prompt-start.. (keep them out of the exits' training data)")
    ap.add_argument("--prompt-start", type=int, default=0, help="first record of --prompt-data")
    ap.add_argument("--draft-vocab", type=int, default=0,
                    help="also run each draft exit with a draft head over the N most frequent tokens (0: no)")
    ap.add_argument("--draft-vocab-data", default=None, help="data ranking the draft vocabulary (default: id order)")
    ap.add_argument("--draft-confidence", type=float, default=0.0,
                    help="confidence stop for the drafts of the --draft-vocab runs (0: none)")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--dtype", default=None, choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--kernels", default="stock", choices=("stock", "onednn"),
                    help="linear-layer kernels of every surgeon mode (onednn: prepacked weights); with onednn, plain "
                         "full greedy on the stock kernels is measured too, as full_stock_kernels")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers' generate references")
    ap.add_argument("--name", default="spec_decode", help="results file name")
    ap.add_argument("--no-project", dest="project", action="store_false",
                    help="skip the step timings and the projected speed-up at given acceptance rates")
    args = ap.parse_args(argv)

    import torch

    from surgeon.runtime import SortedModel

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is None:
        from surgeon.commands.demo import ensure_demo_model

        args.model = ensure_demo_model()
    sm = SortedModel.from_pretrained(args.model, dtype=args.dtype, kernels=args.kernels)
    texts = _prompt_texts(args.prompt_data, args.prompt_start, args.prompts) if args.prompt_data else PROMPTS[: args.prompts]
    prompts = [sm.encode(p, chat=bool(getattr(sm.tokenizer, "chat_template", None))) for p in texts]
    drafts = [int(k) for k in args.draft_exits.split(",") if k.strip()]
    modes: dict[str, dict] = {"full": {}}
    modes.update({f"speculative_k{k}": {"draft_exit": k} for k in drafts})
    if args.draft_vocab or args.draft_confidence:
        from surgeon.commands.generate import draft_texts

        fast: dict = {"draft_confidence": args.draft_confidence}
        if args.draft_vocab:
            fast["draft_vocab"] = sm.draft_head(args.draft_vocab, draft_texts(args.draft_vocab_data))
        modes.update({f"speculative_k{k}_fast": {"draft_exit": k, **fast} for k in drafts})
    modes["early_exit"] = {"early_exit": args.early_exit}
    if args.kernels != "stock":
        modes["full_stock_kernels"] = {}
    if not args.no_hf:
        modes["hf_greedy"] = {"backend": "hf"}
        modes[f"hf_assistant_early_exit_k{max(drafts)}"] = {"backend": "hf", "draft_exit": max(drafts)}
    n = args.max_new_tokens
    for name, kw in modes.items():  # warm-up: first calls pay one-off costs
        with _kernels_for(sm, name):
            sm.generate(prompts[0], 3, **kw)

    load_before = os.getloadavg()
    rounds: list[dict[str, dict]] = []
    for _ in range(args.rounds):
        rnd = {name: {"tokens": 0, "seconds": 0.0, "cpu_seconds": 0.0, "outputs": [], "results": []} for name in modes}
        for p in prompts:  # modes interleaved per prompt: neighbours in time share the machine's load
            for name, kw in modes.items():
                c0 = time.process_time()
                with _kernels_for(sm, name):
                    r = sm.generate(p, n, **kw)
                e = rnd[name]
                e["cpu_seconds"] += time.process_time() - c0
                e["tokens"] += r.new_tokens
                e["seconds"] += r.seconds
                e["outputs"].append(r.tokens)
                e["results"].append(r)
        for name, e in rnd.items():
            e["tokens_per_s"] = e["tokens"] / e["seconds"]
            e["tokens_per_cpu_s"] = e["tokens"] / e["cpu_seconds"]
            print(f"{name:32s} {e['tokens_per_s']:7.2f} tokens/s {e['tokens_per_cpu_s']:7.2f} tokens/CPU-s", file=sys.stderr)
        rounds.append(rnd)
    load_after = os.getloadavg()

    out_modes: dict[str, dict] = {}
    for name, kw in modes.items():
        per = [r[name] for r in rounds]
        entry = {"options": {k: (len(v) if k == "draft_vocab" else v) for k, v in kw.items()},
                 "tokens_per_s": statistics.median(p["tokens_per_s"] for p in per),
                 "speedup_vs_full": statistics.median(p["tokens_per_s"] / r["full"]["tokens_per_s"]
                                                      for p, r in zip(per, rounds)),
                 "tokens_per_cpu_s": statistics.median(p["tokens_per_cpu_s"] for p in per),
                 "cpu_speedup_vs_full": statistics.median(p["tokens_per_cpu_s"] / r["full"]["tokens_per_cpu_s"]
                                                          for p, r in zip(per, rounds)),
                 "tokens": per[0]["tokens"],
                 "identical_to_full": all(p["outputs"] == r["full"]["outputs"] for p, r in zip(per, rounds))}
        res = per[0]["results"]
        drafted = sum(r.drafted for r in res)
        if drafted:
            steps = sum(r.verify_steps for r in res)
            entry.update(acceptance_rate=sum(r.accepted for r in res) / drafted, drafted=drafted,
                         tokens_per_verify_pass=sum(r.new_tokens for r in res) / max(steps, 1))
        if name == "early_exit":
            counts: dict[str, int] = {}
            for r in res:
                for d, c in r.exit_counts.items():
                    counts[str(d)] = counts.get(str(d), 0) + c
            full_out = rounds[0]["full"]["outputs"]
            same = sum(sum(a == b for a, b in zip(o, f)) for o, f in zip(per[0]["outputs"], full_out))
            entry.update(exit_counts=counts, catchup_positions=sum(r.catchup_positions for r in res),
                         token_agreement_with_full=same / max(1, sum(len(f) for f in full_out)),
                         mean_exit_depth=sum(int(d) * c for d, c in counts.items()) / max(1, sum(counts.values())))
        out_modes[name] = entry
    head = modes.get(f"speculative_k{drafts[0]}_fast", {}).get("draft_vocab") if drafts else None
    projection = _projection(sm, prompts[0], drafts, head) if args.project else None
    best = max((m for m in out_modes if m.startswith("speculative")), key=lambda m: out_modes[m]["speedup_vs_full"],
               default=None)
    path = write_result(args.name, {
        "model": str(args.model), "num_layers": sm.num_layers, "dtype": str(sm.model.dtype),
        "kernels": args.kernels, "prompt_source": str(args.prompt_data or "built-in"), "prompt_start": args.prompt_start,
        "draft_vocab_data": args.draft_vocab_data,
        "torch_threads": torch.get_num_threads(), "prompts": len(prompts), "max_new_tokens": n,
        "rounds": args.rounds, "load_average_before": load_before, "load_average_after": load_after,
        "modes": out_modes, "best_speculative": best, "projection": projection,
        "command": " ".join(["benchmarks/spec_decode.py", *(argv if argv is not None else sys.argv[1:])]),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    print(path)


def _kernels_for(sm, mode: str):
    """The stock kernels for the ``full_stock_kernels`` reference, the loaded ones otherwise."""
    from contextlib import nullcontext

    from surgeon.runtime.kernels import stock_kernels

    return stock_kernels(sm.model) if mode == "full_stock_kernels" else nullcontext()


def _prompt_texts(path: Path, start: int, count: int) -> list[str]:
    """Instructions (plus their input) of records start..start+count-1 of an Alpaca-style file."""
    from surgeon.data.records import iter_records

    out = []
    for i, rec in enumerate(iter_records(str(path))):
        if i >= start:
            text = rec.get("instruction") or rec.get("text") or ""
            if (rec.get("input") or "").strip():
                text += "\n\n" + rec["input"]
            out.append(text)
        if len(out) == count:
            break
    return out


def _median_time(fn, reps: int = 9) -> float:
    """Median CPU time (process time: robust on a shared machine) of `reps` calls."""
    ts = []
    for _ in range(reps):
        t = time.process_time()
        fn()
        ts.append(time.process_time() - t)
    return statistics.median(ts)


def _verify(st, ids_v, pos, cache, k: int, L: int, hidden, n: int):
    def run():
        st.forward(ids_v, pos, cache, tuple(range(k, L)), start=k, start_hidden=hidden)
        cache.truncate(n)
    return run


def _projection(sm, ids: list[int], drafts: list[int], head=None, gamma: int = 4) -> dict:
    """Measured step times -> the speed-up speculative decoding would reach at a given acceptance rate.

    Per cycle with draft length g: g draft steps (K layers + head, one token), one K-layer step without
    head (the last draft), one verify pass (layers K..L-1 over g+1 positions + head). With i.i.d.
    acceptance a, a cycle yields (1 - a^(g+1)) / (1 - a) tokens (Leviathan et al. 2023, eq. 1). A
    projection from timings, not a generation: it says what a SoFT-trained model's acceptance would buy,
    and ``acceptance_for_1.3x`` the i.i.d. acceptance rate at which it reaches 1.3x. With ``head`` (a
    draft head over a vocabulary subset) the draft steps are timed with it as well (``*_draft_vocab``).
    """
    import torch

    from surgeon.runtime.stack import SharedCache

    st, L = sm.stack, sm.num_layers
    n = len(ids)
    t = torch.tensor([ids])

    def prefilled():
        c = SharedCache()
        st.forward(t, torch.arange(n).unsqueeze(0), c, tuple(range(L)), logits_to_keep=1)
        return c

    def one(cache, layers, **kw):
        def run():
            st.forward(torch.tensor([[ids[-1]]]), torch.tensor([[n]]), cache, layers, **kw)
            cache.truncate(n)
        return run

    cache = prefilled()
    t_full = _median_time(one(cache, tuple(range(L)), logits_to_keep=1))
    out: dict = {"draft_length": gamma, "full_step_cpu_s": t_full, "exits": {}}
    # one full-model pass over gamma+1 positions vs one position, on the loaded and on the stock kernels
    pos = torch.arange(n, n + gamma + 1).unsqueeze(0)
    multi = torch.tensor([ids[-1:] * (gamma + 1)])

    def full_multi(c):
        def run():
            st.forward(multi, pos, c, tuple(range(L)))
            c.truncate(n)
        return run
    out["full_pass_positions"] = gamma + 1
    out["full_pass_cpu_s"] = _median_time(full_multi(cache))
    if any("_surgeon_packed" in m.__dict__ for m in sm.model.modules()):
        from surgeon.runtime.kernels import stock_kernels

        with stock_kernels(sm.model):
            out["stock_kernels"] = {"full_step_cpu_s": _median_time(one(cache, tuple(range(L)), logits_to_keep=1)),
                                    "full_pass_cpu_s": _median_time(full_multi(cache))}
    for k in drafts:
        t_draft = _median_time(one(cache, tuple(range(k)), keep_hidden=True, logits_to_keep=1))
        t_nohead = _median_time(one(cache, tuple(range(k)), head=False, keep_hidden=True))
        h = torch.zeros(1, gamma + 1, sm.model.config.hidden_size, dtype=sm.model.dtype)
        pos = torch.arange(n, n + gamma + 1).unsqueeze(0)
        ids_v = torch.tensor([ids[-1:] * (gamma + 1)])
        t_verify = _median_time(_verify(st, ids_v, pos, prefilled(), k, L, h, n))
        e = out["exits"][str(k)] = {"draft_step_no_head_cpu_s": t_nohead, "verify_pass_cpu_s": t_verify}
        variants = {"": t_draft}
        if head is not None:
            variants["_draft_vocab"] = _median_time(_head_step(st, head, cache, k, ids[-1], n))
        for suffix, td in variants.items():
            cycle = gamma * td + t_nohead + t_verify
            speed = {a: ((1 - a ** (gamma + 1)) / (1 - a)) * t_full / cycle for a in _RATES}
            e["draft_step_cpu_s" + suffix] = td
            e["projected_speedup" + suffix] = {str(a): v for a, v in speed.items()}
            e["acceptance_for_1.3x" + suffix] = next((a for a in _RATES if speed[a] >= 1.3), None)
    return out


_RATES = tuple(round(0.05 * i, 2) for i in range(2, 20))  # 0.1 .. 0.95


def _head_step(st, head, cache, k: int, tok: int, n: int):
    import torch

    def run():
        o = st.forward(torch.tensor([[tok]]), torch.tensor([[n]]), cache, tuple(range(k)), head=False, keep_hidden=True)
        head.logits(o.normed[0, -1:])
        cache.truncate(n)
    return run


if __name__ == "__main__":
    main()
