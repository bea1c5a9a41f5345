"""SoFT loss schemes side by side: what each costs the full model and buys the exits (issue 30).

    .venv/bin/python benchmarks/soft_frontier.py --steps 100                    # SmolLM2-135M-Instruct
    .venv/bin/python benchmarks/soft_frontier.py --steps 400 --schemes sft,anchor95_kd --work /tmp/f400
    .venv/bin/python benchmarks/soft_frontier.py --model qwen/ --exits 8,12,16,20,24 --draft-exit 12 --steps 100 --lr 1e-5
    .venv/bin/python benchmarks/soft_frontier.py --plot-only                    # redraw the figure

Every scheme fully fine-tunes the same model on the same data, seed, steps, batch (4 x 256 tokens) and
peak learning rate (1e-4; 1e-5 for Qwen2.5-Coder-0.5B, where plain SFT at 1e-4 raises the held-out loss from
1.92 to 2.66 nats), with ``surgeon soft`` (one process per scheme):

- ``sft``: ``--exits L`` (plain SFT, the reference);
- ``uniform``: the paper's eq. 1 (the mean over exits);
- ``depth``: LayerSkip's early-exit scale (``--exit-weights depth``);
- ``anchor``: the full exit at half the weight (``--exit-weights anchor:0.5``);
- ``kd``: the exits below L distil the full exit's detached distribution (``--exit-loss kd``), uniform weights;
- ``anchor_kd``: both;
- ``curriculum``: uniform, the exits entering deepest first over half the steps (``--curriculum``);
- ``shared_lr``: uniform, the shared final norm and head (the tied embedding too) at 0.1x the learning rate
  (``--shared-lr-scale 0.1``);
- ``anchor95_kd``: the full exit at 0.95, the other exits distilled (``surgeon soft``'s default).

The committed results also hold three schemes measured with ``--head-grad deepest`` (the exits read the
shared final norm and head detached, so only the full exit's loss trained them): ``head_deepest`` (uniform),
``anchor_kd_head`` (anchor:0.5 + kd) and ``anchor90_kd_head`` (anchor:0.9 + kd). The option was removed
once they showed it does not help (uniform + it: +0.564 nats vs SFT against uniform's +0.550); their rows
stay as measured.

Each output is measured by ``surgeon eval`` on the held-out records (every 20th record of the file,
which training never sees): the loss of every exit; then self-speculative decoding with the draft exit
(``--draft-exit``) on the speculative benchmark's prompts (Alpaca records 900.., greedy, chat template):
the acceptance rate, and whether the output equals full greedy. Time per step is ``surgeon soft``'s
own training time / steps (the machine may be shared: the per-step figures are comparable within a run).

``--tasks`` adds each exit's lm-evaluation-harness accuracy (``surgeon eval --tasks`` at ``--task-exits``).
``--work DIR`` keeps every output, training record and measurement: a rerun with the same options reuses
them (the training command and the measurement options are compared) and resumes an interrupted training
(``--save-every`` sets how much an interruption can lose).

Data: ``alpaca_en_demo.json`` from the ``llamafactory==0.9.5`` sdist (fetched into $SURGEON_CACHE once,
not committed). Results: benchmarks/results/soft_frontier.json, one run per (model, steps), kept across
invocations; the figure benchmarks/results/soft_frontier.png (full-exit loss vs mean intermediate-exit
loss, one point per scheme and budget).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import RESULTS, machine  # noqa: E402

ALPACA_SDIST = "llamafactory==0.9.5"
LR = 1e-4  # the peak learning rate; the SmolLM2 runs
PAPER = {"--exit-weights": "uniform", "--exit-loss": "ce"}  # every scheme names its weights and exit loss
SCHEMES = {
    "sft": {},
    "uniform": PAPER,
    "depth": {**PAPER, "--exit-weights": "depth"},
    "anchor": {**PAPER, "--exit-weights": "anchor:0.5"},
    "kd": {**PAPER, "--exit-loss": "kd"},
    "anchor_kd": {"--exit-weights": "anchor:0.5", "--exit-loss": "kd"},
    "curriculum": {**PAPER, "--curriculum": "HALF"},
    "shared_lr": {**PAPER, "--shared-lr-scale": "0.1"},
    "anchor95_kd": {"--exit-weights": "anchor:0.95", "--exit-loss": "kd"},
}
# the table's and the figure's order: the measured-then-removed --head-grad schemes (module doc) before the default
ORDER = [*list(SCHEMES)[:-1], "head_deepest", "anchor_kd_head", "anchor90_kd_head", list(SCHEMES)[-1]]


def _ordered(schemes: dict) -> list[tuple[str, dict]]:
    return sorted(schemes.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER))


def alpaca_file() -> Path:
    """``alpaca_en_demo.json`` (999 Alpaca records) from the llamafactory sdist, cached."""
    from surgeon.commands.demo import cache_dir

    dest = cache_dir() / "data" / "alpaca_en_demo.json"
    if dest.is_file():
        return dest
    dl = cache_dir() / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    if not list(dl.glob("llamafactory-*.tar.gz")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                        ALPACA_SDIST, "-d", str(dl)], check=True)
    sdist = sorted(dl.glob("llamafactory-*.tar.gz"))[-1]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("data/alpaca_en_demo.json"))
        dest.write_bytes(tar.extractfile(member).read())
    return dest


def _surgeon(*args) -> dict:
    cmd = [str(Path(sys.executable).parent / "surgeon"), *map(str, args), "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout)


def _exit_losses(model: Path, data: Path, exits: list[int], samples: int, seq_len: int) -> dict[str, float]:
    r = _surgeon("eval", model, "--data", data, "--exit", ",".join(map(str, exits)), "--samples", samples,
                 "--seq-len", seq_len, "--no-kl")
    return {str(q["exit"]): q["loss"] for q in r["exits"]}


def _acceptance(model: Path, prompts: list[str], drafts: list[int], max_new: int) -> dict[int, dict]:
    """Self-speculative decoding drafting with each exit of ``drafts``: {exit: acceptance record}."""
    from surgeon.runtime import SortedModel

    sm = SortedModel.from_pretrained(model)
    drafted, accepted, identical = dict.fromkeys(drafts, 0), dict.fromkeys(drafts, 0), dict.fromkeys(drafts, True)
    for text in prompts:
        ids = sm.encode(text, chat=bool(getattr(sm.tokenizer, "chat_template", None)))
        full = sm.generate(ids, max_new)
        for d in drafts:
            spec = sm.generate(ids, max_new, draft_exit=d)
            identical[d] &= spec.tokens == full.tokens
            drafted[d] += spec.drafted
            accepted[d] += spec.accepted
    return {d: {"draft_exit": d, "acceptance_rate": accepted[d] / max(1, drafted[d]), "drafted": drafted[d],
                "identical_to_full_greedy": identical[d], "prompts": len(prompts), "max_new_tokens": max_new}
            for d in drafts}


def _task_accuracy(model: Path, exits: list[int], args) -> dict:
    """``surgeon eval --tasks`` at ``exits``: {exit: {"mean", "mean_stderr", "tasks": {task: score record}}}."""
    from surgeon.eval.curve import mean_accuracy, task_score

    r = _surgeon("eval", model, "--tasks", args.tasks, "--task-data", args.task_data, "--limit", args.limit,
                 "--exit", ",".join(map(str, exits)))
    out = {}
    for label, results in r["exits"].items():
        tasks = {t: {k: v for k, v in task_score(m).items() if k in ("metric", "score", "score_stderr", "chance")}
                 for t, m in results.items()}
        mean, se = mean_accuracy(tasks)
        out[str(r["layers"][label])] = {"mean": mean, "mean_stderr": se, "tasks": tasks}
    return out


def _measure(model: Path, data: Path, exits: list[int], prompts: list[str], args, cache: Path | None = None) -> dict:
    """Every exit's held-out loss, acceptance at each draft exit and (with ``--tasks``) task accuracy at each
    task exit. With a ``cache`` file (under ``--work``) each part measured before with the same options is read
    back: a rerun measures only what is new (another draft exit, another task exit)."""
    parts = json.loads(cache.read_text())["parts"] if cache is not None and cache.is_file() else {}
    before = len(parts)
    key = lambda **kw: json.dumps(kw, sort_keys=True)  # noqa: E731
    loss_key = key(what="loss", exits=exits, data=str(data), samples=args.eval_samples, seq_len=args.seq_len)
    if loss_key not in parts:
        parts[loss_key] = _exit_losses(model, data, exits, args.eval_samples, args.seq_len)
    drafts = [args.draft_exit, *([int(x) for x in args.more_draft_exits.split(",")] if args.more_draft_exits else [])]
    spec_key = {d: key(what="speculative", draft=d, prompts=prompts, max_new_tokens=args.max_new_tokens) for d in drafts}
    missing = [d for d in drafts if spec_key[d] not in parts]
    if missing:
        for d, r in _acceptance(model, prompts, missing, args.max_new_tokens).items():
            parts[spec_key[d]] = r
    m = {"exit_loss": parts[loss_key], "speculative": parts[spec_key[args.draft_exit]]}
    if len(drafts) > 1:  # every draft exit measured, the draft exit's too
        m["speculative_by_exit"] = {str(d): parts[spec_key[d]] for d in drafts}
    if args.tasks:
        task_exits = [int(x) for x in args.task_exits.split(",")] if args.task_exits else exits
        task_key = {e: key(what="tasks", exit=e, tasks=args.tasks, limit=args.limit, data=str(args.task_data))
                    for e in task_exits}
        missing = [e for e in task_exits if task_key[e] not in parts]
        if missing:
            for e, r in _task_accuracy(model, missing, args).items():
                parts[task_key[int(e)]] = r
        m["task_accuracy"] = {str(e): parts[task_key[e]] for e in task_exits}
    if cache is not None:
        cache.write_text(json.dumps({"parts": parts}, indent=2) + "\n")
        if before and len(parts) == before:
            print(f"reusing {cache}", file=sys.stderr, flush=True)
    return m


def _train(model: Path, data: Path, exits: list[int], name: str, extra: dict, dest: Path, args) -> dict:
    """``surgeon soft`` for one scheme; its training figures. With ``--work`` the output and these figures are
    kept (a rerun with the same training command reuses them) and an interrupted run is resumed."""
    record = dest.with_name(f"{dest.name}.train.json")
    L = json.loads((Path(model) / "config.json").read_text())["num_hidden_layers"]
    cmd = ["soft", model, "--data", data, "--exits", str(L) if name == "sft" else ",".join(map(str, exits)),
           "--method", "full", "--steps", args.steps, "--batch-size", 4, "--seq-len", args.seq_len,
           "--lr", args.lr, "--seed", 0, "--eval-samples", 0, "-o", dest, "--force",
           *[x for kv in extra.items() for x in kv]]
    command = " ".join(map(str, cmd))  # what was trained (the checkpoint interval and a resume are not part of it)
    if args.save_every is not None:
        cmd += ["--save-every", args.save_every]
    if args.work and record.is_file() and (dest / "config.json").is_file():
        kept = json.loads(record.read_text())
        if kept.get("command", command) != command:  # (records written before the command was kept: trusted)
            raise SystemExit(f"{dest} was trained by `surgeon {kept.get('command')}`, not `surgeon {command}`: "
                             "give another --work")
        print(f"{name}: reusing {dest}", file=sys.stderr, flush=True)
        return {k: v for k, v in kept.items() if k != "command"}
    if dest.with_name(f"{dest.name}.checkpoints").joinpath("latest").is_file():  # interrupted in --work: continue
        cmd.append("--resume")
    print(f"{name}: surgeon {' '.join(map(str, cmd))}", file=sys.stderr, flush=True)
    t = time.perf_counter()
    r = _surgeon(*cmd)["train"]
    # a run resumed at its last checkpoint trains no step here: its time per step is unknown (None), and the
    # results keep the figure an earlier run measured (``main``'s merge)
    train = {"seconds_per_step": r["seconds_per_step"] if r["steps"] > r["resumed_from"] else None,
             "wall_s": round(time.perf_counter() - t, 1),
             "resumed_from": r["resumed_from"], "final_train_loss": r["losses"][-1]}
    if args.work:
        record.write_text(json.dumps({**train, "command": command}, indent=2) + "\n")
    return train


def run(args, save=lambda out: None) -> dict:
    from spec_decode import _prompt_texts

    from surgeon.commands.demo import ensure_demo_model

    model = args.model or ensure_demo_model()
    L = json.loads((Path(model) / "config.json").read_text())["num_hidden_layers"]
    exits = [int(x) for x in args.exits.split(",")] if args.exits else [L // 3, L // 2, 2 * L // 3, 5 * L // 6, L]
    data = args.data or alpaca_file()
    prompts = _prompt_texts(Path(data), 900, args.prompts)
    work = args.work or Path(tempfile.mkdtemp(prefix="surgeon-frontier-"))
    work.mkdir(parents=True, exist_ok=True)
    out = {"model": str(model), "num_layers": L, "exits": exits, "steps": args.steps, "data": str(data),
           "batch_size": 4, "seq_len": args.seq_len, "lr": args.lr, "seed": 0, "eval_samples": args.eval_samples,
           "tasks": args.tasks, "task_limit": args.limit if args.tasks else None, "schemes": {}}
    try:
        print(f"untrained: evaluating {exits}", file=sys.stderr, flush=True)
        out["untrained"] = _measure(model, data, exits, prompts, args,
                                    work / "untrained.measure.json" if args.work else None)
        for name in args.schemes.split(","):
            extra = {k: (str(args.steps // 2) if v == "HALF" else v) for k, v in SCHEMES[name].items()}
            dest = work / name
            train = _train(model, data, exits, name, extra, dest, args)
            m = _measure(dest, data, exits, prompts, args, work / f"{name}.measure.json" if args.work else None)
            out["schemes"][name] = {"options": extra, **m, **train}
            print(f"{name}: {m['exit_loss']} acceptance@{args.draft_exit} {m['speculative']['acceptance_rate']:.3f}",
                  file=sys.stderr, flush=True)
            if not args.work:
                shutil.rmtree(dest, ignore_errors=True)
            save(out)  # after every scheme: an interrupted run keeps what finished
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return out


def run_key(run_: dict) -> str:
    """A run's key in the results: ``model@steps``, with ``,lr=...`` when not trained at the default rate."""
    return f"{Path(run_['model']).name}@{run_['steps']}" + ("" if run_["lr"] == LR else f",lr={run_['lr']:g}")


