"""The sorted manifest's constants (format version 1) and its error.

The normative description is ``formats/sorted-manifest/SPEC.md``. The library holds a manifest as
its JSON object, validated by :func:`~surgeon.manifest.validate.validate_manifest` (so every key it
reads is there) and written back byte for byte by :func:`~surgeon.manifest.store.dumps`; an exit
request resolves to an :class:`~surgeon.exits.ExitSpec` (:mod:`surgeon.manifest.resolve`).
"""

from __future__ import annotations

from ..errors import CheckpointError

FORMAT = "sorted-manifest"
FORMAT_VERSION = 1  # bumped only for a structural change (see SPEC.md, "Versioning")
MANIFEST_FILE = "sorted_manifest.json"
HEADER_KEY = "sorted_manifest"  # key in a safetensors __metadata__ / the index's "metadata"
HEADER_LIMIT = 64 * 1024  # a compact copy larger than this is replaced by a pointer
KNOWN_FEATURES = frozenset({"width-prefix"})
# Multiply-accumulate = 2 FLOPs over every weight an exit multiplies per token: its layers plus the
# LM-head matmul (d_model * vocab, counted even when tied). Embedding lookup, norms and the
# context-dependent attention-score FLOPs are excluded (Kaplan et al. 2020, C_forward ~ 2N).
FLOPS_FORMULA = "2*(P_layers+d_model*vocab)"
METRICS = frozenset({"loss", "perplexity", "kl_full_exit", "top1_agreement"})


class ManifestError(CheckpointError):
    """A sorted manifest that is missing, malformed, or does not match its checkpoint."""

