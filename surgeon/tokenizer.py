"""The one way to load a checkpoint folder's tokenizer (every command, the runtime, the library).

A folder without tokenizer files fails the same way from every caller: one
:class:`~surgeon.errors.CheckpointError` naming the folder and the fix (:func:`missing_tokenizer`).
Only ``surgeon import-gguf`` reads a tokenizer differently: from inside a GGUF file (transformers'
``gguf_file=`` conversion), not from a checkpoint folder.
"""

from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError

# Any of these makes a folder a tokenizer folder for transformers' AutoTokenizer (fast tokenizer,
# its config, SentencePiece, byte-level BPE / WordPiece vocabularies, Mistral's tekken).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model",
                   "vocab.json", "vocab.txt", "tekken.json")


def has_tokenizer(path: str | Path) -> bool:
    """Whether the folder ``path`` holds tokenizer files (not whether they load)."""
    return any((Path(path) / name).is_file() for name in TOKENIZER_FILES)


def missing_tokenizer(path: str | Path) -> CheckpointError:
    """The error for a checkpoint folder without tokenizer files (raised by :func:`load_tokenizer`)."""
    return CheckpointError(f"{path} has no tokenizer (no tokenizer.json, tokenizer.model or tokenizer_config.json)",
                           f"copy the tokenizer files of the model it came from into {path}")


def load_tokenizer(path: str | Path, *, required: bool = True):
    """The tokenizer saved in the checkpoint folder ``path`` (``AutoTokenizer.from_pretrained``).

    Raises :class:`~surgeon.errors.CheckpointError` when the folder is not a checkpoint, has no tokenizer
    files (:func:`missing_tokenizer`) or its tokenizer files do not load. With ``required=False`` a
    folder without tokenizer files gives None instead (token ids only); broken files still raise.
    """
    from .hub import lookup

    repo = lookup(path)  # a hub model ID: its cache snapshot (the tokenizer files are fetched with the config)
    folder = repo.folder if repo is not None else Path(path)
    if not (folder / "config.json").is_file():  # not a checkpoint folder: the checkpoint reader's own error
        from .io.checkpoint import Checkpoint

        Checkpoint.open(folder)
    if not has_tokenizer(folder):
        if not required:
            return None
        raise missing_tokenizer(folder)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception for a file it cannot parse
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise CheckpointError(f"cannot load the tokenizer in {folder}: {first}",
                              f"repair its tokenizer files, or copy those of the model it came from into {folder}"
                              ) from None