def merge(previous: dict, run_: dict) -> dict:
    """The run to record: ``run_`` (this invocation's schemes) over ``previous`` (the same model and steps as
    recorded, kept only if measured at the same exits). A partial rerun keeps the schemes it did not run, and
    a scheme it trained no step of (resumed at its last checkpoint: time per step None) keeps the time per
    step measured before with the same options."""
    if not previous or previous.get("exits") != run_["exits"]:
        return run_
    kept = previous.get("schemes", {})
    schemes = {**kept, **run_["schemes"]}
    for name, s in run_["schemes"].items():
        if s.get("seconds_per_step") is None and kept.get(name, {}).get("options") == s["options"]:
            schemes[name] = {**s, "seconds_per_step": kept[name].get("seconds_per_step")}
    return {**run_, "schemes": schemes}


def relative(run_: dict) -> None:
    """Each scheme's full-exit and exit losses relative to SFT's in the same run, and its mean intermediate loss."""
    L = str(run_["num_layers"])
    sft = run_["schemes"].get("sft")
    for s in run_["schemes"].values():
        if sft:
            s["full_minus_sft"] = s["exit_loss"][L] - sft["exit_loss"][L]
            s["exits_minus_sft"] = {k: v - sft["exit_loss"][k] for k, v in s["exit_loss"].items() if k != L}
        mids = [v for k, v in s["exit_loss"].items() if k != L]
        s["mean_intermediate_loss"] = sum(mids) / len(mids)


