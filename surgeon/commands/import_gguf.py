"""``surgeon import-gguf``: dequantize a GGUF model into a float safetensors checkpoint.

Uses transformers' own GGUF loader (which needs the ``gguf`` package), so every architecture
transformers can read from GGUF works here. The model is dequantized in memory (GGUF files are
small enough that this is the norm), the quantization marker is dropped so the result is a plain
float checkpoint, and the tokenizer (with its chat template) is written beside it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..arch.legacy import with_legacy_keys
from ..errors import CheckpointError, UsageError
from ..io.atomic import atomic_output, check_output
from ..options import OutputFolder, OutputOptions, opt, with_default
from ..provenance import operation, sha256_file, write_chain
from ..units import FLOAT_CHOICES, torch_name

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ImportOptions(OutputFolder):
    gguf_file: Path = opt(help="The .gguf file.", cli=False)
    # the output cast, as everywhere: here the dtype the dequantized weights are written in
    dtype: str = with_default(OutputOptions, "dtype", "fp32",
                              "Float dtype of the dequantized weights (fp32 keeps GGUF values exactly).")

    def __post_init__(self):
        self.check_output_folder("imported checkpoint")


@dataclass
class ImportResult:
    output: str
    architecture: str
    num_layers: int
    num_parameters: int
    dtype: str
    source_sha256: str


def run(opts: ImportOptions) -> ImportResult:
    """``surgeon import-gguf``: see :func:`import_gguf`."""
    return import_gguf(opts.gguf_file, opts.output, dtype=opts.dtype, force=opts.force)


def import_gguf(gguf_file: str | Path, out: str | Path, dtype: str = "fp32", force: bool = False) -> ImportResult:
    """Convert ``gguf_file`` into a Hugging Face folder at ``out`` (atomically)."""
    gguf_file = Path(gguf_file)
    if dtype not in FLOAT_CHOICES and dtype not in ("float32", "bfloat16", "float16"):
        raise UsageError(f"unknown dtype {dtype!r}", "use fp32, bf16 or fp16")
    if not gguf_file.is_file():
        raise CheckpointError(f"{gguf_file} does not exist", "give the path of a .gguf file")
    with open(gguf_file, "rb") as f:
        if f.read(4) != b"GGUF":
            raise CheckpointError(f"{gguf_file} is not a GGUF file (bad magic)", "give the path of a .gguf file")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UsageError("reading GGUF needs the gguf package", "pip install gguf") from None
    check_output(Path(out), None, force)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, torch_name(dtype))
    folder, name = str(gguf_file.parent), gguf_file.name
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch_dtype)
        # the tokenizer inside the GGUF file, not a folder's files: not surgeon.tokenizer.load_tokenizer
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(
            f"transformers cannot read {gguf_file.name}: {str(e).splitlines()[0]}",
            "check that its architecture is supported by transformers' GGUF loader",
        ) from None
    # Drop the GGUF quantization marker: the weights are now plain floats.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if attr in model.__dict__:
            delattr(model, attr)
    model.config.dtype = torch_dtype
    source_sha = sha256_file(gguf_file)
    with atomic_output(out, None, force) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        cfg_path = tmp / "config.json"  # the v4 key spellings beside the v5 ones, for other runtimes
        cfg_path.write_text(json.dumps(with_legacy_keys(json.loads(cfg_path.read_text())), indent=2, sort_keys=True)
                            + "\n", encoding="utf-8")
        write_chain(tmp, None, operation(
            "import-gguf", gguf_file, {"dtype": torch_name(dtype)}, source_sha256=source_sha,
        ))
    n = sum(p.numel() for p in model.parameters())
    return ImportResult(
        output=str(out), architecture=model.config.architectures[0] if model.config.architectures else model.config.model_type,
        num_layers=model.config.num_hidden_layers, num_parameters=n, dtype=torch_name(dtype), source_sha256=source_sha,
    )
