"""``surgeon fix-gguf FILE.gguf --model DIR -o OUT.gguf``: put back the per-layer metadata llama.cpp's
converter drops (Gemma 3's sliding-window pattern after pruning or a depth exit); see
:mod:`surgeon.io.gguf_layers`. The input GGUF is never modified; nothing is written when nothing
is missing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputError, UsageError
from ..io.gguf_layers import GgufLayersResult, add_layer_metadata
from ..options import OutputFolder, opt, with_default


@dataclass(frozen=True, kw_only=True)
class FixGgufOptions(OutputFolder):
    gguf: Path = opt(help="A GGUF file converted by llama.cpp's convert_hf_to_gguf.py.", cli=False)
    model: Path = opt(None, "The Hugging Face folder it was converted from (its config.json's layer_types).")
    output: Path | None = with_default(OutputFolder, "output", None, "The fixed GGUF file to write.")
    force: bool = with_default(OutputFolder, "force", False, "Replace an existing output file.")

    def __post_init__(self):
        if self.model is None or self.output is None:
            raise UsageError("--model and -o/--output are required",
                             "e.g. surgeon fix-gguf pruned.gguf --model pruned/ -o pruned-fixed.gguf")
        if not Path(self.gguf).is_file():
            raise UsageError(f"{self.gguf} is not a file", "give the .gguf file the converter wrote")
        if Path(self.output).exists() and not self.force:
            raise OutputError(f"{self.output} exists", "choose another -o path, or add --force")


def run(opts: FixGgufOptions) -> GgufLayersResult:
    return add_layer_metadata(opts.gguf, opts.model, opts.output)
