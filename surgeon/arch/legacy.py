"""Config keys every runtime reads: the pre-transformers-5 spellings beside the new ones.

transformers 5 writes ``rope_parameters: {rope_theta, rope_type, ...}`` and ``dtype``; runtimes that
read configs themselves still look for the v4 keys (MLX-LM 0.32 reads only a top-level
``rope_theta`` and silently falls back to 10000: on SmolLM2, whose theta is 100000, its logits
then differ from transformers' by up to 4.0). :func:`with_legacy_keys` adds ``rope_theta`` (and
``rope_scaling`` for a non-default rope type; Gemma 3's per-attention-type parameters become
``rope_theta`` + ``rope_local_base_freq``) and ``torch_dtype`` where they are missing. Stock
transformers 5 loads a config carrying both spellings without a warning. surgeon applies it to the
configs it writes from scratch (``import-gguf``); rewrites keep their source's keys.
"""

from __future__ import annotations


def with_legacy_keys(config: dict) -> dict:
    """``config`` with the v4 spellings added where only the v5 ones are present (nested text configs too)."""
    out = dict(config)
    rp = out.get("rope_parameters")
    if isinstance(rp, dict):
        if "full_attention" in rp and isinstance(rp["full_attention"], dict):  # per attention type (Gemma 3)
            full, local = rp["full_attention"], rp.get("sliding_attention") or {}
            if "rope_theta" in full:
                out.setdefault("rope_theta", full["rope_theta"])
            if "rope_theta" in local:
                out.setdefault("rope_local_base_freq", local["rope_theta"])
            rp = full
        elif "rope_theta" in rp:
            out.setdefault("rope_theta", rp["rope_theta"])
        if rp.get("rope_type", "default") != "default" and "rope_scaling" not in out:
            out["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
    if "dtype" in out and "torch_dtype" not in out:
        out["torch_dtype"] = out["dtype"]
    if isinstance(out.get("text_config"), dict):
        out["text_config"] = with_legacy_keys(out["text_config"])
    return out
