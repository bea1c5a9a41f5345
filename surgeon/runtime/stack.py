"""Run any subset of a stock transformers model's decoder layers, sharing its weights and one KV cache.

The runtime never copies or re-implements a model: it calls the model's own ``forward`` (embeddings,
rotary embeddings, per-layer-type masks, final norm, LM head, logit soft-capping) after temporarily
swapping the decoder's ``layers`` ModuleList for a list of the *same* layer modules in which

* the layers that should not run are replaced by :class:`_Skip` (returns its input: the residual
  stream passes through, which is exactly what dropping a layer means);
* the layer just before a segment's first layer is replaced by :class:`_Inject`, which ignores its
  input and returns a saved residual-stream tensor, so a forward can *start* at depth ``a``
  (the hidden state after layer ``a-1``) instead of at the embeddings;
* the segment's last layer is wrapped by :class:`_Capture`, which records its output: the pre-norm
  residual stream at the exit depth, needed later to resume deeper layers for those positions.

Real layers keep their list index (= their ``layer_idx`` and their ``config.layer_types`` entry), so
sliding/full masks, Gemma 3's two rotary tables and the KV cache index all stay right.

:class:`SharedCache` is one :class:`~transformers.DynamicCache` of full (non-sliding) layers for the
whole stack. Different layers may hold different numbers of positions (a draft fills layers 0..K-1
ahead of the rest), so the length the model reads for positions and masks comes from ``ref``: the
first layer of the segment being run, which :meth:`Stack.forward` sets. Sliding windows are applied
by the masks (built from absolute positions), not by evicting cache entries, so any layer can be
cropped back after a rejected draft.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

log = logging.getLogger(__name__)


class SharedCache(DynamicCache):
    """A KV cache shared by every exit of one model; length queries follow layer ``ref``."""

    def __init__(self) -> None:
        super().__init__()  # no config: plain DynamicLayers, created lazily, croppable at any length
        self.ref = 0

    def length(self, layer: int) -> int:
        """Positions cached for original layer index ``layer``."""
        return super().get_seq_length(layer)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return super().get_seq_length(self.ref)

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return super().get_mask_sizes(query_length, self.ref)

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.get_seq_length()

    def truncate(self, length: int) -> None:
        """Drop every cached position ``>= length`` in every layer."""
        for layer in self.layers:
            n = layer.get_seq_length()
            if n > length:
                layer.crop(length - n)


class _Skip(nn.Module):
    """A dropped layer: the residual stream passes through unchanged."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class _Inject(nn.Module):
    """Replaces layer ``a-1``: returns the saved residual stream at depth ``a``."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: torch.Tensor | None = None

    def forward(self, hidden_states, *args, **kwargs):
        return self.hidden


class _Capture(nn.Module):
    """Wraps a segment's last layer and keeps its output (the pre-norm residual stream)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.output: torch.Tensor | None = None
        if hasattr(layer, "attention_type"):
            self.attention_type = layer.attention_type

    def forward(self, hidden_states, *args, **kwargs):
        out = self.layer(hidden_states, *args, **kwargs)
        self.output = out[0] if isinstance(out, tuple) else out
        return out


def cache_keyword(model: Any) -> str:
    """The name under which ``model.forward`` takes its KV cache: ``cache`` in recent transformers 5
    releases (5.25 warns with a FutureWarning on ``past_key_values`` and drops it in 5.40), while 5.0 knows
    only ``past_key_values`` (a ``cache=`` would vanish into its ``**kwargs``); ``transformers>=5.0`` admits both."""
    import inspect

    params = inspect.signature(model.forward).parameters  # follows the decorators' __wrapped__
    return "cache" if "cache" in params else "past_key_values"


@dataclass
class StepOutput:
    """What one :meth:`Stack.forward` returns."""

    logits: torch.Tensor | None  # [1, q or logits_to_keep, vocab] when head=True
    hidden: torch.Tensor | None  # pre-norm residual after the segment's last layer, [1, q, d] (keep_hidden)
    normed: torch.Tensor | None = None  # final-norm output, [1, q, d] (head=False): what an LM head reads


