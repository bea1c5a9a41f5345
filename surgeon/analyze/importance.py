"""Importance of FFN channels and attention heads, measured on calibration data.

Scores (the same quantities SortedNet-style width pruning ranks by; activation-based, no gradients):

- **FFN channel c** of a layer: mean over real (non-padding) tokens of ``|a_c|``, where ``a`` is the
  input of ``down_proj`` (``act(gate(x)) * up(x)``). Dropping channel c removes exactly
  ``a_c * W_down[:, c]`` from the layer's output, so a channel that is small on the data matters little.
- **KV group g** (a KV head with its ``r`` query heads): mean over real tokens of
  ``sum_{h in g} ||o_h||_2``, where ``o_h`` is query head h's slice of the input of ``o_proj`` (the
  attention output before the output projection). Heads are ranked in whole groups because a KV head
  cannot be dropped without its query heads.

Accumulated in float64 from forward pre-hooks over one pass of the data, batched with right padding
and an attention mask (padding positions are excluded from the means).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ..arch.registry import Family
from ..data.training import collate
from ..devices import input_device
from ..progress import Progress

log = logging.getLogger(__name__)


@dataclass
class WidthImportance:
    """Per layer (0-based, in the model's order): channel scores and KV-group scores."""

    ffn: list[list[float]]
    kv: list[list[float]]
    tokens: int

    def order(self) -> dict[int, dict[str, list[int]]]:
        """Layer -> {"ffn": channel order, "kv": KV-head order}, most important first (stable on ties)."""
        def argsort_desc(xs: Sequence[float]) -> list[int]:
            return sorted(range(len(xs)), key=lambda i: (-xs[i], i))

        return {i: {"ffn": argsort_desc(f), "kv": argsort_desc(k)} for i, (f, k) in enumerate(zip(self.ffn, self.kv))}


def width_importance(
    model,
    family: Family,
    sequences: Sequence[Sequence[int]],
    batch_size: int = 4,
    progress: Progress | None = None,
) -> WidthImportance:
    """Score every layer's FFN channels and KV groups of ``model`` on ``sequences`` (see module doc).
    ``model`` is a loaded model or a :class:`~surgeon.eval.streamed.StreamedModel` (one layer at a time)."""
    import torch

    from ..eval.streamed import Stream, StreamedModel

    stream = model if isinstance(model, StreamedModel) else None
    model = stream.model if stream else model

    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    nh = cfg.num_attention_heads
    nkv = getattr(cfg, "num_key_value_heads", None) or nh
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    r = nh // nkv
    layers = model.get_submodule(family.layers)
    L = len(layers)
    ffn_sum = [None] * L
    kv_sum = [torch.zeros(nkv, dtype=torch.float64) for _ in range(L)]
    state: dict = {"mask": None}

    def ffn_hook(i):
        def hook(_mod, args):
            a = args[0].detach().abs().to(torch.float64)
            m = state["mask"].to(a.device)
            s = (a * m[..., None]).sum(dim=(0, 1)).cpu()
            ffn_sum[i] = s if ffn_sum[i] is None else ffn_sum[i] + s
        return hook

    def attn_hook(i):
        def hook(_mod, args):
            x = args[0].detach().to(torch.float64)
            b, t, _ = x.shape
            norms = x.reshape(b, t, nh, head_dim).norm(dim=-1)  # b, t, nh
            norms = norms * state["mask"].to(norms.device)[..., None]
            kv_sum[i] += norms.sum(dim=(0, 1)).reshape(nkv, r).sum(dim=-1).cpu()
        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.get_submodule(family.ffn["down"]).register_forward_pre_hook(ffn_hook(i)))
        handles.append(layer.get_submodule(family.attention["o"]).register_forward_pre_hook(attn_hook(i)))
    device = stream.device if stream else input_device(model)
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            seqs = [list(s) for s in sequences if len(s)]
            if stream:  # layer-major: the hooks fire as each streamed layer runs each batch
                batches = [collate([{"input_ids": s} for s in seqs[b:b + batch_size]])
                           for b in range(0, len(seqs), batch_size)]
                masks = [b["attention_mask"].to(device=device, dtype=torch.float64) for b in batches]
                prepared = stream.prepare([{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
                                           for b in batches])
                stream.run(prepared, [Stream()], lambda *_: None, on_batch=lambda b: state.update(mask=masks[b]),
                           progress=progress)
                tokens = sum(int(b["attention_mask"].sum()) for b in batches)
                seqs = []
            for b in range(0, len(seqs), batch_size):
                batch = collate([{"input_ids": s} for s in seqs[b:b + batch_size]])
                ids, mask = batch["input_ids"], batch["attention_mask"]
                state["mask"] = mask.to(device=device, dtype=torch.float64)
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                tokens += int(mask.sum())
                if progress:
                    progress(min(b + batch_size, len(seqs)), len(seqs), "scoring channels and heads")
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    denom = max(tokens, 1)
    return WidthImportance(
        ffn=[(s / denom).tolist() if s is not None else [] for s in ffn_sum],
        kv=[(s / denom).tolist() for s in kv_sum],
        tokens=tokens,
    )
