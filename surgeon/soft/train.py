"""``surgeon soft``: Sorted Fine-Tuning, so every chosen prefix of layers is a usable model.

The recipe (Sorted LLaMA; SortedNet Alg. 2 for the stochastic loss), top to bottom:

1. validate the exits against the model (``--exits``, default :func:`~.exits.default_exits`),
   check the output can be written (before any training), read the tokenizer and the data:
   ``seq_len`` blocks of text (loss on every token) or Alpaca-template instruction examples
   (loss on the response only), ``role="train"`` (never the held-out slice);
2. measure every exit on the held-out slice (``before``: loss, perplexity, KL to the full model);
3. load the model trainable (:func:`surgeon.train.load_trainable`: full, LoRA or QLoRA) and train
   it with the shared loop (:func:`surgeon.train.train`) and the sorted loss
   (:class:`~.losses.SortedLoss`: one forward pass, every exit read through the shared norm and
   head, cross-entropy in chunks of tokens); ``--exits L`` alone is plain SFT on the same path;
4. measure every exit again on the exact weights the output holds (``after``);
5. stream the merged checkpoint out through :func:`surgeon.surgery.execute` (LoRA deltas added to
   the original float weights by :func:`surgeon.merge.merge_transforms`), with the exits and their
   measured quality in its sorted manifest, and the exits and losses in its provenance.

Memory knobs: ``--batch-size``, ``--seq-len``, ``--grad-accum``, ``--gradient-checkpointing``,
``--quant nf4``, ``--chunk-tokens`` (rows of full-vocabulary logits alive at once). Raises
UsageError (bad options or exits, out of memory), DataError, CheckpointError, OutputError.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..options import opt
from ..train.config import METHODS, QUANTS, RecipeOptions
from ..units import parse_size
from ..width.masking import width_mask
from .exits import exit_name, manifest_exits, parse_exits
from .losses import LOSS_MODES
from .width import SortedWidthLoss, parse_ffn_exits

log = logging.getLogger(__name__)

# progress(done, total, label): label starts with the phase ("evaluating", "training", "writing").
SoftProgress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class SoftOptions(RecipeOptions):
    model: Path = opt(help="Checkpoint folder.", cli=False)
    output: Path | None = opt(None, "Output checkpoint folder.", flags=("-o", "--output"))
    data: str | None = opt(None, "Training data: alpaca, c4, hf:NAME[:CONFIG][@SPLIT], builtin:sotu, or a local file.")
    exits: str | None = opt(None, "Comma-separated layer counts of the sub-models to train (default: every L/8-th "
                                  "layer from L/4 to L). Only L: plain SFT.", metavar="N,N,...")
    loss: str = opt("sum", "sum: mean of every exit's loss each step (eq. 1); stochastic: one sampled exit per "
                           "micro-batch (SortedNet Alg. 2; pair with --grad-accum).", choices=LOSS_MODES)
    ffn_exits: str | None = opt(None, "Also train nested FFN widths: comma-separated fractions of intermediate_size "
                                      "(or counts), e.g. 0.25,0.5,0.75,1.0; the full width is always included. Each "
                                      "micro-batch samples one width (SortedNet Alg. 2). Run sort-width first.")
    exit_weights: str | None = opt(None, "Comma-separated per-exit weights (sum: weighted mean; stochastic: "
                                         "sampling weights). Default: uniform.")
    method: str = opt("lora", "lora: adapters on a frozen base; full: train every weight.", choices=METHODS)
    quant: str = opt("nf4", "nf4: 4-bit NF4 frozen base (QLoRA); none: float base.", choices=QUANTS)
    rank: int = opt(8, "LoRA rank.")
    alpha: float | None = opt(None, "LoRA alpha (default: the rank).")
    dropout: float = opt(0.05, "LoRA dropout.")
    target_modules: str | None = opt(None, "Comma-separated LoRA target module names (default: the family's FFN projections).")
    steps: int = opt(1000, "Optimizer steps.")
    lr: float = opt(3e-4, "Peak learning rate (Sorted LLaMA fully fine-tuned with 2e-5).")
    warmup: int = opt(100, "Warm-up steps (capped at 10% of --steps), then cosine decay.")
    batch_size: int = opt(4, "Sequences per micro-batch and process.")
    grad_accum: int = opt(1, "Micro-batches per optimizer step.")
    seq_len: int = opt(1024, "Tokens per training and evaluation sequence.")
    seed: int = opt(0, "Seed for the data order, LoRA initialization, dropout and exit sampling.")
    eval_samples: int = opt(32, "Held-out sequences measured per exit before and after (0: skip).")
    eval_batch_size: int = opt(4, "Sequences per evaluation batch.")
    chunk_tokens: int | None = opt(None, "Tokens per chunk of full-vocabulary logits (default: 64 MiB of fp32 logits).")
    save_every: int = opt(100, "Write a resumable checkpoint every N steps (0: never).")
    checkpoint_dir: Path | None = opt(None, "Checkpoint folder (default: OUT.checkpoints, removed after success).")
    resume: bool = opt(False, "Continue an interrupted run from its last checkpoint (same options and data).")
    gradient_checkpointing: bool = opt(False, "Recompute activations in backward (less memory, slower).")
    dtype: str | None = opt(None, "Output dtype for floating weights (default: the source's).", choices=("bf16", "fp16", "fp32"))
    max_shard_size: str = opt("5GB", "Largest output shard.")
    force: bool = opt(False, "Replace a non-empty output folder.")

    def __post_init__(self):
        if self.output is None:
            raise UsageError("-o/--output is required", "give an output folder for the sorted checkpoint")
        if not self.data:
            raise UsageError("--data is required", "give a data spec, e.g. --data alpaca, --data builtin:sotu or a .jsonl file")
        if self.seq_len < 2:
            raise UsageError(f"--seq-len must be at least 2 (got {self.seq_len})", "use e.g. --seq-len 1024")
        if self.eval_samples < 0 or self.eval_batch_size < 1:
            raise UsageError("--eval-samples must be >= 0 and --eval-batch-size >= 1", "use e.g. --eval-samples 32")
        if self.chunk_tokens is not None and self.chunk_tokens < 1:
            raise UsageError(f"--chunk-tokens must be positive (got {self.chunk_tokens})", "omit it for the default")
        parse_size(self.max_shard_size, "--max-shard-size")
        self.weights()
        self.model_setup()
        self.train_config()

    def weights(self) -> tuple[float, ...] | None:
        if self.exit_weights is None:
            return None
        try:
            w = tuple(float(x) for x in self.exit_weights.split(","))
        except ValueError:
            raise UsageError(f"--exit-weights {self.exit_weights!r} is not a list of numbers",
                             "give one weight per exit, e.g. --exit-weights 1,1,2") from None
        if any(x < 0 for x in w) or sum(w) <= 0:
            raise UsageError("--exit-weights must be non-negative and not all zero", "e.g. --exit-weights 1,1,2")
        return w


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


def _manifest_exits(exits, L: int, after: list, quality_common: dict) -> list[dict]:
    """The trained exits for the sorted manifest, with their measured held-out quality
    (the same metrics as ``surgeon manifest`` records: loss, perplexity, KL and top-1 to the full model)."""
    out = manifest_exits(exits)
    by_exit = {q.exit: q for q in after}
    full = exit_name(L)
    for e, n in zip(out, exits):
        q = by_exit.get(n)
        if q is None:
            continue
        rec = [dict(quality_common, metric="loss", value=round(q.loss, 6)),
               dict(quality_common, metric="perplexity", value=round(q.perplexity, 6))]
        if L in exits and q.kl_full_exit is not None:
            rec += [dict(quality_common, metric="kl_full_exit", value=round(max(q.kl_full_exit, 0.0), 6), reference=full),
                    dict(quality_common, metric="top1_agreement", value=round(q.top1_agreement, 6), reference=full)]
        e["quality"] = rec
    return out


def _width_exits(exits, widths, after_w: dict, quality_common: dict) -> list[dict]:
    """The trained (depth, narrower FFN width) sub-models as manifest exits, with their held-out loss."""
    out = []
    for k in widths[:-1]:
        by_exit = {q.exit: q for q in after_w.get(k, [])}
        for n in exits:
            e = {"name": f"{exit_name(n)}-ffn{k}", "layers": list(range(n)), "widths": {"ffn": k}}
            q = by_exit.get(n)
            if q is not None:
                e["quality"] = [dict(quality_common, metric="loss", value=round(q.loss, 6)),
                                dict(quality_common, metric="perplexity", value=round(q.perplexity, 6))]
            out.append(e)
    return out


def _write(model, opts: SoftOptions, manifest: list[dict], provenance: dict, report: SoftProgress):
    """Merge the training into the source's weights and stream the output, exits in its manifest."""
    from ..io.checkpoint import Checkpoint
    from ..merge import merge_transforms
    from ..surgery.execute import execute
    from ..surgery.plan import plan_layers

    ckpt = Checkpoint.open(opts.model)
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}
    plan = plan_layers(ckpt, list(range(ckpt.num_layers)), "soft", opts.dtype, options)
    return execute(plan, opts.output, force=opts.force, max_shard_bytes=parse_size(opts.max_shard_size),
                   transforms=merge_transforms(model, ckpt), extra_provenance=provenance,
                   progress=lambda d, t, n: report(d, t, "writing"), manifest_exits=manifest)


