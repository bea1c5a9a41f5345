"""``surgeon heal``: QLoRA (or LoRA / full) healing of a pruned model, merged into a plain checkpoint.

The pruning paper's recipe (App. A.1 / B.3) on the shared skeleton (:mod:`surgeon.commands.recipe`):
4-bit NF4 frozen base + LoRA rank 8 (alpha = rank, dropout 0.05) on the FFN projections, AdamW,
warm-up capped at 10% then cosine, peak LR 3e-4, optionally a ``--distill`` loss against the unpruned
teacher. Evaluations: the held-out loss of the source (``before``), of the model as trained
(``trained``, with the 4-bit base under NF4) and of the exact weights the output holds, the LoRA
delta added to the original float weights (``after``); ``before`` and ``after`` are layer-streamed
(:class:`surgeon.eval.streamed.StreamedModel`), so no float copy of the model is loaded. All three are
recorded in the provenance.
``--save-adapter`` also writes the peft adapter to ``OUT/adapter``.

Raises UsageError (bad options, out of memory), DataError (data that cannot fill a batch),
CheckpointError, OutputError.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..eval.metrics import LossResult
from ..options import DeviceOptions, OutputOptions, RecipeOptions, field_values, opt, with_default
from ..progress import Progress
from ..train.distill import MODES as DISTILL_MODES
from .recipe import Recipe

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class HealSettings(RecipeOptions):
    """The healing knobs, shared by ``surgeon heal`` and ``surgeon prune --heal`` (as ``--heal-*``)."""

    eval_samples: int = with_default(RecipeOptions, "eval_samples", 64)
    eval_batch_size: int = with_default(RecipeOptions, "eval_batch_size", 8)
    distill: str = opt("none", "Auxiliary loss against the unpruned teacher: KL on logits, or the residual stream at "
                               "the cut.", choices=DISTILL_MODES)
    distill_weight: float = opt(1.0, "Weight of the distillation term.")
    teacher: Path | None = opt(None, "Unpruned teacher for --distill, a folder or hub ID (default: the "
                                     "source recorded in MODEL's provenance).")
    save_adapter: bool = opt(False, "Also write the peft adapter to OUT/adapter.")

    def __post_init__(self):
        self.check_heal()

    def check_heal(self) -> None:
        self.check_recipe()
        if self.distill_weight < 0:
            raise UsageError(f"--distill-weight must be >= 0 (got {self.distill_weight})", "use e.g. 1.0")
        if self.save_adapter and self.method != "lora":
            raise UsageError("--save-adapter needs --method lora", "drop --save-adapter, or train LoRA")
        if self.fsdp and self.distill != "none":
            raise UsageError("--distill under --fsdp would hold the whole teacher on every process",
                             "drop --distill, or heal on one device (--quant nf4 fits a 70B teacher and student on one 80 GB GPU)")


@dataclass(frozen=True, kw_only=True)
class HealOptions(HealSettings, OutputOptions, DeviceOptions):
    model: Path = opt(help="Checkpoint folder to heal.", cli=False)
    data: str | None = opt(None, "Training data spec: c4, alpaca, hf:NAME[:CONFIG][@SPLIT], builtin:sotu, or a local "
                                 "file.")

    def __post_init__(self):
        self.check_output("healed checkpoint")
        if not self.data:
            raise UsageError("--data is required", "give a data spec, e.g. --data c4 or --data builtin:sotu or a .txt file")
        self.check_heal()
        self.check_device()


@dataclass
class HealResult:
    """Held-out losses (nats/token) before, of the model as trained, and of the written output
    (None with ``--eval-samples 0``)."""

    before: LossResult | None
    trained: LossResult | None
    after: LossResult | None
    train: object  # surgeon.train.TrainResult
    output: object | None  # surgeon.surgery.execute.ExecuteResult (None on non-main processes)
    adapter: str | None = None
    data: str = ""
    eval_data: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def improvement(self) -> float | None:
        return None if self.after is None or self.before is None else self.before.loss - self.after.loss

    def to_dict(self) -> dict:
        return {
            "before": self.before.to_dict() if self.before else None,
            "trained": self.trained.to_dict() if self.trained else None,
            "after": self.after.to_dict() if self.after else None, "improvement": self.improvement,
            "train": self.train.to_dict(), "output": self.output.output if self.output else None,
            "adapter": self.adapter, "data": self.data, "eval_data": self.eval_data, **self.extra,
        }


def teacher_and_cut(opts: HealOptions) -> tuple[Path, tuple[int, int] | None]:
    """The teacher folder and the cut ``(start, n)`` from MODEL's provenance (or --teacher)."""
    from ..provenance import read_chain

    prunes = [e for e in read_chain(Path(opts.model)) if e.get("operation") == "prune"]
    cut = None
    if prunes:
        dropped = sorted(prunes[-1].get("dropped_layers") or [])
        if dropped and dropped == list(range(dropped[0], dropped[0] + len(dropped))):
            cut = (dropped[0], len(dropped))
    teacher = opts.teacher or (Path(prunes[-1]["source"]) if prunes and prunes[-1].get("source") else None)
    if teacher is None or not (Path(teacher) / "config.json").is_file():
        raise UsageError(f"--distill needs the unpruned teacher{f' ({teacher} is not a checkpoint)' if teacher else ''}",
                         "pass --teacher PATH (the model before pruning)")
    if opts.teacher is not None and len(prunes) == 0:
        cut = None
    return Path(teacher), cut


