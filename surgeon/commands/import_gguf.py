"""``surgeon import-gguf``: dequantize a GGUF model into a float safetensors checkpoint.

Uses transformers' own GGUF support (which needs the ``gguf`` package), so every architecture
transformers can read from GGUF works here. The weights are dequantized and written tensor by tensor
(:mod:`surgeon.io.gguf_import`: one block of rows resident, never the model), byte for byte what
loading the file whole with transformers and saving it writes; architectures whose GGUF tensors
transformers merges are loaded whole. The quantization marker is dropped, so the result is a plain
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
from ..units import FLOAT_CHOICES, torch_dtype, torch_name

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


def import_gguf(gguf_file: str | Path, out: str | Path, dtype: str = "fp32", force: bool = False, *,
                whole: bool = False) -> ImportResult:
    """Convert ``gguf_file`` into a Hugging Face folder at ``out`` (atomically), tensor by tensor.

    ``whole=True`` loads the model whole through transformers instead (the same files; the reference
    the streamed path is tested against)."""
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

    from transformers import AutoTokenizer

    from ..io import gguf_import
    from ..io.gguf_tensors import GgufTensors

    dt = torch_dtype(dtype)
    folder, name = str(gguf_file.parent), gguf_file.name
    try:
        tensors = None if whole else GgufTensors(gguf_file)
        reason = "asked" if tensors is None else gguf_import.not_streamable(tensors)
        plan = None if reason else gguf_import.plan_import(gguf_file, dt, tensors)
        # the tokenizer inside the GGUF file, not a folder's files: not surgeon.tokenizer.load_tokenizer
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, IndexError, RuntimeError) as e:  # IndexError: a header cut short
        raise CheckpointError(
            f"transformers cannot read {gguf_file.name}: {str(e).splitlines()[0]}",
            "check that its architecture is supported by transformers' GGUF loader",
        ) from None
    if reason and not whole:
        log.warning("loading %s whole (%s): this needs memory for the whole dequantized model", gguf_file.name, reason)
    source_sha = sha256_file(gguf_file)
    with atomic_output(out, None, force) as tmp:
        tok.save_pretrained(tmp)
        del tok  # a large vocabulary is not kept while the weights are written
        if plan is not None:
            with tensors:
                config, n = gguf_import.write_streamed(plan, tensors, tmp)
        else:
            config, n = gguf_import.write_whole(gguf_file, tmp, dt)
        cfg_path = tmp / "config.json"  # the v4 key spellings beside the v5 ones, for other runtimes
        cfg_path.write_text(json.dumps(with_legacy_keys(json.loads(cfg_path.read_text())), indent=2, sort_keys=True)
                            + "\n", encoding="utf-8")
        write_chain(tmp, None, operation(
            "import-gguf", gguf_file, {"dtype": torch_name(dtype)}, source_sha256=source_sha,
        ))
    return ImportResult(
        output=str(out), architecture=config.architectures[0] if config.architectures else config.model_type,
        num_layers=config.num_hidden_layers, num_parameters=n, dtype=torch_name(dtype), source_sha256=source_sha,
    )
