"""Reading sub-models out of one forward pass: capture the residual stream at each exit.

Sub-model ``n`` is layers ``0..n-1`` followed by the model's own final norm and LM head (and the
family's final-logit soft-capping, e.g. Gemma 2/3). :func:`exit_modules` finds those modules
through peft / DDP wrappers via the architecture registry; :func:`capture_exits` runs the model
once with forward hooks on the decoder layers and returns the residual stream after layer
``n-1`` for every exit ``n``, stopping the pass after the deepest exit when it is below ``L``.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

from ..arch.registry import resolve_family
from ..errors import UsageError
from ..train.model import unwrap

log = logging.getLogger(__name__)

# Rows per chunk of full-vocabulary logits = this many logits / vocabulary size (64 MiB of float32).
CHUNK_ELEMENTS = 16 * 2**20
MIN_CHUNK_TOKENS = 64


def default_chunk_tokens(vocab_size: int) -> int:
    return max(MIN_CHUNK_TOKENS, CHUNK_ELEMENTS // max(1, vocab_size))


@dataclass
class ExitModules:
    """The shared pieces every exit reads through."""

    layers: object  # torch.nn.ModuleList of decoder layers
    norm: object  # final norm module
    head: object  # LM head module (nn.Linear, possibly wrapped by peft / bitsandbytes)
    softcap: float | None  # final_logit_softcapping (Gemma 2/3), applied after the head
    num_layers: int

    def logits(self, hidden):
        """Full-vocabulary logits of residual-stream rows ``hidden`` (norm -> head -> soft-cap)."""
        return self.cap(self.head(self.norm(hidden)))

    def cap(self, logits):
        import torch

        if self.softcap:
            return torch.tanh(logits / self.softcap) * self.softcap
        return logits


def exit_modules(model) -> ExitModules:
    """Locate the decoder layers, final norm and LM head of ``model`` (see module doc)."""
    base = unwrap(model, peft=True)
    config = base.config
    family = resolve_family(config.to_dict())
    try:
        layers = base.get_submodule(family.layers)
        norm = base.get_submodule(family.final_norm)
        head = base.get_submodule(family.lm_head)
    except AttributeError as e:
        raise UsageError(f"{family.name} model has no module {e}", "check the family entry in surgeon/arch/families.json") from None
    softcap = getattr(config, "final_logit_softcapping", None)
    return ExitModules(layers=layers, norm=norm, head=head, softcap=float(softcap) if softcap else None,
                       num_layers=len(layers))


class _StopForward(Exception):
    """Raised by a pre-hook on the layer after the deepest exit: the rest of the pass is not needed."""


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


@contextmanager
def _hooks(mods: ExitModules, exits, store: dict, stop_at: int | None):
    handles = []

    def make_hook(n):
        def hook(module, args, output):
            store[n] = output[0] if isinstance(output, tuple) else output
        return hook

    def stop(module, args):
        raise _StopForward

    try:
        for n in exits:
            handles.append(mods.layers[n - 1].register_forward_hook(make_hook(n)))
        if stop_at is not None:
            handles.append(mods.layers[stop_at].register_forward_pre_hook(stop))
        yield
    finally:
        for h in handles:
            h.remove()


def capture_exits(model, mods: ExitModules, exits, input_ids, attention_mask=None, stop_early: bool = True) -> dict:
    """Run ``model`` once; return ``{n: residual stream after layer n-1, shape (B, T, D)}``.

    The model's own LM head runs on the last position only (``logits_to_keep=1``). When the
    deepest exit is below ``L`` (and no process group is running, where DDP expects the whole
    forward) the pass stops right after it, so a stochastic step on exit ``n`` costs ``n`` layers.
    Autograd follows the captured tensors as usual.
    """
    exits = sorted(set(exits))
    store: dict = {}
    deepest = exits[-1]
    stop_at = deepest if (stop_early and deepest < mods.num_layers and not _distributed()) else None
    with _hooks(mods, exits, store, stop_at):
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
        except _StopForward:
            pass
    missing = [n for n in exits if n not in store]
    if missing:
        raise RuntimeError(f"the forward pass did not reach exits {missing}")
    return store