class Stack:
    """Layer-subset forward passes over one loaded causal LM (weights shared, nothing copied)."""

    def __init__(self, model: Any):
        self.model = model
        self.inner = model.get_decoder()
        layers = getattr(self.inner, "layers", None)
        if not isinstance(layers, nn.ModuleList):
            from ..errors import ArchitectureError

            raise ArchitectureError(f"{type(model).__name__} has no decoder `layers` list",
                                    "the runtime supports decoder-only models whose base model holds `layers`")
        self.layers = layers
        self.num_layers = len(layers)
        self._skip = _Skip()
        self._inject = _Inject()
        self._captures: dict[int, _Capture] = {}
        self._lists: dict[tuple, nn.ModuleList] = {}
        self._cache_kw = cache_keyword(model)

    def _module_list(self, layers: tuple[int, ...], start: int | None, capture: bool) -> nn.ModuleList:
        key = (layers, start, capture)
        ml = self._lists.get(key)
        if ml is None:
            active = set(layers)
            mods: list[nn.Module] = []
            for i in range(layers[-1] + 1):
                if start is not None and i == start - 1:
                    mods.append(self._inject)
                elif i in active:
                    mods.append(self.layers[i])
                else:
                    mods.append(self._skip)
            if capture:
                last = layers[-1]
                if last not in self._captures:
                    self._captures[last] = _Capture(self.layers[last])
                mods[last] = self._captures[last]
            ml = self._lists[key] = nn.ModuleList(mods)
        return ml

    @contextmanager
    def using(self, layers: tuple[int, ...]):
        """Make the stock model *be* the sub-model ``layers`` inside the block (any caller, any cache).

        The model's own ``forward``/``generate`` then run only those layers (dropped ones pass the residual
        through); meant for callers such as lm-evaluation-harness that take a model object.
        """
        if tuple(layers) == tuple(range(self.num_layers)):
            yield self.model
            return
        saved = self.inner._modules["layers"]
        self.inner._modules["layers"] = self._module_list(tuple(layers), None, False)
        try:
            yield self.model
        finally:
            self.inner._modules["layers"] = saved

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: SharedCache,
                layers: tuple[int, ...], *, start: int | None = None, start_hidden: torch.Tensor | None = None,
                head: bool = True, keep_hidden: bool = False, logits_to_keep: int = 0) -> StepOutput:
        """Run ``layers`` (increasing original indices) over ``input_ids`` at ``positions`` (both [1, q]).

        ``start``/``start_hidden``: begin at depth ``start`` from the saved residual stream ``start_hidden``
        ([1, q, d]); every layer in ``layers`` must then be ``>= start``. ``head``: apply final norm + LM head
        (the model's own, with soft-capping) to the last ``logits_to_keep`` positions (0 = all); without
        it, ``normed`` holds the final norm's output for every position (for a draft head of one's own).
        ``keep_hidden``: also return the pre-norm residual after the last layer run.
        """
        if not layers:
            raise ValueError("an exit needs at least one layer")
        full = start is None and not keep_hidden and len(layers) == self.num_layers
        dev = self.model.device
        input_ids, positions = input_ids.to(dev), positions.to(dev)
        cache.ref = start if start is not None else layers[0]
        kwargs = {"input_ids": input_ids, "position_ids": positions, self._cache_kw: cache, "use_cache": True}
        if head:
            kwargs["logits_to_keep"] = logits_to_keep
        target = self.model if head else self.inner
        if full:  # the stock model, untouched
            out = target(**kwargs)
            return StepOutput(out.logits, None) if head else StepOutput(None, None, out.last_hidden_state)
        if start is not None:
            if start_hidden is None or start < 1 or layers[0] < start:
                raise ValueError("start needs start_hidden, start >= 1 and layers >= start")
            self._inject.hidden = start_hidden
        ml = self._module_list(tuple(layers), start, keep_hidden)
        saved = self.inner._modules["layers"]
        self.inner._modules["layers"] = ml
        try:
            out = target(**kwargs)
        finally:
            self.inner._modules["layers"] = saved
            self._inject.hidden = None
        hidden = None
        if keep_hidden:
            cap = self._captures[layers[-1]]
            hidden, cap.output = cap.output, None
        if head:
            return StepOutput(out.logits, hidden)
        return StepOutput(None, hidden, out.last_hidden_state)