def soft(opts: SoftOptions, progress: SoftProgress | None = None) -> SoftResult:
    """Sorted fine-tune ``opts.model`` and write the merged checkpoint to ``opts.output`` (module doc)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..data import parse_data_spec, training_examples
    from ..io.atomic import check_output
    from ..merge import apply_in_memory
    from ..train import load_trainable, seed_everything, train
    from ..train.model import _compute_dtype, checkpoint_family, distributed_state
    from .evaluate import exit_quality
    from .losses import SortedLoss

    state = distributed_state()  # joins multi-process CPU launches as gloo DDP, like heal
    main = state.is_main_process
    report = progress or (lambda done, total, label: None)
    family = checkpoint_family(opts.model)
    from ..io.checkpoint import Checkpoint

    ckpt = Checkpoint.open(opts.model)
    L = ckpt.num_layers
    exits = parse_exits(opts.exits, L)
    widths = parse_ffn_exits(opts.ffn_exits, ckpt.text_config.get("intermediate_size") or 0)
    weights = opts.weights()
    if weights is not None and len(weights) != len(exits):
        raise UsageError(f"--exit-weights has {len(weights)} values for {len(exits)} exits",
                         f"give one weight per exit ({', '.join(map(str, exits))})")
    setup, cfg = opts.model_setup(), opts.train_config()
    check_output(Path(opts.output), Path(opts.model), opts.force)
    tok = AutoTokenizer.from_pretrained(str(opts.model))

    # -- data
    data = parse_data_spec(opts.data)
    needed = cfg.steps * cfg.batch_size * cfg.grad_accum * state.num_processes
    train_ex = list(training_examples(data, tok, seq_len=opts.seq_len, role="train", seed=opts.seed,
                                      shuffle=True, max_examples=needed))
    eval_ex = list(training_examples(data, tok, seq_len=opts.seq_len, role="eval",
                                     max_examples=opts.eval_samples)) if opts.eval_samples and main else []

    def measure(model, label):
        if not eval_ex:
            return [], 0
        return exit_quality(model, eval_ex, exits, batch_size=opts.eval_batch_size, chunk_tokens=opts.chunk_tokens,
                            progress=lambda d, t, _: report(d, t, f"evaluating ({label})"))

    def measure_widths(model, label) -> dict[int, list]:
        """Loss of every (depth, narrower width) pair; KL/top-1 only make sense against the full model."""
        out = {}
        for k in widths[:-1] if eval_ex else ():
            with width_mask(model, ffn=k, family=family):
                out[k], _ = exit_quality(model, eval_ex, exits, batch_size=opts.eval_batch_size, kl=False,
                                         chunk_tokens=opts.chunk_tokens,
                                         progress=lambda d, t, _, k=k: report(d, t, f"evaluating ({label}, ffn {k})"))
        return out

    eval_dtype = _compute_dtype(state.device, None)

    def float_model():
        return AutoModelForCausalLM.from_pretrained(str(opts.model), dtype=eval_dtype,
                                                    use_safetensors=True).to(state.device).eval()

    before: list = []
    before_w: dict = {}
    if eval_ex:
        m = float_model()
        before, _ = measure(m, "before")
        before_w = measure_widths(m, "before")
        del m

    # -- train
    seed_everything(opts.seed)
    model = load_trainable(opts.model, setup, family, device=state.device)
    loss_fn = SortedLoss(exits, opts.loss, weights, opts.seed, opts.chunk_tokens)
    if len(widths) > 1:
        loss_fn = SortedWidthLoss(loss_fn, widths, family, opts.seed)
    ckdir = Path(opts.checkpoint_dir) if opts.checkpoint_dir else Path(str(opts.output) + ".checkpoints")

    def on_step(info):
        report(info.step, info.steps, f"training  loss {info.loss:.3f}  {info.tokens_per_s:,.0f} tok/s")

    result = train(model, train_ex, cfg, loss_fn=loss_fn, checkpoint_dir=ckdir if cfg.save_every else None,
                   resume=opts.resume, progress=on_step)

    # -- after (on the exact output weights), write (main process only)
    after: list = []
    after_w: dict = {}
    tokens = 0
    out = None
    if main:
        if eval_ex:
            m = float_model()
            apply_in_memory(m, model)
            after, tokens = measure(m, "after")
            after_w = measure_widths(m, "after")
            del m
        provenance = {
            "exits": list(exits),
            "ffn_exits": list(widths) or None,
            "soft": {
                "loss": opts.loss, "exit_weights": list(weights) if weights else None, "data": data.describe(),
                "steps": result.steps, "train_tokens": result.tokens, "seconds": round(result.seconds, 2),
                "final_train_loss": result.losses[-1], "processes": state.num_processes,
                "heldout": {"tokens": tokens, "seq_len": opts.seq_len,
                            "before": {q.exit: q.loss for q in before}, "after": {q.exit: q.loss for q in after},
                            "ffn": {str(k): {"before": {q.exit: q.loss for q in before_w.get(k, [])},
                                             "after": {q.exit: q.loss for q in after_w.get(k, [])}}
                                    for k in widths[:-1]} or None},
            },
        }
        common = {"data": opts.data, "split": "eval", "tokens": max(tokens, 1), "seq_len": opts.seq_len,
                  "dtype": str(eval_dtype).replace("torch.", ""), "samples": len(eval_ex)}
        manifest = _manifest_exits(exits, L, after, common) + _width_exits(exits, widths, after_w, common)
        out = _write(model, opts, manifest, provenance, report)
        if not opts.checkpoint_dir:
            shutil.rmtree(ckdir, ignore_errors=True)
    state.wait_for_everyone()
    extra = {"ffn_exits": list(widths), "width": {str(k): {"before": [asdict(q) for q in before_w.get(k, [])],
                                                              "after": [asdict(q) for q in after_w.get(k, [])]}
                                                  for k in widths[:-1]}} if widths else {}
    return SoftResult(exits, L, opts.loss, before, after, result, out, data.describe(), tokens, extra)