def plot(results: dict, path: Path) -> None:
    """The frontier: one panel per model, full-exit loss against the mean intermediate-exit loss; one colour per
    scheme, one marker per run of that model (steps, learning rate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models: dict[str, list] = {}
    for key, run in sorted(results["runs"].items()):
        models.setdefault(Path(run["model"]).name, []).append((key, run))
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5), squeeze=False)
    markers = "osD^v<>p*"
    for ax, (model, runs) in zip(axes[0], models.items()):
        labelled = set()
        for j, (key, run) in enumerate(runs):
            L = str(run["num_layers"])
            for name, s in _ordered(run["schemes"]):
                i = ORDER.index(name) if name in ORDER else len(ORDER)
                ax.scatter(s["mean_intermediate_loss"], s["exit_loss"][L], marker=markers[j % len(markers)],
                           color=plt.cm.tab20(i % 20), label=None if name in labelled else name, s=50)
                labelled.add(name)
                ax.annotate(f"{name}@{key.split('@')[1]}", (s["mean_intermediate_loss"], s["exit_loss"][L]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
            lr = "" if run["lr"] == LR else f", lr {run['lr']:g}"
            ax.scatter([], [], marker=markers[j % len(markers)], color="gray", label=f"{run['steps']} steps{lr}")
        ax.axhline(runs[0][1]["untrained"]["exit_loss"][str(runs[0][1]["num_layers"])], color="gray", ls=":",
                   lw=1, label="untrained full model")
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("mean held-out loss of the intermediate exits (nats)")
        ax.set_ylabel("held-out loss of the full model (nats)")
        ax.legend(fontsize=7)
    fig.suptitle("SoFT schemes: full model vs exits (lower-left is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(results: dict) -> str:
    """The README's table: one row per (run, scheme): every exit's held-out loss, the full exit and the
    intermediate exits against SFT's of the same run, acceptance at the draft exit (and at the best of the
    draft exits measured, when several were), mean task accuracy per scored exit, time per step."""
    lines = []
    for key, run_ in sorted(results["runs"].items()):
        L = str(run_["num_layers"])
        exits = [str(e) for e in run_["exits"]]
        rows = [("untrained", run_["untrained"])] + _ordered(run_["schemes"])
        task_exits = sorted({e for _, s in rows for e in s.get("task_accuracy", {})}, key=int, reverse=True)
        several = any("speculative_by_exit" in s for _, s in rows)
        head = ["scheme", *(f"exit {e}" for e in exits), "full - SFT", "exits <= 2L/3 - SFT (worst)",
                f"acceptance @{run_['untrained']['speculative']['draft_exit']}",
                *(["best acceptance (exit)"] if several else []), *(f"acc @{e}" for e in task_exits), "s/step"]
        lines += [f"\n{key} ({run_['steps']} steps, lr {run_['lr']:g}; held-out loss in nats, {run_['eval_samples']} x {run_['seq_len']} "
                  "tokens" + (f"; accuracy: mean of {run_['tasks']} at --limit {run_['task_limit']}, ± its stderr"
                              if task_exits else "") + ")\n",
                  "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for name, s in rows:
            spec = s["speculative"]
            cells = [name, *(f"{s['exit_loss'][e]:.2f}" for e in exits),
                     f"{s['full_minus_sft']:+.3f}" if "full_minus_sft" in s else "-",
                     f"{max(v for k, v in s['exits_minus_sft'].items() if int(k) <= int(L) * 2 // 3):+.2f}"
                     if s.get("exits_minus_sft") and name != "sft" else "-",
                     f"{spec['acceptance_rate']:.3f}" + ("" if spec["identical_to_full_greedy"] else " (differs!)")]
            if several:
                by = s.get("speculative_by_exit")
                best = max(by.values(), key=lambda r: r["acceptance_rate"]) if by else None
                cells.append(f"{best['acceptance_rate']:.3f} ({best['draft_exit']})"
                             + ("" if all(r["identical_to_full_greedy"] for r in by.values()) else " (differs!)")
                             if best else "-")
            for e in task_exits:
                a = s.get("task_accuracy", {}).get(e)
                cells.append(f"{a['mean']:.3f} ± {a['mean_stderr']:.3f}" if a and a["mean"] is not None else "-")
            cells.append(f"{s['seconds_per_step']:.1f}" if s.get("seconds_per_step") is not None else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="checkpoint folder (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--data", type=Path, help="Alpaca-style file (default: alpaca_en_demo.json)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--exits", help="comma-separated exits (default: L/3, L/2, 2L/3, 5L/6, L)")
    ap.add_argument("--draft-exit", type=int, default=15)
    ap.add_argument("--more-draft-exits", help="comma-separated further draft exits measured (the table: the best)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=LR, help=f"peak learning rate (default: {LR:g}; another is a run "
                    "of its own in the results)")
    ap.add_argument("--eval-samples", type=int, default=24)
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--table", action="store_true", help="print the README's markdown table and exit")
    ap.add_argument("--work", type=Path, help="keep each scheme's output and training checkpoints here (default: a "
                    "temporary folder, removed): a rerun with the same --work and --steps measures a finished scheme "
                    "again without training and resumes an interrupted one")
    ap.add_argument("--save-every", type=int, help="soft's checkpoint interval (default: soft's, 100 steps); smaller "
                    "loses less of a long scheme that is interrupted (with --work)")
    ap.add_argument("--tasks", help="also score these lm-evaluation-harness tasks (e.g. arc_easy,piqa,hellaswag) "
                    "at --task-exits with surgeon eval --tasks")
    ap.add_argument("--task-exits", help="comma-separated exits scored on --tasks (default: every exit)")
    ap.add_argument("--limit", type=int, default=100, help="examples per task")
    ap.add_argument("--task-data", type=Path, help="the tasks' data folder (default: fetched and cached once)")
    ap.add_argument("--results", type=Path, help="results JSON (default: benchmarks/results/soft_frontier.json)")
    args = ap.parse_args(argv)
    if not (args.plot_only or args.table):
        unknown = set(args.schemes.split(",")) - set(SCHEMES)
        if unknown:
            ap.error(f"unknown schemes {sorted(unknown)}; choose from {', '.join(SCHEMES)}")
    path = args.results or RESULTS / "soft_frontier.json"
    results = json.loads(path.read_text()) if path.exists() else {"benchmark": "soft_frontier", "runs": {}}
    if args.table:
        print(table(results))
        return
    if args.tasks and not args.task_data:
        from surgeon.eval.task_data import ensure_task_data

        args.task_data = ensure_task_data()
    if not args.plot_only:
        def save(run_: dict) -> None:
            key = run_key(run_)
            run_ = merge(results["runs"].get(key, {}), run_)
            relative(run_)
            results["runs"][key] = run_
            results.update(machine=machine(), time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            RESULTS.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")

        run(args, save)
        print(path)
    if results["runs"]:
        plot(results, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
