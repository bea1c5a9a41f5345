"""``surgeon heal``: QLoRA (or LoRA / full) healing of a pruned model, merged into a plain checkpoint.

The recipe (the pruning paper, App. A.1 / B.3), top to bottom:

1. check the output can be written (before any training), read the tokenizer and the data:
   training blocks of ``seq_len`` tokens from ``--data`` (``role="train"``: never the held-out slice
   or the validation split), held-out blocks from ``--eval-data`` (default: the same spec's eval
   role);
2. evaluate the float model on the held-out blocks (``before``);
3. load it trainable (:func:`surgeon.train.load_trainable`: NF4 base + LoRA on the FFN, rank 8,
   alpha = rank, dropout 0.05 by default) and train (:func:`surgeon.train.train`: AdamW, warm-up
   capped at 10% + cosine, optional ``--distill`` loss against the unpruned teacher);
4. evaluate the trained model as it trained (``trained``, with the 4-bit base under NF4), then
   the exact weights the output will hold, i.e. the LoRA delta added to the original float
   weights (``after``);
5. stream the merged checkpoint out (:func:`surgeon.merge.save_merged`), both losses in its
   provenance; ``--save-adapter`` also writes the peft adapter to ``OUT/adapter``.

Memory knobs: ``--batch-size``, ``--seq-len``, ``--grad-accum`` (effective batch = batch x
accum x processes), ``--gradient-checkpointing``, ``--quant nf4``. Raises UsageError (bad
options, out of memory), DataError (data that cannot fill a batch), CheckpointError, OutputError.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UsageError
from .evaluate import LossResult
from .options import opt
from .train.config import RecipeOptions
from .train.distill import MODES as DISTILL_MODES
from .units import parse_size

log = logging.getLogger(__name__)

# progress(done, total, label): label starts with the phase ("evaluating", "training", "writing").
HealProgress = Callable[[int, int, str], None]


@dataclass(frozen=True, kw_only=True)
class HealSettings(RecipeOptions):
    """The healing knobs, shared by ``surgeon heal`` and ``surgeon prune --heal``."""

    eval_data: str | None = opt(None, "Held-out data spec (default: the held-out slice / validation split of the training data).")
    method: str = opt("lora", "lora: adapters on a frozen base; full: train every weight.", choices=("lora", "full"))
    quant: str = opt("nf4", "nf4: 4-bit NF4 frozen base (QLoRA); none: float base.", choices=("nf4", "none"))
    rank: int = opt(8, "LoRA rank (the paper used 2-64; low ranks generalize better).")
    alpha: float | None = opt(None, "LoRA alpha (default: the rank, as in the paper).")
    dropout: float = opt(0.05, "LoRA dropout.")
    target_modules: str | None = opt(None, "Comma-separated LoRA target module names (default: the family's FFN projections).")
    steps: int = opt(1000, "Optimizer steps (the paper: 5000 x 16 sequences).")
    lr: float = opt(3e-4, "Peak learning rate.")
    warmup: int = opt(100, "Warm-up steps (capped at 10% of --steps), then cosine decay.")
    batch_size: int = opt(4, "Sequences per micro-batch and process.")
    grad_accum: int = opt(1, "Micro-batches per optimizer step.")
    seq_len: int = opt(1024, "Tokens per training and evaluation sequence (the paper: 2048).")
    seed: int = opt(0, "Seed for the data order, LoRA initialization and dropout.")
    eval_samples: int = opt(64, "Held-out sequences evaluated before and after.")
    eval_batch_size: int = opt(8, "Sequences per evaluation batch.")
    save_every: int = opt(100, "Write a resumable checkpoint every N steps (0: never).")
    checkpoint_dir: Path | None = opt(None, "Checkpoint folder (default: OUT.checkpoints, removed after success).")
    resume: bool = opt(False, "Continue an interrupted run from its last checkpoint (same options and data).")
    distill: str = opt("none", "Auxiliary loss against the unpruned teacher: KL on logits, or the residual stream at the cut.",
                       choices=DISTILL_MODES)
    distill_weight: float = opt(1.0, "Weight of the distillation term.")
    teacher: Path | None = opt(None, "Unpruned teacher for --distill (default: the source recorded in MODEL's provenance).")
    gradient_checkpointing: bool = opt(False, "Recompute activations in backward (less memory, ~30% slower).")
    save_adapter: bool = opt(False, "Also write the peft adapter to OUT/adapter.")

    def __post_init__(self):
        self.model_setup()
        self.train_config()
        if self.seq_len < 2:
            raise UsageError(f"--seq-len must be at least 2 (got {self.seq_len})", "use e.g. --seq-len 1024")
        if self.eval_samples < 1 or self.eval_batch_size < 1:
            raise UsageError("--eval-samples and --eval-batch-size must be at least 1", "use e.g. --eval-samples 64")
        if self.distill_weight < 0:
            raise UsageError(f"--distill-weight must be >= 0 (got {self.distill_weight})", "use e.g. 1.0")
        if self.save_adapter and self.method != "lora":
            raise UsageError("--save-adapter needs --method lora", "drop --save-adapter, or train LoRA")


@dataclass(frozen=True, kw_only=True)
class HealOptions(HealSettings):
    model: Path = opt(help="Checkpoint folder to heal.", cli=False)
    output: Path | None = opt(None, "Output checkpoint folder.", flags=("-o", "--output"))
    data: str | None = opt(None, "Training data spec: c4, alpaca, hf:NAME[:CONFIG][@SPLIT], builtin:sotu, or a local file.")
    dtype: str | None = opt(None, "Output dtype for floating weights (default: the source's).", choices=("bf16", "fp16", "fp32"))
    max_shard_size: str = opt("5GB", "Largest output shard.")
    force: bool = opt(False, "Replace a non-empty output folder.")

    def __post_init__(self):
        if self.output is None:
            raise UsageError("-o/--output is required", "give an output folder for the healed checkpoint")
        if not self.data:
            raise UsageError("--data is required", "give a data spec, e.g. --data c4 or --data builtin:sotu or a .txt file")
        parse_size(self.max_shard_size, "--max-shard-size")
        super().__post_init__()


@dataclass
class HealResult:
    """Held-out losses (nats/token) before, of the model as trained, and of the written output."""

    before: LossResult
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
        return None if self.after is None else self.before.loss - self.after.loss

    def to_dict(self) -> dict:
        return {
            "before": self.before.to_dict(), "trained": self.trained.to_dict() if self.trained else None,
            "after": self.after.to_dict() if self.after else None, "improvement": self.improvement,
            "train": self.train.to_dict(), "output": self.output.output if self.output else None,
            "adapter": self.adapter, "data": self.data, "eval_data": self.eval_data, **self.extra,
        }


def _float_model(path, device):
    from transformers import AutoModelForCausalLM

    from .train.model import _compute_dtype

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=_compute_dtype(device, None), use_safetensors=True)
    return model.to(device).eval()


def _teacher_and_cut(opts: HealOptions) -> tuple[Path, tuple[int, int] | None]:
    """The teacher folder and the cut ``(start, n)`` from MODEL's provenance (or --teacher)."""
    from .provenance import read_chain

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


