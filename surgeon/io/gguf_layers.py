"""Per-layer metadata that llama.cpp's converter drops, put back into a converted GGUF file.

llama.cpp's ``convert_hf_to_gguf.py`` writes no per-layer attention pattern for Gemma 3: it stores
the sliding window only, and llama.cpp then assumes the stock period (``load_swa_pattern(ml, 6)``:
every 6th layer global). A pruned Gemma 3, or a depth exit of one, keeps the source's
``layer_types`` (surgeon slices them), which are no longer periodic from layer 0, so the converted
model silently runs the wrong attention type on some layers once the context exceeds the window.
llama.cpp reads ``<arch>.attention.sliding_window_pattern`` as a per-layer bool array when it is
there (Gemma 3n and 4 converters write it), so :func:`add_layer_metadata` copies the GGUF file with
that array derived from the checkpoint's ``layer_types`` (gguf-py's reader and writer; tensor data
copied as is, written to a temp file beside the output and renamed into place).

Families whose converted file already carries everything per layer need nothing: the function
says so and writes nothing. A GGUF whose layer count differs from the config's is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, UsageError

# architecture (GGUF general.architecture) -> how its per-layer sliding-window pattern is derived
SWA_PATTERN_ARCHS = {"gemma3"}


@dataclass
class GgufLayersResult:
    source: str
    output: str | None  # None: nothing was missing, nothing written
    architecture: str
    added: dict  # key -> value written
    reason: str


def layer_pattern(config: dict) -> list[bool]:
    """Per layer: True for sliding-window attention, from ``layer_types``."""
    cfg = config.get("text_config") or config
    types = cfg.get("layer_types")
    if not isinstance(types, list) or len(types) != cfg.get("num_hidden_layers"):
        raise UsageError("the model's config.json has no per-layer layer_types to take the pattern from",
                         "give the Hugging Face folder the GGUF was converted from (surgeon writes layer_types)")
    return [t == "sliding_attention" for t in types]


def open_gguf(gguf_path: str | Path):
    import gguf

    try:
        return gguf.GGUFReader(str(gguf_path))
    except (ValueError, OSError) as e:
        raise CheckpointError(f"cannot read {gguf_path} as GGUF: {e}", "give a .gguf file written by llama.cpp") from None


def missing_layer_metadata(gguf_path: str | Path, config: dict, reader=None) -> tuple[str, dict]:
    """``(architecture, {key: value})`` of the per-layer metadata the file lacks (empty: nothing)."""
    reader = reader or open_gguf(gguf_path)
    arch = reader.fields["general.architecture"].contents() if "general.architecture" in reader.fields else "?"
    if arch not in SWA_PATTERN_ARCHS:
        return arch, {}
    pattern = layer_pattern(config)
    blocks = reader.fields.get(f"{arch}.block_count")
    if blocks is not None and int(blocks.contents()) != len(pattern):
        raise UsageError(f"{gguf_path} has {int(blocks.contents())} layers, config.json {len(pattern)}",
                         "give the folder this GGUF was converted from")
    key = f"{arch}.attention.sliding_window_pattern"
    field = reader.fields.get(key)
    if field is not None:
        have = field.contents()
        if isinstance(have, list) and [bool(x) for x in have] == pattern:
            return arch, {}
        if isinstance(have, list):
            raise UsageError(f"{gguf_path} declares a per-layer sliding-window pattern that differs from config.json's "
                             "layer_types", "convert the checkpoint again")
    return arch, {key: pattern}


def add_layer_metadata(gguf_path: str | Path, model: str | Path, output: str | Path) -> GgufLayersResult:
    """Write ``output``: ``gguf_path`` with the per-layer metadata of ``model``'s config it lacks."""
    import functools

    import gguf
    import gguf.scripts.gguf_new_metadata as new_metadata
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    new_metadata.tqdm = functools.partial(new_metadata.tqdm, disable=True)  # its own bar: one pass, quiet

    gguf_path, output = Path(gguf_path), Path(output)
    try:
        config = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {model}/config.json: {e}", "give the Hugging Face folder the GGUF was "
                              "converted from") from None
    if output.resolve() == gguf_path.resolve():
        raise UsageError("the output is the input GGUF", "write the fixed file to another path (-o)")
    reader = open_gguf(gguf_path)
    arch, missing = missing_layer_metadata(gguf_path, config, reader)
    if not missing:
        return GgufLayersResult(str(gguf_path), None, arch, {}, f"{arch}: nothing per-layer is missing")
    tmp = output.with_name(f".{output.name}.surgeon-tmp-{os.getpid()}")
    try:
        writer = gguf.GGUFWriter(str(tmp), arch=arch, endianess=reader.endianess)
        new = {k: MetadataDetails(gguf.GGUFValueType.ARRAY, v, sub_type=gguf.GGUFValueType.BOOL) for k, v in missing.items()}
        copy_with_new_metadata(reader, writer, new, [])
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return GgufLayersResult(str(gguf_path), str(output), arch, missing,
                            f"{arch}: added the per-layer sliding-window pattern from layer_types "
                            f"({sum(not x for x in next(iter(missing.values())))} global layers)")
