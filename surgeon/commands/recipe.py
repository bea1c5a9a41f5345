"""The training recipe skeleton ``heal`` and ``soft`` share, top to bottom:

1. **check**: the options against the model (a recipe's :meth:`Recipe.prepare`), the output can be
   written (before any training), read the tokenizer;
2. **budget the examples**: exactly ``steps x batch x grad_accum x processes`` training examples
   from ``--data`` (``role="train"``: never the held-out slice or the validation split) and
   ``--eval-samples`` held-out ones (``--eval-data``, default: the same data's held-out role);
3. **evaluate before** on the source, layer-streamed (:class:`surgeon.eval.streamed.StreamedModel`; main process);
4. **train** (:func:`surgeon.train.load_trainable` + :func:`surgeon.train.train` with the recipe's
   ``loss_fn``; resumable checkpoints in ``OUT.checkpoints``); with ``--fsdp`` the model is sharded
   over the launched processes first (:mod:`surgeon.train.fsdp`) and its trainable parameters are
   gathered, one at a time, to the main process afterwards;
5. **evaluate after** on the exact weights the output will hold, layer-streamed (each layer's LoRA
   deltas added to the original float weights as it is read, or the fully trained weights, cast to the
   output dtype; the LM head one vocabulary slice at a time): no float copy of the model is ever held
   beside the trained one, whose frozen weights (NF4 base, embedding, head) are released first
   (:func:`surgeon.train.model.release_frozen`: the merge reads them from the source);
6. **write** the merged checkpoint through the one output path (the training merged in as
   :func:`surgeon.train.merge.merge_transforms`; the recipe's exits in its sorted manifest, its
   results in the provenance), then **clean up** the checkpoints.

A recipe subclass says what "evaluate" means (:meth:`Recipe.measure`), which loss it trains with
(:meth:`Recipe.loss_fn`) and what it records (:meth:`Recipe.provenance`, :meth:`Recipe.exits`).
Memory knobs: ``--batch-size``, ``--seq-len``, ``--grad-accum`` (effective batch = batch x accum x
processes), ``--gradient-checkpointing``, ``--quant nf4``.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..options import as_record
from ..progress import Progress, no_progress

log = logging.getLogger(__name__)


@dataclass
class RecipeRun:
    """What the skeleton measured and wrote (``before``/``after``: whatever :meth:`Recipe.measure` returns)."""

    before: Any
    after: Any
    train: Any  # surgeon.train.TrainResult
    output: Any  # surgeon.surgery.execute.ExecuteResult (None on non-main processes)
    data: str
    eval_data: str
    eval_examples: int
    main: bool
    processes: int


class Recipe:
    """The linear recipe of the module doc; subclasses fill in the hooks."""

    operation = "train"

    def __init__(self, opts, progress: Progress | None = None):
        self.opts = opts
        self.report = progress or no_progress
        self.gathered = None  # with --fsdp: the trained parameters in full (main process)

    # -- hooks ------------------------------------------------------------------------------------
    def prepare(self, ckpt) -> None:
        """Validate the options against the checkpoint (headers only) before anything is loaded."""

    def measure(self, model, examples: list[dict], label: str) -> Any:
        """Evaluate a loaded model on the held-out examples (before, and on the output's weights)."""
        raise NotImplementedError

    def loss_fn(self, device):
        """The ``loss_fn`` for :func:`surgeon.train.train` (None: the model's own causal-LM loss)."""
        return None

    def lr_scales(self, model) -> dict | None:
        """{parameter: learning-rate factor} for parameters that learn at another rate (None: all at 1x)."""
        return None

    def after_training(self, model, examples: list[dict]) -> None:
        """Main process, after training and before the output is measured (e.g. the as-trained loss)."""

    def provenance(self, run: RecipeRun) -> dict:
        return {}

    def exits(self, run: RecipeRun) -> list[dict] | None:
        """The output's manifest exits (None: the full model only)."""
        return None

    def after_write(self, model) -> None:
        """Main process, once the output is in place (e.g. ``--save-adapter``)."""

    # -- the skeleton -----------------------------------------------------------------------------
    def run(self) -> RecipeRun:
        from ..data import parse_data_spec, training_examples
        from ..devices import resolve_device
        from ..io.atomic import check_output
        from ..io.checkpoint import Checkpoint
        from ..tokenizer import load_tokenizer
        from ..train import load_trainable, seed_everything, train
        from ..train.model import checkpoint_family, distributed_state, release_frozen
        from ..train.strategy import strategy_for
        from .output import save_merged

        opts, report = self.opts, self.report
        wanted = resolve_device(opts.device)  # a device the machine lacks fails here, before anything loads
        # joins multi-process launches (DDP; gloo on CPU; gloo beside NCCL for FSDP's CPU-offloaded shards)
        state = distributed_state(cpu=wanted.type == "cpu", cpu_collectives=opts.fsdp_offload)
        # one process: the device asked for; several: each rank's own accelerator (or the CPU)
        device = wanted if state.num_processes == 1 else state.device
        main = state.is_main_process
        ckpt = Checkpoint.open(opts.model)
        family = checkpoint_family(opts.model)
        self.family, self.device = family, device
        self.prepare(ckpt)
        setup, cfg = opts.model_setup(), opts.train_config()
        check_output(Path(opts.output), Path(opts.model), opts.force)
        tok = load_tokenizer(opts.model)

        # -- budget the examples
        data = parse_data_spec(opts.data)
        needed = cfg.steps * cfg.batch_size * cfg.grad_accum * state.num_processes
        train_ex = list(training_examples(data, tok, seq_len=opts.seq_len, role="train", seed=opts.seed,
                                          shuffle=True, max_examples=needed))
        eval_spec = parse_data_spec(opts.eval_data or opts.data)
        eval_role = "eval" if eval_spec.spec == data.spec else "all"
        eval_ex = list(training_examples(eval_spec, tok, seq_len=opts.seq_len, role=eval_role,
                                         max_examples=opts.eval_samples)) if opts.eval_samples and main else []
        eval_desc = f"{eval_spec.describe()} role={eval_role}, {len(eval_ex)} x {opts.seq_len} tokens"

        # -- evaluate before
        before = None
        if eval_ex:
            before = self.measure(self.streamed(device), eval_ex, "before")

        # -- train
        seed_everything(opts.seed)  # the same seed on every process: FSDP shards one identical model
        if opts.fsdp:  # built sharded: no process ever holds the whole model
            from ..train.fsdp import load_sharded

            model = load_sharded(opts.model, setup, family, device, offload=opts.fsdp_offload)
        else:
            model = load_trainable(opts.model, setup, family, device=device)
        loss_fn = self.loss_fn(device)
        ckdir = Path(opts.checkpoint_dir) if opts.checkpoint_dir else Path(str(opts.output) + ".checkpoints")

        def on_step(info):
            report(info.step, info.steps, f"training  loss {info.loss:.3f}  {info.tokens_per_s:,.0f} tok/s")

        result = train(model, train_ex, cfg, loss_fn=loss_fn, checkpoint_dir=ckdir if cfg.save_every else None,
                       resume=opts.resume, progress=on_step, cpu=device.type == "cpu",
                       lr_scales=self.lr_scales(model))
        del loss_fn
        # sharded: every process takes part, the main process keeps the full trained tensors (else None)
        self.gathered = strategy_for(model).gather_trained(model, main, self.output_dtype(ckpt))

        # -- evaluate after (the exact output weights), write, clean up (main process only)
        after = out = None
        run = RecipeRun(before, None, result, None, data.describe(), eval_desc, len(eval_ex), main,
                        state.num_processes)
        if main:
            if not opts.fsdp:  # a sharded model runs only with every process; the output is measured below
                self.after_training(model, eval_ex)
                release_frozen(model)  # from here on only the trained parameters are read: no second float copy
            if eval_ex:
                from ..train.merge import merge_transforms

                after = self.measure(self.streamed(device, merge_transforms(model, ckpt, self.gathered)), eval_ex,
                                     "after")
            run.after = after
            out = save_merged(model, opts.model, opts.output, operation=self.operation, dtype=opts.dtype,
                              options=as_record(opts), force=opts.force, max_shard_bytes=opts.max_shard_bytes,
                              extra_provenance=self.provenance(run), exits=self.exits(run), trained=self.gathered,
                              progress=lambda d, t, n: report(d, t, "writing"))
            run.output = out
            self.after_write(model)
            if not opts.checkpoint_dir:
                shutil.rmtree(ckdir, ignore_errors=True)
        state.wait_for_everyone()
        return run

    def output_dtype(self, ckpt):
        """The dtype the output's float tensors are written in (``--dtype``, else the source's when all
        its float tensors share one, else fp32): fully trained weights are gathered in it."""
        import torch

        from ..units import torch_dtype

        if self.opts.dtype:
            return torch_dtype(self.opts.dtype)
        floats = {torch_dtype(t.dtype) for t in ckpt.tensors.values()} & {torch.float32, torch.bfloat16, torch.float16}
        return floats.pop() if len(floats) == 1 else torch.float32

    def streamed(self, device, transforms: dict | None = None):
        """The source checkpoint layer-streamed in the compute dtype (:class:`surgeon.eval.streamed.StreamedModel`):
        no float copy of the model beside the trained one. With ``transforms`` (the merge), each tensor
        is the output's: source + LoRA delta (or the trained weight), cast to the output dtype."""
        from ..devices import compute_dtype
        from ..eval.streamed import StreamedModel
        from ..units import torch_dtype

        out_dtype = torch_dtype(self.opts.dtype) if transforms is not None and self.opts.dtype else None
        return StreamedModel(self.opts.model, device=device, dtype=compute_dtype(device), transforms=transforms,
                             out_dtype=out_dtype)

    def float_model(self, device, path: str | Path | None = None):
        """The source checkpoint (or ``path``) as a float model in the compute dtype, for evaluation."""
        from transformers import AutoModelForCausalLM

        from ..devices import compute_dtype
        from ..hub import local_folder

        model = AutoModelForCausalLM.from_pretrained(str(local_folder(path or self.opts.model)), dtype=compute_dtype(device),
                                                     use_safetensors=True)
        return model.to(device).eval()