def _examples(spec: str, tok, seq_len: int, role: str, limit: int, seed: int, shuffle: bool) -> list[dict]:
    from .data import training_examples

    return list(training_examples(spec, tok, seq_len=seq_len, role=role, seed=seed, shuffle=shuffle, max_examples=limit))


def heal(opts: HealOptions, progress: HealProgress | None = None) -> HealResult:
    """Heal ``opts.model`` and write the merged checkpoint to ``opts.output`` (see module doc)."""
    from transformers import AutoTokenizer

    from .data import parse_data_spec
    from .evaluate import heldout_loss
    from .io.atomic import check_output
    from .merge import apply_in_memory, save_adapter, save_merged
    from .train import load_trainable, seed_everything, train
    from .train.model import checkpoint_family, distributed_state

    state = distributed_state()
    main = state.is_main_process
    family = checkpoint_family(opts.model)
    setup, cfg = opts.model_setup(), opts.train_config()
    check_output(Path(opts.output), Path(opts.model), opts.force)
    tok = AutoTokenizer.from_pretrained(str(opts.model))
    report = progress or (lambda done, total, label: None)

    # -- data
    data = parse_data_spec(opts.data)
    needed = cfg.steps * cfg.batch_size * cfg.grad_accum * state.num_processes
    train_ex = _examples(opts.data, tok, opts.seq_len, "train", needed, opts.seed, shuffle=True)
    eval_spec = opts.eval_data or opts.data
    eval_role = "eval" if parse_data_spec(eval_spec).spec == data.spec else "all"
    eval_ex = _examples(eval_spec, tok, opts.seq_len, eval_role, opts.eval_samples, 0, shuffle=False)
    eval_desc = f"{parse_data_spec(eval_spec).describe()} role={eval_role}, {len(eval_ex)} x {opts.seq_len} tokens"

    def evaluate(model, label):
        return heldout_loss(model, eval_ex, opts.eval_batch_size,
                            progress=lambda d, t, _: report(d, t, f"evaluating ({label})"))

    # -- before
    before = None
    if main:
        m = _float_model(opts.model, state.device)
        before = evaluate(m, "before")
        del m
    log.info("held-out loss before healing: %s", before.loss if before else None)

    # -- train
    seed_everything(opts.seed)
    model = load_trainable(opts.model, setup, family, device=state.device)
    loss_fn, distill_info = None, {}
    if opts.distill != "none":
        from .train.distill import distill_loss

        teacher_path, cut = _teacher_and_cut(opts)
        teacher = _float_model(teacher_path, state.device) if opts.quant == "none" else _quantized(teacher_path, state.device)
        loss_fn = distill_loss(teacher, opts.distill, opts.distill_weight, cut)
        distill_info = {"mode": opts.distill, "weight": opts.distill_weight, "teacher": str(teacher_path),
                        "cut": list(cut) if cut else None}
    ckdir = Path(opts.checkpoint_dir) if opts.checkpoint_dir else Path(str(opts.output) + ".checkpoints")

    def on_step(info):
        report(info.step, info.steps, f"training  loss {info.loss:.3f}  {info.tokens_per_s:,.0f} tok/s")

    result = train(model, train_ex, cfg, loss_fn=loss_fn, checkpoint_dir=ckdir if cfg.save_every else None,
                   resume=opts.resume, progress=on_step)
    if opts.distill != "none":
        del teacher, loss_fn

    # -- after, merge, write (main process only)
    trained = after = out = adapter = None
    if main:
        trained = evaluate(model, "as trained")
        m = _float_model(opts.model, state.device)
        apply_in_memory(m, model)
        after = evaluate(m, "merged")
        del m
        provenance = {
            "heal": {
                "data": data.describe(), "eval_data": eval_desc, "loss_before": before.loss,
                "loss_trained": trained.loss, "loss_after": after.loss,
                "train_tokens": result.tokens, "steps": result.steps, "seconds": round(result.seconds, 2),
                "final_train_loss": result.losses[-1], "distill": distill_info or None,
                "processes": state.num_processes,
            }
        }
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}
        out = save_merged(model, opts.model, opts.output, dtype=opts.dtype, force=opts.force,
                          max_shard_bytes=parse_size(opts.max_shard_size), options=options,
                          extra_provenance=provenance, progress=lambda d, t, n: report(d, t, "writing"))
        if opts.save_adapter:
            adapter = str(save_adapter(model, Path(opts.output) / "adapter"))
        if not opts.checkpoint_dir:
            shutil.rmtree(ckdir, ignore_errors=True)
    state.wait_for_everyone()
    return HealResult(before, trained, after, result, out, adapter, data.describe(), eval_desc,
                      {"distill": distill_info or None})


