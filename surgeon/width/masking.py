"""Run a loaded model as its width sub-model without copying weights (nested width, SortedNet).

:func:`width_mask` registers forward pre-hooks that zero the input of each layer's ``down_proj``
beyond the first ``ffn`` channels and the input of ``o_proj`` beyond the query heads of the first
``kv_heads`` KV groups. The result equals the extracted sub-model (``extract --ffn --heads``)
because a dropped channel/head contributes to the residual stream only through those two
projections. Used by SoFT along width (one pass per sampled (depth, width) pair) and by
``surgeon.load`` style evaluation of width exits on a full checkpoint. Gradients flow through the
kept channels only, as in SortedNet's "first k" sub-networks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..arch.registry import Family, resolve_family


def model_family(model) -> Family:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return resolve_family(cfg.to_dict(), [n for n, _ in model.named_parameters()])


@contextmanager
def width_mask(model, ffn: int | None = None, kv_heads: int | None = None, family: Family | None = None) -> Iterator[None]:
    """Inside the ``with`` block ``model`` computes the first-``ffn``-channels / first-``kv_heads``-groups
    sub-model. ``None`` keeps that dimension whole."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model's wrapped model
    cfg = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    fam = family or model_family(base)
    nh = cfg.num_attention_heads
    nkv = getattr(cfg, "num_key_value_heads", None) or nh
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    q_cols = None if kv_heads is None or kv_heads >= nkv else kv_heads * (nh // nkv) * head_dim
    if ffn is not None and ffn >= cfg.intermediate_size:
        ffn = None

    def cut(k):
        def hook(_mod, args):
            x = args[0]
            keep = x.new_zeros(x.shape[-1])
            keep[:k] = 1
            return (x * keep,) + tuple(args[1:])
        return hook

    handles = []
    try:
        for layer in base.get_submodule(fam.layers):
            if ffn is not None:
                handles.append(layer.get_submodule(fam.ffn["down"]).register_forward_pre_hook(cut(ffn)))
            if q_cols is not None:
                handles.append(layer.get_submodule(fam.attention["o"]).register_forward_pre_hook(cut(q_cols)))
        yield
    finally:
        for h in handles:
            h.remove()
