"""A lazy view of a Hugging Face checkpoint folder: config + safetensors headers, tensors on demand.

Opening a checkpoint reads ``config.json``, the index (when sharded) and every shard's header,
and checks that they agree. No tensor is read until asked for, and then one at a time, straight
from its byte range (no mmap, so resident memory stays at one tensor). Pickle files are never read.

MODEL may also be a hub ID ``org/name[@REV]`` (:mod:`surgeon.hub`; a local folder of that name wins):
the folder is then the hub cache's snapshot of that commit, holding the small files; the shard headers
come from range reads and each shard is downloaded the first time one of its tensors is read
(:meth:`Checkpoint.file`), so a plan that reads some shards fetches only those.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..errors import CheckpointError
from ..units import torch_dtype
from .safetensors_header import SafetensorsHeader, TensorInfo, parse_header, read_header

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "model.ckpt")

# Tokenizer, generation and template files a derived checkpoint carries over unchanged.
SIDE_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
    "generation_config.json", "preprocessor_config.json",
)

def _safe_relpath(folder: Path, name: str, what: str) -> Path:
    """Resolve ``name`` inside ``folder``, refusing absolute paths and anything that escapes it."""
    if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in Path(name).parts or "\\" in name:
        raise CheckpointError(
            f"{what} names the file {name!r}, outside the checkpoint folder",
            "a checkpoint may only reference files inside its own folder; fix or regenerate the index",
        )
    return folder / name


def load_json(path: Path, what: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist", f"{what} is required") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path.name} is not valid JSON ({e.__class__.__name__})", f"repair or regenerate {what}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}", "check the path and its permissions") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name} is not a JSON object", f"repair or regenerate {what}")
    return data


@dataclass
class Checkpoint:
    """A checkpoint folder, opened lazily. Build it with :meth:`open`."""

    path: Path
    config: dict
    tensors: dict[str, TensorInfo]
    files: list[str]  # weight files, in index order
    file_metadata: dict[str, dict[str, str]]  # __metadata__ of each weight file
    index_metadata: dict | None  # "metadata" of model.safetensors.index.json, when sharded
    source: str = ""  # what provenance records: the folder as given, or org/name@<commit> for a hub model
    hub: object = None  # the surgeon.hub.HubRepo of a hub model (None: a local folder)
    file_sizes: dict[str, int] = field(default_factory=dict)  # weight file -> bytes
    _handles: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike) -> Checkpoint:
        """Open the checkpoint folder ``path``, or the hub model ``org/name[@REV]`` (see the module doc)."""
        from .. import hub as _hub

        repo = _hub.lookup(path)
        folder = repo.folder if repo is not None else Path(path)
        if not folder.exists():
            raise CheckpointError(f"{folder} does not exist",
                                  "point MODEL at a Hugging Face checkpoint folder or a hub model ID (org/name)")
        if folder.is_file():
            if folder.suffix == ".gguf":
                raise CheckpointError(
                    f"{folder} is a GGUF file", f"convert it first: surgeon import-gguf {folder} -o DIR"
                )
            raise CheckpointError(f"{folder} is a file", "point MODEL at a Hugging Face checkpoint folder")
        if not (folder / "config.json").exists():
            raise CheckpointError(
                f"{folder} has no config.json", "point MODEL at a Hugging Face checkpoint folder"
            )
        config = load_json(folder / "config.json", "config.json")

        index_path = folder / INDEX_FILE
        if index_path.exists():
            index = load_json(index_path, INDEX_FILE)
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{INDEX_FILE} has no weight_map", "regenerate the index with save_pretrained")
            files = list(dict.fromkeys(weight_map.values()))
            for name in files:
                _safe_relpath(folder, name, INDEX_FILE)
            index_metadata = index.get("metadata") if isinstance(index.get("metadata"), dict) else {}
        elif (folder / SINGLE_FILE).exists() or (repo is not None and SINGLE_FILE in repo.safetensors_files()):
            weight_map, files, index_metadata = None, [SINGLE_FILE], None
        else:
            loose = sorted({p.name for p in folder.glob("*.safetensors")} | set(repo.safetensors_files() if repo else ()))
            pickles = [n for n in PICKLE_NAMES if (folder / n).exists()] + sorted(
                p.name for p in folder.glob("*.bin")
            )
            if pickles and not loose:
                raise CheckpointError(
                    f"{folder} holds only pickle weights ({pickles[0]}); surgeon never unpickles files",
                    "convert to safetensors in a trusted environment "
                    "(model.save_pretrained(dir, safe_serialization=True)) and point MODEL at that",
                )
            if len(loose) == 1:
                weight_map, files, index_metadata = None, loose, None
            elif loose:
                raise CheckpointError(
                    f"{folder} has {len(loose)} safetensors files but no {INDEX_FILE}",
                    "add the index file that save_pretrained writes with the shards",
                )
            else:
                raise CheckpointError(f"{folder} has no safetensors weights", "point MODEL at a checkpoint folder with model.safetensors")

        tensors: dict[str, TensorInfo] = {}
        file_metadata: dict[str, dict[str, str]] = {}
        file_sizes: dict[str, int] = {}
        for name in files:
            fpath = folder / name
            header: SafetensorsHeader
            if fpath.exists():
                header = read_header(fpath, name)
            elif repo is not None:  # not downloaded yet: the header alone, by a range read (or its cache)
                if repo.files is not None and name not in repo.files:
                    raise CheckpointError(f"{INDEX_FILE} of {repo.source} names the shard {name}, which the repo "
                                          "does not have", "the repo is incomplete; pick another revision")
                head, size = repo.header_bytes(name)
                header = parse_header(head, size, name, fpath)
            else:
                raise CheckpointError(
                    f"{INDEX_FILE} names the shard {name}, which is missing",
                    "copy the missing shard into the folder or re-download the checkpoint",
                )
            file_metadata[name] = header.metadata
            file_sizes[name] = header.file_size
            for tname, info in header.tensors.items():
                if tname in tensors:
                    raise CheckpointError(
                        f"tensor {tname} appears in both {tensors[tname].file} and {name}",
                        "the shards overlap; re-export the checkpoint",
                    )
                tensors[tname] = info

        if weight_map is not None:
            for tname, fname in weight_map.items():
                if tname not in tensors:
                    raise CheckpointError(
                        f"{INDEX_FILE} maps {tname} to {fname}, but that shard does not contain it",
                        "the index and shards disagree; regenerate the index or re-download",
                    )
                if tensors[tname].file != fname:
                    raise CheckpointError(
                        f"{INDEX_FILE} maps {tname} to {fname}, but it is in {tensors[tname].file}",
                        "the index and shards disagree; regenerate the index or re-download",
                    )
            extra = [t for t in tensors if t not in weight_map]
            if extra:
                raise CheckpointError(
                    f"{len(extra)} tensors (e.g. {extra[0]}) are in the shards but not in {INDEX_FILE}",
                    "the index and shards disagree; regenerate the index or re-download",
                )
        source = repo.source if repo is not None else str(folder)
        return cls(folder, config, tensors, files, file_metadata, index_metadata, source=source, hub=repo,
                   file_sizes=file_sizes)

    # ------------------------------------------------------------------ facts
    @property
    def sharded(self) -> bool:
        return self.index_metadata is not None

    @property
    def num_parameters(self) -> int:
        """Exact element count of every stored tensor (tied weights are stored once)."""
        return sum(t.numel for t in self.tensors.values())

    @property
    def weight_bytes(self) -> int:
        return sum(self.file_sizes[f] if f in self.file_sizes else (self.path / f).stat().st_size for f in self.files)

    @property
    def dtypes(self) -> dict[str, int]:
        """Parameter count per stored dtype."""
        c: Counter[str] = Counter()
        for t in self.tensors.values():
            c[t.dtype] += t.numel
        return dict(c)

    @property
    def num_layers(self) -> int:
        n = self.text_config.get("num_hidden_layers")
        if not isinstance(n, int) or n < 1:
            raise CheckpointError("config.json has no positive num_hidden_layers", "this is not a decoder LLM config")
        return n

    @cached_property
    def text_config(self) -> dict:
        """The decoder's config: ``config`` itself, or its ``text_config`` for wrapper configs."""
        tc = self.config.get("text_config")
        if "num_hidden_layers" not in self.config and isinstance(tc, dict):
            return tc
        return self.config

    def side_files(self) -> list[str]:
        return [n for n in SIDE_FILES if (self.path / n).is_file()]

    def file(self, name: str) -> Path:
        """The local path of the weight file ``name``; a hub model's shard is downloaded on first use."""
        if self.hub is not None:
            return self.hub.fetch(name)
        return self.path / name

    # ------------------------------------------------------------------ reading
    def read_bytes(self, name: str) -> bytes:
        info = self._info(name)
        with open(self.file(info.file), "rb") as f:
            f.seek(info.begin)
            data = f.read(info.nbytes)
        if len(data) != info.nbytes:
            raise CheckpointError(f"{info.file} ends inside tensor {name}: truncated", "re-download the checkpoint")
        return data

    def get_tensor(self, name: str):
        """Read one tensor straight into a fresh (writable) CPU torch tensor: one copy, no mmap."""
        import torch

        info = self._info(name)
        dtype = torch_dtype(info.dtype)
        if info.numel == 0:
            return torch.empty(info.shape, dtype=dtype)
        buf = bytearray(info.nbytes)
        with open(self.file(info.file), "rb", buffering=0) as f:
            f.seek(info.begin)
            got = f.readinto(buf)
        if got != info.nbytes:
            raise CheckpointError(f"{info.file} ends inside tensor {name}: truncated", "re-download the checkpoint")
        return torch.frombuffer(buf, dtype=dtype).reshape(info.shape)

    def get_rows(self, name: str, rows) -> object:
        """Rows ``rows`` (ascending distinct indices into the first axis) of tensor ``name``, read straight
        from their byte ranges (one read per run of consecutive rows): an embedding lookup never holds
        the whole matrix."""
        import torch

        info = self._info(name)
        dtype = torch_dtype(info.dtype)
        rows = [int(r) for r in rows]
        n = info.shape[0] if info.shape else 0
        bad = [r for r in rows if not 0 <= r < n]
        if bad:
            raise CheckpointError(f"row {bad[0]} of tensor {name} is out of range (it has {n})",
                                  "token ids must be below the model's vocabulary size; check the tokenizer")
        if not rows:
            return torch.empty((0, *info.shape[1:]), dtype=dtype)
        per = info.nbytes // n
        buf = bytearray(per * len(rows))
        view = memoryview(buf)
        with open(self.file(info.file), "rb", buffering=0) as f:
            i = 0
            while i < len(rows):
                j = i
                while j + 1 < len(rows) and rows[j + 1] == rows[j] + 1:
                    j += 1
                f.seek(info.begin + rows[i] * per)
                want = (j - i + 1) * per
                if f.readinto(view[i * per:i * per + want]) != want:
                    raise CheckpointError(f"{info.file} ends inside tensor {name}: truncated", "re-download the checkpoint")
                i = j + 1
        return torch.frombuffer(buf, dtype=dtype).reshape(len(rows), *info.shape[1:])

    def iter_tensors(self, names: Iterable[str] | None = None) -> Iterator[tuple[str, object]]:
        """Yield ``(name, tensor)`` one at a time, in file order so reads are sequential."""
        wanted = list(self.tensors) if names is None else list(names)
        for n in wanted:
            self._info(n)
        order = {f: i for i, f in enumerate(self.files)}
        wanted.sort(key=lambda n: (order[self.tensors[n].file], self.tensors[n].begin))
        for n in wanted:
            yield n, self.get_tensor(n)

    def _info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.path} has no tensor {name}", "check the tensor name (surgeon inspect lists them)") from None
