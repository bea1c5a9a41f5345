"""``surgeon soft``: Sorted Fine-Tuning, so every chosen prefix of layers is a usable model.

Sorted LLaMA's recipe (SortedNet Alg. 2 for the stochastic loss) on the shared skeleton
(:mod:`surgeon.commands.recipe`): the exits (``--exits``, default
:func:`~surgeon.exits.default_exits`) are validated against the model; every exit is measured on the
held-out slice before and after (loss, perplexity, KL and top-1 to the full model, by the metrics
engine); training uses the sorted loss (:class:`~surgeon.soft.losses.SortedLoss`: one forward pass,
every exit read through the shared norm and head, cross-entropy in chunks of tokens; with
``--ffn-exits`` one nested FFN width sampled per micro-batch, :class:`~surgeon.soft.width.SortedWidthLoss`);
``--exits L`` alone is plain SFT on the same path. The output's sorted manifest lists the trained
exits with their measured quality; its provenance, the exits and losses.

Memory knobs (besides the recipe's): ``--chunk-tokens`` (rows of full-vocabulary logits alive at
once). Raises UsageError (bad options or exits, out of memory), DataError, CheckpointError, OutputError.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..exits import exit_name, parse_depths
from ..manifest.build import quality_record_fields, quality_records
from ..options import DeviceOptions, OutputOptions, RecipeOptions, opt
from ..progress import Progress
from ..soft.losses import (
    DEFAULT_EXIT_LOSS,
    DEFAULT_EXIT_WEIGHTS,
    EXIT_LOSSES,
    LOSS_MODES,
    WEIGHT_SCHEMES,
    scheme_weights,
)
from .recipe import Recipe

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SoftOptions(RecipeOptions, OutputOptions, DeviceOptions):
    model: Path = opt(help="Checkpoint folder.", cli=False)
    data: str | None = opt(None, "Training data: alpaca, c4, hf:NAME[:CONFIG][@SPLIT], builtin:sotu, or a local file.")
    exits: str | None = opt(None, "Comma-separated layer counts of the sub-models to train (default: every L/8-th "
                                  "layer from L/4 to L). Only L: plain SFT.", metavar="N,N,...")
    loss: str = opt("sum", "sum: mean of every exit's loss each step (eq. 1); stochastic: one sampled exit per "
                           "micro-batch (SortedNet Alg. 2; pair with --grad-accum).", choices=LOSS_MODES)
    ffn_exits: str | None = opt(None, "Also train nested FFN widths: comma-separated fractions of intermediate_size "
                                      "(or counts), e.g. 0.25,0.5,0.75,1.0; the full width is always included. Each "
                                      "micro-batch samples one width (SortedNet Alg. 2). Run sort-width first.")
    exit_weights: str = opt(DEFAULT_EXIT_WEIGHTS,
                            "Per-exit weights: anchor[:S] (the deepest exit a share S, default 0.5, the rest split "
                            "equally), uniform (the paper's eq. 1 mean), depth (LayerSkip's scale, growing with depth), "
                            "or comma-separated numbers (sum: weighted mean; stochastic: sampling weights). The default "
                            "with the default --exit-loss keeps the full model within 0.05 nats of plain SFT at equal "
                            "steps (README: SoFT frontier); the paper's: --exit-weights uniform --exit-loss ce.")
    exit_loss: str | None = opt(None, "kd: exits below the deepest learn the deepest exit's detached distribution "
                                      "(self-distillation, KL), the deepest the labels; ce: every exit learns the "
                                      "labels (the paper's). Default: kd with two or more exits, ce with one.",
                                choices=EXIT_LOSSES)
    curriculum: int = opt(0, "Bring the exits in gradually over this many steps, deepest first (LayerSkip's "
                             "gradual curriculum); 0: every exit from the start.", metavar="STEPS")
    shared_lr_scale: float = opt(1.0, "Learning-rate factor of the shared final norm and LM head (and the tied "
                                      "embedding) against the other trained weights; 1: the same LR.", metavar="F")
    chunk_tokens: int | None = opt(None, "Tokens per chunk of full-vocabulary logits (default: 64 MiB of fp32 logits).")

    def __post_init__(self):
        self.check_output("sorted checkpoint")
        if not self.data:
            raise UsageError("--data is required", "give a data spec, e.g. --data alpaca, --data builtin:sotu or a .jsonl file")
        if self.curriculum < 0:
            raise UsageError(f"--curriculum must be >= 0 (got {self.curriculum})", "0 trains every exit from the start")
        if not self.shared_lr_scale > 0:
            raise UsageError(f"--shared-lr-scale must be positive (got {self.shared_lr_scale})",
                             "e.g. --shared-lr-scale 0.1, or 1 (the default) for one learning rate")
        if self.chunk_tokens is not None and self.chunk_tokens < 1:
            raise UsageError(f"--chunk-tokens must be positive (got {self.chunk_tokens})", "omit it for the default")
        self.weights()
        self.check_recipe()
        self.check_device()

    def weights(self) -> str | tuple[float, ...] | None:
        """``--exit-weights`` as a scheme name or numbers (validated against the exits in ``prepare``)."""
        w = self.exit_weights
        if w is None or w in WEIGHT_SCHEMES or w.startswith("anchor:"):
            if w and w.startswith("anchor:"):
                try:
                    share = float(w.split(":", 1)[1])
                except ValueError:
                    share = -1.0
                if not 0.0 < share <= 1.0:
                    raise UsageError(f"--exit-weights {w}: the anchor share must be a number in (0, 1]",
                                     "e.g. --exit-weights anchor:0.5")
            return w
        try:
            nums = tuple(float(x) for x in w.split(","))
        except ValueError:
            raise UsageError(f"--exit-weights {w!r} is neither a scheme nor a list of numbers",
                             f"use {', '.join(WEIGHT_SCHEMES)}, anchor:S, or one weight per exit, e.g. 1,1,2") from None
        if any(x < 0 for x in nums) or sum(nums) <= 0:
            raise UsageError("--exit-weights must be non-negative and not all zero", "e.g. --exit-weights 1,1,2")
        return nums


@dataclass
class SoftResult:
    """Per-exit held-out quality before and after (on the written weights), and the run."""

    exits: tuple[int, ...]
    num_layers: int
    loss: str
    before: list  # [ExitQuality] (empty with --eval-samples 0)
    after: list
    train: object  # surgeon.train.TrainResult
    output: object | None  # ExecuteResult (None on non-main processes)
    data: str = ""
    eval_tokens: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"exits": list(self.exits), "num_layers": self.num_layers, "loss": self.loss,
                "before": [asdict(q) for q in self.before], "after": [asdict(q) for q in self.after],
                "eval_tokens": self.eval_tokens, "train": self.train.to_dict(),
                "output": self.output.output if self.output else None, "data": self.data, **self.extra}


class SoftRecipe(Recipe):
    operation = "soft"

    def prepare(self, ckpt):
        from ..soft.width import parse_ffn_exits

        opts = self.opts
        self.num_layers = ckpt.num_layers
        self.depths = parse_depths(opts.exits, ckpt.num_layers)
        self.widths = parse_ffn_exits(opts.ffn_exits, ckpt.text_config.get("intermediate_size") or 0)
        weights = opts.weights()
        if isinstance(weights, tuple) and len(weights) != len(self.depths):
            raise UsageError(f"--exit-weights has {len(weights)} values for {len(self.depths)} exits",
                             f"give one weight per exit ({', '.join(map(str, self.depths))})")
        self.exit_weights = scheme_weights(weights, self.depths, ckpt.num_layers)  # normalized, one per exit
        self.exit_loss = opts.exit_loss or (DEFAULT_EXIT_LOSS if len(self.depths) > 1 else "ce")  # kd needs 2 exits
        if opts.exit_loss == "kd" and len(self.depths) < 2:
            raise UsageError("--exit-loss kd needs at least two exits (the deepest is the teacher)",
                             "add shallower exits, e.g. --exits 10,20,30, or drop --exit-loss")

    def measure(self, model, examples, label):
        """Every exit's quality, then (with ``--ffn-exits``) every (depth, narrower width) pair's loss."""
        from ..eval import measure_exits
        from ..exits import ExitSpec

        opts = self.opts
        quality, tokens = measure_exits(model, examples, self.depths, batch_size=opts.eval_batch_size,
                                        chunk_tokens=opts.chunk_tokens,
                                        progress=lambda d, t, _: self.report(d, t, f"evaluating ({label})"))
        widths = {}
        narrow = self.widths[:-1]  # KL / top-1 only make sense against the full model
        if narrow:
            specs = [ExitSpec(None, list(range(d)), {"ffn": k}) for k in narrow for d in self.depths]
            q, _ = measure_exits(model, examples, specs, batch_size=opts.eval_batch_size, kl=False,
                                 chunk_tokens=opts.chunk_tokens,
                                 progress=lambda d, t, _: self.report(d, t, f"evaluating ({label}, narrower FFN)"))
            n = len(self.depths)
            widths = {k: q[i * n:(i + 1) * n] for i, k in enumerate(narrow)}
        return {"quality": quality, "tokens": tokens, "widths": widths}

    def loss_fn(self, device):
        from ..soft.losses import SortedLoss
        from ..soft.width import SortedWidthLoss

        opts = self.opts
        loss_fn = SortedLoss(self.depths, opts.loss, self.exit_weights, opts.seed, opts.chunk_tokens,
                             exit_loss=self.exit_loss, curriculum=opts.curriculum, num_layers=self.num_layers)
        if len(self.widths) > 1:
            loss_fn = SortedWidthLoss(loss_fn, self.widths, self.family, opts.seed)
        return loss_fn

    def lr_scales(self, model):
        """``--shared-lr-scale``: the trained parameters of the final norm and LM head (the embedding too
        when tied) at that factor."""
        if self.opts.shared_lr_scale == 1.0:
            return None
        from ..eval.capture import exit_modules

        mods = exit_modules(model)
        shared = [p for m in (mods.norm, mods.head) for p in m.parameters() if p.requires_grad]
        if not shared:
            log.warning("--shared-lr-scale: the final norm and LM head are not trained with this --method")
        return {p: self.opts.shared_lr_scale for p in shared}

    def provenance(self, run):
        opts = self.opts
        before, after = run.before or _EMPTY, run.after or _EMPTY
        losses = lambda qs: {q.exit: q.loss for q in qs}  # noqa: E731
        return {
            "exits": list(self.depths),
            "ffn_exits": list(self.widths) or None,
            "soft": {
                "loss": opts.loss, "exit_loss": self.exit_loss, "curriculum": opts.curriculum,
                "shared_lr_scale": opts.shared_lr_scale,
                "exit_weights": {"scheme": opts.exit_weights, "normalized": [round(w, 6) for w in self.exit_weights]},
                "data": run.data, "steps": run.train.steps, "train_tokens": run.train.tokens,
                "seconds": round(run.train.seconds, 2), "final_train_loss": run.train.losses[-1],
                "processes": run.processes,
                "heldout": {"tokens": after["tokens"], "seq_len": opts.seq_len,
                            "before": losses(before["quality"]), "after": losses(after["quality"]),
                            "ffn": {str(k): {"before": losses(before["widths"].get(k, [])),
                                             "after": losses(after["widths"].get(k, []))}
                                    for k in self.widths[:-1]} or None},
            },
        }

    def exits(self, run):
        """The trained exits with their measured held-out quality (the records ``surgeon manifest``
        writes), then the trained (depth, narrower FFN width) sub-models."""
        from ..devices import compute_dtype

        after = run.after or _EMPTY
        L = self.num_layers
        common = quality_record_fields(data=self.opts.eval_data or self.opts.data, tokens=after["tokens"],
                                       seq_len=self.opts.seq_len, dtype=compute_dtype(self.device),
                                       samples=run.eval_examples)
        by_exit = {q.exit: q for q in after["quality"]}
        reference = exit_name(L) if L in self.depths else None
        out = []
        for n in self.depths:
            e = {"name": exit_name(n), "layers": list(range(n))}
            if n in by_exit:
                e["quality"] = quality_records(by_exit[n], common, reference)
            out.append(e)
        for k in self.widths[:-1]:
            narrow = {q.exit: q for q in after["widths"].get(k, [])}
            for n in self.depths:
                e = {"name": f"{exit_name(n)}-ffn{k}", "layers": list(range(n)), "widths": {"ffn": k}}
                if n in narrow:
                    e["quality"] = quality_records(narrow[n], common, None)
                out.append(e)
        return out


_EMPTY = {"quality": [], "tokens": 0, "widths": {}}


def run(opts: SoftOptions, progress: Progress | None = None) -> SoftResult:
    """Sorted fine-tune ``opts.model`` and write the merged checkpoint to ``opts.output`` (module doc)."""
    recipe = SoftRecipe(opts, progress)
    r = recipe.run()
    before, after = r.before or _EMPTY, r.after or _EMPTY
    widths = recipe.widths
    extra = {"ffn_exits": list(widths), "width": {str(k): {"before": [asdict(q) for q in before["widths"].get(k, [])],
                                                          "after": [asdict(q) for q in after["widths"].get(k, [])]}
                                                 for k in widths[:-1]}} if widths else {}
    return SoftResult(recipe.depths, recipe.num_layers, opts.loss, before["quality"], after["quality"], r.train,
                      r.output, r.data, after["tokens"], extra)
