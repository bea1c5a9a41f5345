"""The shared training recipe (healing and Sorted Fine-Tuning both use it).

A linear recipe on peft / bitsandbytes / accelerate; importing this package does not import torch.

Public API
----------
``ModelSetup(method="lora"|"full", quant="nf4"|"none", rank=8, alpha=None (= rank), dropout=0.05,
target_modules=None (= the family's FFN projections), gradient_checkpointing=False)``
    How the model is made trainable. Bad values raise :class:`~surgeon.errors.UsageError`.

``TrainConfig(steps, lr=3e-4, warmup=100, batch_size=4, grad_accum=1, seed=0, weight_decay=0.0,
max_grad_norm=1.0, save_every=0)``
    The optimization loop. Warm-up is capped at 10% of ``steps``; then cosine to 0.
    One optimizer step sees ``batch_size * grad_accum * num_processes`` sequences.

``load_trainable(path, setup, family=None, *, device=None) -> model``
    Load a safetensors checkpoint folder trainable (QLoRA NF4 + LoRA, LoRA, or full) on this
    process's device. ``family`` defaults to the registry family of the checkpoint.
    Call ``seed_everything(seed)`` first for a reproducible LoRA initialization.

``train(model, examples, cfg, *, loss_fn=None, collate_fn=None, checkpoint_dir=None,
resume=False, progress=None) -> TrainResult(steps, losses, seconds, tokens, resumed_from,
metrics, checkpoint)``
    Trains the model in place. ``examples`` is a sequence of ``{"input_ids": [...],
    "labels": [...]}`` (labels -100 are not scored), e.g. ``list(surgeon.data.training_examples(...))``.
    The data order is a pure function of ``cfg.seed`` and the step; ``resume=True`` continues from
    the newest checkpoint in ``checkpoint_dir`` (written every ``cfg.save_every`` steps and at the
    end) and reaches the same weights as an uninterrupted run. ``progress`` gets a
    :class:`StepInfo` (step, steps, loss, lr, tokens, tokens_per_s, elapsed_s, eta_s, metrics)
    after every optimizer step. Under ``accelerate launch`` it runs DDP with no code change
    (each process reads its own slice of every step's batch). A model built by
    ``surgeon.train.fsdp.load_sharded(path, setup, family, device)`` (FSDP2, under ``torchrun``)
    trains sharded: sharded gradients and optimizer state, sharded checkpoints
    (``torch.distributed.checkpoint``, safetensors storage); ``surgeon.train.strategy.strategy_for(model)
    .gather_trained(model, main)`` then brings the trained parameters to the main process for the
    merge (None for a model that is not sharded). What differs between the two lives in
    :mod:`surgeon.train.strategy` (``Replicated``, ``Sharded``), not in branches through ``train``.
    Raises ``DataError`` when the examples do not fill one batch, ``UsageError`` on out of memory
    (naming --batch-size / --seq-len / --grad-accum), on a non-finite loss, or on a resume whose
    options or data differ from the checkpoint's.

The ``loss_fn`` contract
------------------------
``loss_fn(model, batch) -> (loss, metrics)`` is called once per micro-batch, inside the DDP
no-sync context when gradients are being accumulated:

- ``model`` is the model as prepared by accelerate (a DDP wrapper under several processes;
  under FSDP2 the sharded model itself:
  call it, ``model(...)``, so gradients synchronize; use ``surgeon.train.unwrap(model)`` to reach
  its modules, e.g. to register hooks on ``unwrap(model).base_model.model.model.layers`` or
  read ``config``).
- ``batch`` is a dict with ``input_ids`` (long, [B, T]), ``attention_mask`` (long, [B, T], 1 on
  real tokens) and ``labels`` (long, [B, T], -100 where not scored; NOT shifted: position t
  holds the token at t, as HF causal-LM models expect), all on the training device; plus
  ``step`` (int, 0-based optimizer step) and ``micro`` (int, 0-based micro-batch index within
  the step), e.g. to sample one exit per step deterministically. A custom ``collate_fn`` may add
  more keys (tensors are moved to the device).
- It returns ``loss``, a scalar tensor with grad (the loop divides it by ``grad_accum`` and calls
  ``accelerator.backward``), and ``metrics``, a dict of floats (or 0-d tensors) that are averaged
  over the step's micro-batches and recorded in ``TrainResult.metrics`` / ``StepInfo.metrics``.
  Multi-exit losses: call ``model(..., output_hidden_states=True)`` and apply the shared final
  norm + LM head to each exit's hidden state, or use forward hooks.

The default is :func:`causal_lm_loss` (the model's own shifted cross-entropy on ``labels``).

Saving
------
``surgeon.commands.output.save_merged(model, source, out, ...)`` merges LoRA deltas into the ORIGINAL
float weights read from ``source`` (or writes fully fine-tuned weights; :func:`surgeon.train.merge.merge_transforms`)
and streams a plain HF checkpoint through ``surgeon.surgery.execute``; ``surgeon.train.merge.save_adapter(model,
folder)`` keeps the peft adapter.
"""

from __future__ import annotations

from .config import METHODS, QUANTS, ModelSetup, TrainConfig
from .loop import (
    StepInfo,
    TrainResult,
    causal_lm_loss,
    data_indices,
    latest_checkpoint,
    seed_everything,
    train,
)
from .model import checkpoint_family, load_trainable, trainable_state, unwrap
from .schedule import effective_warmup, lr_factor

__all__ = [
    "METHODS", "QUANTS", "ModelSetup", "StepInfo", "TrainConfig", "TrainResult", "causal_lm_loss",
    "checkpoint_family", "data_indices", "effective_warmup", "latest_checkpoint",
    "load_trainable", "lr_factor", "seed_everything", "train", "trainable_state", "unwrap",
]