def quantized_model(path, device):
    """A frozen NF4 model (the same quantization as the student's base), e.g. a ``--distill`` teacher."""
    from ..devices import compute_dtype
    from ..train.quant import load_nf4

    return load_nf4(path, device, compute_dtype(device)).requires_grad_(False)


class HealRecipe(Recipe):
    operation = "heal"

    def __init__(self, opts: HealOptions, progress: Progress | None = None):
        super().__init__(opts, progress)
        self.trained: LossResult | None = None
        self.distill_info: dict = {}
        self.adapter: str | None = None

    def measure(self, model, examples, label):
        from ..eval import heldout_loss

        return heldout_loss(model, examples, self.opts.eval_batch_size,
                            progress=lambda d, t, _: self.report(d, t, f"evaluating ({label})"))

    def loss_fn(self, device):
        opts = self.opts
        if opts.distill == "none":
            return None
        from ..train.distill import distill_loss

        teacher_path, cut = teacher_and_cut(opts)
        if opts.quant == "none":
            teacher = self.float_model(device, teacher_path)
        else:
            teacher = quantized_model(teacher_path, device)
        self.distill_info = {"mode": opts.distill, "weight": opts.distill_weight, "teacher": str(teacher_path),
                             "cut": list(cut) if cut else None}
        return distill_loss(teacher, opts.distill, opts.distill_weight, cut)

    def after_training(self, model, examples):
        if examples:
            self.trained = self.measure(model, examples, "as trained")

    def provenance(self, run):
        loss = lambda r: r.loss if r is not None else None  # noqa: E731
        return {"heal": {
            "data": run.data, "eval_data": run.eval_data, "loss_before": loss(run.before),
            "loss_trained": loss(self.trained), "loss_after": loss(run.after),
            "train_tokens": run.train.tokens, "steps": run.train.steps, "seconds": round(run.train.seconds, 2),
            "final_train_loss": run.train.losses[-1], "distill": self.distill_info or None,
            "processes": run.processes,
        }}

    def after_write(self, model):
        if self.opts.save_adapter:
            from ..train.merge import save_adapter

            self.adapter = str(save_adapter(model, Path(self.opts.output) / "adapter", state_dict=self.gathered))


def run(opts: HealOptions, progress: Progress | None = None) -> HealResult:
    """Heal ``opts.model`` and write the merged checkpoint to ``opts.output`` (see module doc)."""
    recipe = HealRecipe(opts, progress)
    r = recipe.run()
    return HealResult(r.before, recipe.trained, r.after, r.train, r.output, recipe.adapter, r.data, r.eval_data,
                      {"distill": recipe.distill_info or None})


def prune_and_heal(prune_opts, settings: HealSettings, progress: Progress | None = None):
    """``surgeon prune ... --heal SPEC``: prune into a temp folder beside the output, heal it into
    the output, remove the temp folder. The output's provenance holds both operations; the
    unpruned model is the default ``--distill`` teacher. Returns ``(PruneResult, HealResult)``."""
    import dataclasses
    import os

    from ..io.atomic import TMP_TAG, check_output
    from . import prune

    if prune_opts.output is None or not prune_opts.heal:
        raise UsageError("prune --heal needs -o/--output and a data spec", "e.g. --heal builtin:sotu -o pruned/")
    out = Path(prune_opts.output)
    check_output(out, Path(prune_opts.model), prune_opts.force)
    tmp = out.parent / f".{out.name}{TMP_TAG}{os.getpid()}-prune"  # cleaned up by atomic_output if we die
    report = progress or (lambda done, total, label: None)
    try:
        pruned = prune.run(dataclasses.replace(prune_opts, output=tmp, force=True),
                           progress=lambda d, t, _n: report(d, t, "pruning"))
        fields = field_values(settings, HealSettings)
        if fields["teacher"] is None and fields["distill"] != "none":
            fields["teacher"] = Path(prune_opts.model)
        opts = HealOptions(model=tmp, output=out, data=prune_opts.heal, dtype=prune_opts.dtype,
                           max_shard_size=prune_opts.max_shard_size, force=prune_opts.force, device=prune_opts.device,
                           **fields)
        healed = run(opts, progress)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return pruned, healed