def _quantized(path, device):
    """A frozen NF4 teacher (same quantization as the student's base)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from .train.model import _compute_dtype

    dtype = _compute_dtype(device, None)
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(str(path), quantization_config=q, dtype=dtype,
                                                 device_map={"": device}, use_safetensors=True)
    return model.eval().requires_grad_(False)


def prune_and_heal(prune_opts, settings: HealSettings, progress: HealProgress | None = None):
    """``surgeon prune ... --heal SPEC``: prune into a temp folder beside the output, heal it into
    the output, remove the temp folder. The output's provenance holds both operations; the
    unpruned model is the default ``--distill`` teacher. Returns ``(PruneResult, HealResult)``."""
    import dataclasses
    import os

    from .io.atomic import TMP_TAG, check_output
    from .prune import prune

    if prune_opts.output is None or not prune_opts.heal:
        raise UsageError("prune --heal needs -o/--output and a data spec", "e.g. --heal builtin:sotu -o pruned/")
    out = Path(prune_opts.output)
    check_output(out, Path(prune_opts.model), prune_opts.force)
    tmp = out.parent / f".{out.name}{TMP_TAG}{os.getpid()}-prune"  # cleaned up by atomic_output if we die
    report = progress or (lambda done, total, label: None)
    try:
        pruned = prune(dataclasses.replace(prune_opts, output=tmp, force=True),
                       progress=lambda d, t, _n: report(d, t, "pruning"))
        fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(HealSettings)}
        if fields["teacher"] is None and fields["distill"] != "none":
            fields["teacher"] = Path(prune_opts.model)
        opts = HealOptions(model=tmp, output=out, data=prune_opts.heal, dtype=prune_opts.dtype,
                           max_shard_size=prune_opts.max_shard_size, force=prune_opts.force, **fields)
        healed = heal(opts, progress)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return pruned, healed
