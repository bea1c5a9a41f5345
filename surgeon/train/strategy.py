"""How the training loop spreads over processes: one small interface, two implementations.

:func:`~surgeon.train.loop.train` reads top to bottom and asks its :class:`Strategy` for everything
that depends on how the model is laid out over the processes:

- :class:`Replicated`: every process holds the whole model (one CPU, one GPU, or DDP when several
  processes run: accelerate's ``prepare`` wraps the model, ``no_sync`` defers the all-reduce to the
  last micro-batch of a step). Checkpoints hold ``trainable.safetensors`` and ``optimizer.pt``,
  written by the main process; after training the merge reads the trained parameters from the model.
- :class:`Sharded`: the model was sharded by :func:`surgeon.train.fsdp.shard` (FSDP2): it is used as
  it is, every micro-batch's gradients are reduce-scattered into the shards, the gradient norm is
  taken over the whole sharded gradient, every process writes its own shard of the checkpoint
  (:func:`~surgeon.train.fsdp.save_shards`), and the trained parameters are gathered to the main
  process for the merge (:func:`~surgeon.train.fsdp.gather_trained`).

What both share (rank, number of processes, device, barrier, the sum over processes) is
accelerate's ``Accelerator``, created on first use. :func:`strategy_for` picks the implementation
from the model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import nullcontext
from functools import cached_property
from pathlib import Path

from ..errors import UsageError

TRAINABLE = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"


class Strategy(ABC):
    """The interface; this base also holds what both implementations share (accelerate's process
    state). Subclasses implement the abstract methods."""

    #: keys recorded in every checkpoint's ``state.json`` and required equal on resume
    checkpoint_tags: dict = {}

    def __init__(self, cpu: bool = False):
        self.cpu = cpu  # train on the CPU (also: several processes on a machine without CUDA: gloo)

    # -- shared: the processes -------------------------------------------------------------------
    @cached_property
    def acc(self):
        from accelerate import Accelerator

        return Accelerator(cpu=self.cpu)

    @property
    def rank(self) -> int:
        return self.acc.process_index

    @property
    def world(self) -> int:
        return self.acc.num_processes

    @property
    def is_main_process(self) -> bool:
        return self.acc.is_main_process

    @property
    def device(self):
        return self.acc.device

    def barrier(self) -> None:
        self.acc.wait_for_everyone()

    def reduce_sum(self, tensor):
        """``tensor`` summed over the processes (the same result on each)."""
        return self.acc.reduce(tensor, reduction="sum")

    def close(self) -> None:
        """Release what the run held (accelerate's references, cached device memory)."""
        self.acc.free_memory()

    # -- differs: training --------------------------------------------------------------------------
    @abstractmethod
    def prepare(self, model, optimizer):
        """``(model, optimizer)`` ready to train (wrapped as the implementation needs)."""

    @abstractmethod
    def micro_batch(self, model, last: bool):
        """The context one micro-batch's forward and backward run in; ``last``: the step's last one."""

    @abstractmethod
    def backward(self, loss) -> None:
        """Add ``loss``'s gradients (already divided by the number of micro-batches)."""

    @abstractmethod
    def clip_grad_norm(self, params, max_norm: float) -> None:
        """Clip the norm of the whole gradient (over every process's part of it) to ``max_norm``."""

    # -- differs: checkpoints and the output --------------------------------------------------------
    @abstractmethod
    def check_format(self, ckpt: Path) -> None:
        """A one-line error when ``ckpt`` was written by the other implementation."""

    @abstractmethod
    def save(self, folder: Path, model, optimizer) -> None:
        """Write the trainable parameters and the optimizer state into ``folder`` (every process calls it)."""

    @abstractmethod
    def load(self, folder: Path, model, optimizer) -> None:
        """Read back what :meth:`save` wrote, in place (every process calls it)."""

    @abstractmethod
    def gather_trained(self, model, main: bool, full_dtype=None) -> dict | None:
        """The trained parameters in full on the main process, for the merge, when ``model`` holds only
        a part of them (None: the merge reads them from the model). Every process calls it."""


class Replicated(Strategy):
    """The whole model on every process: one device, or DDP under accelerate when several run."""

    def prepare(self, model, optimizer):
        return self.acc.prepare(model, optimizer)

    def micro_batch(self, model, last: bool):
        # DDP defers its all-reduce to the last micro-batch of the step
        return self.acc.no_sync(model) if not last and self.world > 1 else nullcontext()

    def backward(self, loss) -> None:
        self.acc.backward(loss)

    def clip_grad_norm(self, params, max_norm: float) -> None:
        self.acc.clip_grad_norm_(params, max_norm)

    def check_format(self, ckpt: Path) -> None:
        if not (ckpt / TRAINABLE).is_file():
            raise UsageError(f"cannot resume from {ckpt}: it is a sharded (--fsdp) checkpoint",
                             "resume with --fsdp under the same launch as the interrupted run")

    def save(self, folder: Path, model, optimizer) -> None:
        import torch
        from safetensors.torch import save_file

        from .model import trainable_state

        if self.is_main_process:
            save_file(trainable_state(model), str(folder / TRAINABLE))
            torch.save(optimizer.state_dict(), folder / OPTIMIZER)

    def load(self, folder: Path, model, optimizer) -> None:
        import torch
        from safetensors.torch import load_file

        from .model import load_trainable_state

        load_trainable_state(model, load_file(str(folder / TRAINABLE)))
        optimizer.load_state_dict(torch.load(folder / OPTIMIZER, map_location="cpu", weights_only=True))

    def gather_trained(self, model, main: bool, full_dtype=None) -> dict | None:
        return None


class Sharded(Strategy):
    """A model sharded by :func:`surgeon.train.fsdp.shard` (FSDP2): sharded gradients, optimizer state
    and checkpoints."""

    checkpoint_tags = {"fsdp": True}

    def prepare(self, model, optimizer):
        return model, optimizer  # FSDP2 already distributes the model; accelerate would wrap it in DDP

    def micro_batch(self, model, last: bool):
        # FSDP2 reduce-scatters each micro-batch's gradients into the shards (no unsharded gradients
        # kept between micro-batches)
        return nullcontext()

    def backward(self, loss) -> None:
        loss.backward()

    def clip_grad_norm(self, params, max_norm: float) -> None:
        from .fsdp import clip_grad_norm

        clip_grad_norm(params, max_norm)

    def check_format(self, ckpt: Path) -> None:
        if (ckpt / TRAINABLE).is_file():
            raise UsageError(f"cannot resume from {ckpt}: it is a one-model (not --fsdp) checkpoint",
                             "resume without --fsdp, as the interrupted run ran")

    def save(self, folder: Path, model, optimizer) -> None:
        from .fsdp import save_shards

        save_shards(folder, model, optimizer, self.is_main_process)  # every process writes its own shard

    def load(self, folder: Path, model, optimizer) -> None:
        from .fsdp import load_shards

        load_shards(folder, model, optimizer)

    def gather_trained(self, model, main: bool, full_dtype=None) -> dict | None:
        from .fsdp import gather_trained

        return gather_trained(model, main, full_dtype)


def strategy_for(model, cpu: bool = False) -> Strategy:
    """:class:`Sharded` for a model sharded by :func:`surgeon.train.fsdp.shard`, else :class:`Replicated`.
    ``cpu=True`` keeps the processes on the CPU even when an accelerator is present."""
    from .fsdp import is_sharded

    return (Sharded if is_sharded(model) else Replicated)(cpu=cpu)


__all__ = ["Replicated", "Sharded", "Strategy", "strategy_for"]
