"""The shared training loop: AdamW, warm-up + cosine, accumulation, clipping, resumable checkpoints.

See :mod:`surgeon.train` for the contract (``train``, ``loss_fn``, batches). Implementation notes:

- Data order is a pure function of ``(seed, position)``: epoch ``e`` visits the examples in
  ``randperm(n, generator=seed_e)``; the micro-batch ``m`` of optimizer step ``s`` on process
  ``r`` of ``W`` takes the ``batch_size`` positions starting at ``((s * grad_accum + m) * W + r) *
  batch_size``. The data position saved in a checkpoint is therefore just the step, and a resumed
  run reads exactly the batches the uninterrupted run would have.
- The learning rate is set by hand each step from :func:`~.schedule.lr_factor` (no scheduler
  object), so the schedule state is also just the step.
- Checkpoint ``<dir>/step-00000012/``: ``trainable.safetensors`` (the trainable parameters),
  ``optimizer.pt`` (AdamW state: tensors and numbers only), ``rng-<rank>.pt`` (torch/cuda RNG
  states as tensors), ``state.json`` (step, losses, tokens, config, data fingerprint); a sharded
  (FSDP2) run writes ``shards/`` (one safetensors file per process) and ``optimizer.json`` instead of
  the first two (:class:`~.strategy.Sharded`, :mod:`surgeon.train.fsdp`). It is built
  in ``<dir>/.step-00000012.partial`` and renamed into place; ``<dir>/latest`` (replaced
  atomically) names the newest complete one; older ones are removed. ``.pt`` files are read back
  with ``torch.load(weights_only=True)``: no pickled code is ever executed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..data.training import collate
from ..errors import DataError, UsageError
from .config import TrainConfig
from .model import use_cpu_processes
from .schedule import effective_warmup, lr_factor, set_lr

log = logging.getLogger(__name__)

LATEST = "latest"
OOM_HINT = ("lower --batch-size (raise --grad-accum to keep the same effective batch), lower --seq-len, "
            "or add --gradient-checkpointing / --quant nf4")


@dataclass
class StepInfo:
    """What the progress callback receives after each optimizer step (and its checkpoint)."""

    step: int  # optimizer steps done, 1-based
    steps: int
    loss: float  # mean loss of this step (all micro-batches, all processes)
    lr: float
    tokens: int  # input tokens seen by this run so far, all processes
    tokens_per_s: float
    elapsed_s: float
    eta_s: float
    metrics: dict = field(default_factory=dict)


@dataclass
class TrainResult:
    """``losses[i]`` is the mean loss of optimizer step i (including steps done before a resume)."""

    steps: int
    losses: list[float]
    seconds: float  # wall time of this invocation's steps
    tokens: int  # input tokens of this invocation, all processes
    resumed_from: int = 0
    metrics: list[dict] = field(default_factory=list)
    checkpoint: str | None = None

    @property
    def seconds_per_step(self) -> float:
        done = self.steps - self.resumed_from
        return self.seconds / done if done else 0.0

    def to_dict(self) -> dict:
        return {"steps": self.steps, "losses": self.losses, "seconds": self.seconds, "tokens": self.tokens,
                "resumed_from": self.resumed_from, "seconds_per_step": self.seconds_per_step,
                "checkpoint": self.checkpoint}


# --------------------------------------------------------------------------- batches
def causal_lm_loss(model, batch: dict):
    """The default ``loss_fn``: mean next-token cross-entropy over labels != -100."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                use_cache=False)
    return out.loss, {}


@lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    import torch

    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return tuple(torch.randperm(n, generator=g).tolist())


def data_indices(n: int, seed: int, start: int, count: int) -> list[int]:
    """Example indices at stream positions ``start .. start+count-1`` (seeded epoch permutations)."""
    out = []
    for pos in range(start, start + count):
        epoch, i = divmod(pos, n)
        out.append(_permutation(n, seed, epoch)[i])
    return out


