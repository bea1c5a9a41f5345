"""The same depth surgery done on a loaded transformers model (the ground truth for rewrites).

``keep_layers_in_memory(model, keep)`` deletes the other decoder layers from the ModuleList,
renumbers each kept attention's ``layer_idx`` (it indexes the KV cache) and slices the config's
per-layer keys exactly as :func:`~.config.slice_layers_config` does for config.json.
"""

from __future__ import annotations

from ..arch.registry import resolve_family
from .config import slice_layers_config


def keep_layers_in_memory(model, keep: list[int]):
    """Mutate ``model`` to keep only decoder layers ``keep`` (in that order). Returns the model."""
    import torch

    cfg = model.config
    family = resolve_family(cfg.to_dict(), [n for n, _ in model.named_parameters()])
    layers = model.get_submodule(family.layers)
    kept = torch.nn.ModuleList([layers[i] for i in keep])
    parent_path, attr = family.layers.rsplit(".", 1)
    parent = model
    for part in parent_path.split("."):
        parent = getattr(parent, part)
    setattr(parent, attr, kept)
    for new_i, layer in enumerate(kept):
        for mod in layer.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = new_i
    new_cfg = slice_layers_config(cfg.to_dict(), family, keep)
    for key in ("num_hidden_layers", *family.config_layer_keys):
        if key in new_cfg and hasattr(cfg, key):
            setattr(cfg, key, new_cfg[key])
    return model
