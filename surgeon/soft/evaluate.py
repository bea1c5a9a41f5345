"""``surgeon eval``: loss and perplexity of depth exits, read through the shared norm and head.

One forward pass per batch serves every exit (forward hooks capture the residual stream after
layer ``n-1``). For each exit, over the supervised held-out tokens: mean cross-entropy (nats),
perplexity, KL(full || exit) of the next-token distributions (nats per token) and top-1
agreement with the full model. Logits are computed in chunks of tokens with no autograd, so at
most two chunks of full-vocabulary logits (the full model's and one exit's) exist at a time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import CheckpointError, DataError, UsageError
from ..options import opt
from .exits import default_exits, parse_exits
from .heads import ExitModules, capture_exits, exit_modules
from .losses import IGNORE_INDEX, default_chunk_tokens

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class EvalOptions:
    model: Path = opt(help="Checkpoint folder.", cli=False)
    data: str = opt("builtin:sotu", "Evaluation data spec (its held-out slice / validation split is used).")
    exit: str | None = opt(None, "Exit(s) to evaluate: a layer count, or a comma-separated list.",
                           flags=("--exit", "--exits"), metavar="K")
    all_exits: bool = opt(False, "Evaluate every recorded exit (manifest or provenance; else the default spread).")
    kl: bool = opt(True, "Also report KL(full || exit) and top-1 agreement (needs the full forward pass).")
    seq_len: int = opt(512, "Tokens per evaluation sequence.")
    samples: int = opt(64, "Largest number of held-out sequences.")
    batch_size: int = opt(4, "Sequences per forward pass.")
    dtype: str = opt("fp32", "Compute dtype.", choices=("fp32", "bf16", "fp16"))
    tasks: str | None = opt(None, "Run lm-evaluation-harness tasks on each exit instead (comma-separated, e.g. "
                                  "hellaswag,arc_easy; needs `pip install lm-eval` and the tasks' data).")
    limit: int | None = opt(None, "Examples per harness task (default: all).")

    def __post_init__(self):
        if self.exit is None and not self.all_exits:
            raise UsageError("give --exit K or --all-exits", "e.g. surgeon eval MODEL --exit 24 --data builtin:sotu")
        if self.exit is not None and self.all_exits:
            raise UsageError("--exit and --all-exits exclude each other", "give one of them")
        for name in ("seq_len", "samples", "batch_size"):
            if getattr(self, name) < (2 if name == "seq_len" else 1):
                raise UsageError(f"--{name.replace('_', '-')} is too small ({getattr(self, name)})",
                                 "give a positive value (seq-len at least 2)")


@dataclass
class ExitQuality:
    """Held-out quality of sub-model ``exit`` (first ``exit`` layers + shared norm and head)."""

    exit: int
    loss: float
    perplexity: float
    kl_full_exit: float | None = None
    top1_agreement: float | None = None


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


def recorded_exits(folder: Path, num_layers: int) -> tuple[int, ...]:
    """Prefix exits recorded in the checkpoint: its sorted manifest, else the latest ``soft``
    provenance entry, else :func:`default_exits`."""
    try:
        from ..manifest.store import read_manifest

        found = read_manifest(folder)
    except Exception as e:  # noqa: BLE001 - a broken manifest falls back to provenance
        log.warning("could not read the sorted manifest of %s (%s); using provenance", folder, e)
        found = None
    if found:
        exits = []
        for e in found[0].get("exits", []):
            layers = list(e.get("layers", []))
            if layers and layers == list(range(len(layers))) and not e.get("widths"):
                exits.append(len(layers))
        if exits:
            return tuple(sorted(set(exits)))
    from ..provenance import read_chain

    for entry in reversed(read_chain(folder)):
        if entry.get("exits"):
            return parse_exits([int(n) for n in entry["exits"]], num_layers)
    return default_exits(num_layers)


def exit_quality(model, examples: Sequence[dict], exits: Sequence[int], *, batch_size: int = 4,
                 kl: bool = True, chunk_tokens: int | None = None, progress: Progress | None = None,
                 mods: ExitModules | None = None) -> tuple[list[ExitQuality], int]:
    """Quality of every exit over ``examples`` (``{"input_ids", "labels"}``) from one pass per batch.

    Returns ``(qualities, scored tokens)``. ``kl=True`` runs the full depth to compare against.
    """
    import torch

    from ..train.loop import collate

    mods = mods or exit_modules(model)
    exits = sorted(set(int(n) for n in exits))
    run = sorted(set(exits) | ({mods.num_layers} if kl else set()))
    device = next(model.parameters()).device
    ce = dict.fromkeys(exits, 0.0)
    kls = dict.fromkeys(exits, 0.0)
    agree = dict.fromkeys(exits, 0)
    count = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in range(0, len(examples), batch_size):
                batch = collate(examples[b:b + batch_size])
                ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
                hidden = capture_exits(model, mods, run, ids.to(device), mask.to(device))
                targets = labels[:, 1:].reshape(-1).to(device)
                keep = (targets != IGNORE_INDEX).nonzero().squeeze(1)
                targets = targets[keep]
                rows = {n: h[:, :-1].reshape(-1, h.shape[-1]).index_select(0, keep) for n, h in hidden.items()}
                del hidden
                vocab = mods.head.weight.shape[0] if hasattr(mods.head, "weight") else 1
                chunk = chunk_tokens or default_chunk_tokens(vocab)
                for s in range(0, len(targets), chunk):
                    t = targets[s:s + chunk]
                    full = torch.log_softmax(mods.logits(rows[mods.num_layers][s:s + chunk]).float(), -1) if kl else None
                    pfull = full.exp() if kl else None
                    for n in exits:
                        lp = full if (kl and n == mods.num_layers) else torch.log_softmax(
                            mods.logits(rows[n][s:s + chunk]).float(), -1)
                        ce[n] += float(-lp.gather(1, t[:, None]).sum())
                        if kl:
                            kls[n] += float((pfull * (full - lp)).sum())
                            agree[n] += int((full.argmax(-1) == lp.argmax(-1)).sum())
                count += len(targets)
                if progress:
                    progress(min(b + batch_size, len(examples)), len(examples), "evaluating")
    finally:
        model.train(was_training)
    if count == 0:
        raise DataError("the evaluation data has no scored tokens", "give longer sequences or more data")
    out = []
    for n in exits:
        loss = ce[n] / count
        out.append(ExitQuality(n, loss, math.exp(min(loss, 700.0)),
                               kls[n] / count if kl else None, agree[n] / count if kl else None))
    return out, count


def _load(path: Path, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json", "point MODEL at a Hugging Face checkpoint folder")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load {path}: {str(e).splitlines()[0]}",
                              "check that the folder holds a complete checkpoint with its tokenizer") from None
    return model, tok


def run_harness(opts: EvalOptions) -> dict:
    """``--tasks``: lm-evaluation-harness tasks on each requested exit (see surgeon.runtime.harness)."""
    from ..io.checkpoint import Checkpoint
    from ..runtime.harness import run_tasks

    L = Checkpoint.open(opts.model).num_layers
    exits = recorded_exits(Path(opts.model), L) if opts.all_exits else parse_exits(opts.exit, L)
    if opts.limit is not None and opts.limit < 1:
        raise UsageError(f"--limit {opts.limit} is below 1", "give examples per task, or omit it for all")
    return run_tasks(opts.model, [None if n == L else n for n in exits], opts.tasks, limit=opts.limit,
                     dtype=opts.dtype)


def evaluate_exits(opts: EvalOptions, progress: Progress | None = None) -> ExitEvalResult:
    """Load ``opts.model`` and measure the chosen exits on the held-out slice of ``opts.data``."""
    from ..data import parse_data_spec, training_examples

    model, tok = _load(Path(opts.model), opts.dtype)
    mods = exit_modules(model)
    L = mods.num_layers
    exits = recorded_exits(Path(opts.model), L) if opts.all_exits else parse_exits(opts.exit, L)
    spec = parse_data_spec(opts.data)
    examples = list(training_examples(spec, tok, seq_len=opts.seq_len, role="eval", max_examples=opts.samples))
    quality, tokens = exit_quality(model, examples, exits, batch_size=opts.batch_size, kl=opts.kl,
                                   progress=progress, mods=mods)
    return ExitEvalResult(model=str(opts.model), num_layers=L, data=spec.describe(), tokens=tokens,
                          sequences=len(examples), exits=quality)