def _fingerprint(examples: Sequence[dict]) -> str:
    h = hashlib.sha256(str(len(examples)).encode())
    for e in (examples[0], examples[len(examples) // 2], examples[-1]):
        h.update(json.dumps([list(map(int, e["input_ids"])), list(map(int, e.get("labels", [])))]).encode())
    return h.hexdigest()[:16]


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed python, numpy and torch (all devices). Call it before building the model so LoRA's
    initialization is reproducible too."""
    from accelerate.utils import set_seed

    set_seed(int(seed) + int(rank))


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError) or e.__class__.__name__ == "OutOfMemoryError":
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg
                                            or "not enough memory" in msg)


# --------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict:
    import torch

    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder in ``checkpoint_dir``, or None."""
    d = Path(checkpoint_dir)
    try:
        name = (d / LATEST).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    p = d / name
    return p if name and (p / "state.json").is_file() else None


def _save(strategy, model, optimizer, checkpoint_dir: Path, step: int, state: dict) -> Path:
    import torch

    name = f"step-{step:08d}"
    tmp = checkpoint_dir / f".{name}.partial"
    final = checkpoint_dir / name
    main = strategy.is_main_process
    if main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    strategy.barrier()
    torch.save(_rng_state(), tmp / f"rng-{strategy.rank}.pt")
    strategy.save(tmp, model, optimizer)
    if main:
        (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    strategy.barrier()
    if main:
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        pointer = checkpoint_dir / f".{LATEST}.tmp"
        pointer.write_text(name + "\n", encoding="utf-8")
        os.replace(pointer, checkpoint_dir / LATEST)
        for old in checkpoint_dir.glob("step-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
    strategy.barrier()
    return final


def _load(strategy, model, optimizer, ckpt: Path, expect: dict) -> dict:
    import torch

    state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    strategy.check_format(ckpt)
    for key, value in expect.items():
        if state.get(key) != value:
            raise UsageError(
                f"cannot resume from {ckpt}: it was written with {key}={state.get(key)!r}, this run has {value!r}",
                "resume with the same options and data, or delete the checkpoint folder to start over",
            )
    strategy.load(ckpt, model, optimizer)
    rng = ckpt / f"rng-{strategy.rank}.pt"
    if rng.is_file():
        _set_rng_state(torch.load(rng, map_location="cpu", weights_only=True))
    return state


# --------------------------------------------------------------------------- the loop
def train(
    model,
    examples: Sequence[dict],
    cfg: TrainConfig,
    *,
    loss_fn: Callable | None = None,
    collate_fn: Callable[[Sequence[dict]], dict] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: Callable[[StepInfo], None] | None = None,
    cpu: bool = False,
    lr_scales: dict | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``cfg.steps`` optimizer steps (see :mod:`surgeon.train`); ``cpu=True``
    trains on the CPU even when an accelerator is present. A model sharded by
    :func:`surgeon.train.fsdp.shard` trains under FSDP2 (sharded gradients and optimizer state,
    sharded checkpoints); any other model under accelerate (DDP when several processes run): the
    :class:`~surgeon.train.strategy.Strategy` of :func:`~surgeon.train.strategy.strategy_for`.
    ``lr_scales``: {parameter: factor}; those parameters learn at ``factor`` times the scheduled
    learning rate (their own AdamW group), the others at 1x."""
    import torch

    from .strategy import strategy_for

    examples = examples if isinstance(examples, Sequence) else list(examples)
    loss_fn = loss_fn or causal_lm_loss
    collate_fn = collate_fn or collate
    strategy = strategy_for(model, cpu=cpu or use_cpu_processes())
    world, rank, device = strategy.world, strategy.rank, strategy.device
    if len(examples) < cfg.batch_size * world:
        raise DataError(
            f"the training data holds {len(examples)} examples, fewer than one batch "
            f"({cfg.batch_size} per process x {world} processes)",
            "give more text, or lower --batch-size / --seq-len",
        )
    if resume and checkpoint_dir is None:
        raise UsageError("resume needs a checkpoint folder", "pass the same --checkpoint-dir as the interrupted run")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UsageError("the model has no trainable parameters", "load it with surgeon.train.load_trainable")
    optimizer = torch.optim.AdamW(_param_groups(params, lr_scales), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = strategy.prepare(model, optimizer)
    model.train()
    warmup = effective_warmup(cfg.warmup, cfg.steps)
    expect = {"config": cfg.to_dict(), "world": world, "data": _fingerprint(examples), **strategy.checkpoint_tags}

    start, losses, metrics_log = 0, [], []
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    last_ckpt = None
    if resume:
        found = latest_checkpoint(ckdir)
        if found is None:
            log.warning("no checkpoint in %s; starting from step 0", ckdir)
        else:
            state = _load(strategy, model, optimizer, found, expect)
            start, losses = int(state["step"]), list(state["losses"])
            metrics_log = list(state.get("metrics", []))
            last_ckpt = str(found)
            log.info("resumed from %s (step %d of %d)", found, start, cfg.steps)

    t0 = time.time()
    tokens = 0
    for step in range(start, cfg.steps):
        lr = cfg.lr * lr_factor(step, cfg.steps, warmup)
        set_lr(optimizer, lr)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        step_tokens = torch.zeros((), dtype=torch.float64, device=device)
        step_metrics: dict[str, float] = {}
        try:
            for micro in range(cfg.grad_accum):
                first = ((step * cfg.grad_accum + micro) * world + rank) * cfg.batch_size
                batch = collate_fn([examples[i] for i in data_indices(len(examples), cfg.seed, first, cfg.batch_size)])
                batch = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}
                batch["step"], batch["micro"] = step, micro
                with strategy.micro_batch(model, last=micro == cfg.grad_accum - 1):
                    loss, metrics = loss_fn(model, batch)
                    strategy.backward(loss / cfg.grad_accum)
                if not torch.isfinite(loss.detach()):
                    raise UsageError(f"the loss became {float(loss)} at step {step + 1}",
                                     "lower --lr, or check the data and the model's dtype")
                loss_sum += loss.detach().double() / cfg.grad_accum
                step_tokens += batch["attention_mask"].sum().double() if "attention_mask" in batch else 0
                for k, v in (metrics or {}).items():
                    step_metrics[k] = step_metrics.get(k, 0.0) + float(v) / cfg.grad_accum
            if cfg.max_grad_norm and cfg.max_grad_norm > 0:
                strategy.clip_grad_norm(params, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        except Exception as e:
            if _is_oom(e):
                raise UsageError(
                    f"out of memory at step {step + 1} (batch {cfg.batch_size} x {batch_width(examples)} tokens)",
                    OOM_HINT) from None
            raise
        reduced = strategy.reduce_sum(torch.stack([loss_sum, step_tokens]))
        step_loss = float(reduced[0]) / world
        tokens += int(reduced[1])
        losses.append(step_loss)
        metrics_log.append(step_metrics)
        done = step + 1
        if ckdir is not None and cfg.save_every and (done % cfg.save_every == 0 or done == cfg.steps):
            state = {**expect, "step": done, "losses": losses, "metrics": metrics_log}
            last_ckpt = str(_save(strategy, model, optimizer, ckdir, done, state))
        if progress is not None:
            elapsed = time.time() - t0
            rate = (done - start) / elapsed if elapsed > 0 else 0.0
            progress(StepInfo(done, cfg.steps, step_loss, lr, tokens, tokens / elapsed if elapsed > 0 else 0.0,
                              elapsed, (cfg.steps - done) / rate if rate > 0 else math.inf, step_metrics))
    seconds = time.time() - t0
    strategy.close()
    return TrainResult(cfg.steps, losses, seconds, tokens, start, metrics_log, last_ckpt)


def _param_groups(params: list, lr_scales: dict | None) -> list[dict]:
    """AdamW groups: the parameters at 1x, then one group per other ``lr_scales`` factor (order kept
    within each group, so an unscaled run has exactly the one group it always had)."""
    scales = {id(p): float(f) for p, f in (lr_scales or {}).items()}
    groups: dict[float, list] = {}
    for p in params:
        groups.setdefault(scales.get(id(p), 1.0), []).append(p)
    return [{"params": ps, "lr_scale": f} for f, ps in sorted(groups.items(), key=lambda kv: kv[0] != 1.0)]


def batch_width(examples: Sequence[dict]) -> int:
    return max(len(e["input_ids"]) for e in examples[:64])


__all__ = ["StepInfo", "TrainResult", "causal_lm_loss", "data_indices", "latest_checkpoint", "seed_everything",
           "train"]
