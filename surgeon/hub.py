"""Hub model IDs: ``org/name`` (``@REV``) as MODEL, resolved through ``huggingface_hub``.

One place turns a MODEL that is not a local folder into a checkpoint folder: :func:`lookup`, called by
:meth:`surgeon.io.checkpoint.Checkpoint.open` (and :func:`local_folder` for the whole-model loaders).
A local folder of that name always wins. Everything goes through ``huggingface_hub`` (its cache,
``HF_HOME``/``HF_HUB_CACHE``, ``HF_TOKEN``, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``); nothing here speaks
HTTP by hand.

What is downloaded, and when (mergekit-style laziness):

- at resolution: the repo's file list and commit (``model_info``), then only the small files surgeon
  reads (:data:`METADATA_FILES`: config, generation config, tokenizer, safetensors index, sorted
  manifest, provenance) into the hub cache's snapshot folder of that commit;
- each shard's safetensors header by an HTTP range read (``bytes=0-...``, the request
  ``HfApi.parse_safetensors_file_metadata`` makes), kept under ``HF_HOME/surgeon/safetensors-headers``
  so an offline rerun can open the checkpoint without the shards it never read;
- a shard itself (``hf_hub_download``) the first time a tensor in it is read, so ``prune``/``extract``/
  ``view``/``surgeon.load`` fetch only the shards their plan touches;
- everything allowed (:func:`HubRepo.download_all`) for the commands that hand the folder to
  transformers (eval, heal, soft, analyze, generate).

Pickle weights (``*.bin``, ``*.pt``, ``*.pth``) are never downloaded. A hub checkpoint's ``source``
(provenance, manifests) is ``org/name@<commit>``: the same command can be rerun on the same revision.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from .errors import CheckpointError

log = logging.getLogger(__name__)

# org/name, optionally @revision (a branch, tag or commit; branch names may contain '/').
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")

# The small files surgeon reads from a checkpoint folder (besides the safetensors weights).
METADATA_FILES = (
    "config.json", "generation_config.json", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "tekken.json", "chat_template.jinja",
    "chat_template.json", "preprocessor_config.json", "sorted_manifest.json", "surgeon_provenance.json",
)
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
HEADER_PROBE = 100_000  # first range read; a larger header takes a second one
MAX_HEADER_BYTES = 100_000_000  # as surgeon.io.safetensors_header (not imported: io imports this module)


@dataclass
class HubRepo:
    """One resolved revision of a hub model: its commit and the cache snapshot folder surgeon reads."""

    repo_id: str
    commit: str
    folder: Path  # HF_HUB_CACHE/models--org--name/snapshots/<commit>
    files: tuple[str, ...] | None = None  # the repo's files (None when resolved offline from the cache)
    _headers: dict = field(default_factory=dict, repr=False)

    @property
    def source(self) -> str:
        """``org/name@<commit>``: what provenance and manifests record, and what reruns the same revision."""
        return f"{self.repo_id}@{self.commit}"

    def safetensors_files(self) -> list[str]:
        if self.files is not None:
            return sorted(f for f in self.files if f.endswith(".safetensors") and "/" not in f)
        return sorted(p.name for p in self.folder.glob("*.safetensors"))

    def fetch(self, filename: str) -> Path:
        """The local path of ``filename`` of this commit, downloaded on first use."""
        local = self.folder / filename
        if local.is_file():
            return local
        from huggingface_hub import hf_hub_download

        log.info("downloading %s from %s", filename, self.source)
        bar = _download_bar() if filename.endswith(".safetensors") else None
        with hub_errors(self.repo_id, self.commit, filename):
            return Path(hf_hub_download(self.repo_id, filename, revision=self.commit, tqdm_class=bar))

    def download_all(self) -> Path:
        """Every file surgeon reads (metadata + safetensors weights) in the snapshot folder; returns it."""
        names = self.files if self.files is not None else self._weight_files_from_folder()
        for name in names:
            if name in METADATA_FILES or (name.endswith(".safetensors") and "/" not in name):
                self.fetch(name)
        return self.folder

    def _weight_files_from_folder(self) -> list[str]:
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            try:
                return sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError, OSError):
                return []
        return self.safetensors_files() or ["model.safetensors"]

    def header_bytes(self, filename: str) -> tuple[bytes, int]:
        """``(first 8 + N bytes, file size)`` of a shard: from the file when cached, else from surgeon's header
        cache, else by a range read (which fills that cache)."""
        if filename in self._headers:
            return self._headers[filename]
        cache = _header_cache(self.repo_id, self.commit, filename)
        if cache.is_file():
            try:
                d = json.loads(cache.read_text(encoding="utf-8"))
                got = (base64.b64decode(d["head"], validate=True), int(d["size"]))
                self._headers[filename] = got
                return got
            except (ValueError, KeyError, TypeError, OSError, binascii.Error):
                log.warning("ignoring an unreadable cached header %s", cache)
        from huggingface_hub import constants

        if constants.is_offline_mode():
            raise CheckpointError(
                f"HF_HUB_OFFLINE is set and {filename} of {self.repo_id} is not in the cache",
                "run once without HF_HUB_OFFLINE to fill the cache, or point MODEL at a local folder")
        got = self._range_read_header(filename)
        self._headers[filename] = got
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"size": got[1], "head": base64.b64encode(got[0]).decode("ascii")}),
                           encoding="utf-8")
            os.replace(tmp, cache)
        except OSError as e:  # the cache is an optimisation: never fail on it
            log.warning("cannot cache the header of %s: %s", filename, e)
        return got

    def _range_read_header(self, filename: str) -> tuple[bytes, int]:
        # The same requests as HfApi.parse_safetensors_file_metadata, keeping the raw bytes and the file size
        # so that surgeon's own header validation (offsets tile the file) runs on them. A server that ignores
        # the range gets the file downloaded instead (said in a warning), never read whole into memory.
        import struct

        from huggingface_hub import constants, hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        url = hf_hub_url(self.repo_id, filename, revision=self.commit, endpoint=constants.ENDPOINT)
        headers = build_hf_headers()

        def get(first: int, last: int) -> tuple[bytes, int | None] | None:
            with get_session().stream("GET", url, headers={**headers, "Range": f"bytes={first}-{last}"},
                                      timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as r:
                if r.status_code >= 400:
                    r.read()
                    hf_raise_for_status(r)
                if r.status_code != 206:
                    return None
                data = b"".join(r.iter_bytes())
                return data[: last - first + 1], _total_size(r.headers.get("Content-Range"), None)

        with hub_errors(self.repo_id, self.commit, filename):
            got = get(0, HEADER_PROBE - 1)
            if got is None or got[1] is None:
                log.warning("%s does not serve range requests: downloading %s to read its header",
                            constants.ENDPOINT, filename)
                path = self.fetch(filename)
                with open(path, "rb") as f:
                    head = f.read(8)
                    n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
                    return head + (f.read(n) if n <= MAX_HEADER_BYTES else b""), path.stat().st_size
            data, size = got
            if len(data) >= 8:
                (n,) = struct.unpack("<Q", data[:8])
                if len(data) < 8 + n <= size and n <= MAX_HEADER_BYTES:
                    more = get(len(data), n + 7)
                    if more is not None:
                        data += more[0]
                data = data[: 8 + n]
        return data, size


def _download_bar():
    """The hub's download bar for weight files, shown on a terminal even where the CLI turned the libraries'
    other bars off (``HF_HUB_DISABLE_PROGRESS_BARS``): a plain tqdm, which huggingface_hub does not silence."""
    from tqdm import tqdm

    class DownloadBar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("disable", None)  # None: a bar on a terminal, none in logs, pipes and tests
            kwargs.setdefault("leave", False)
            super().__init__(*args, **kwargs)

    return DownloadBar


def _total_size(content_range: str | None, whole: int | None) -> int | None:
    if content_range and "/" in content_range:
        tail = content_range.rsplit("/", 1)[1].strip()
        if tail.isdigit():
            return int(tail)
    return whole


def _header_cache(repo_id: str, commit: str, filename: str) -> Path:
    from huggingface_hub import constants

    return (Path(constants.HF_HOME) / "surgeon" / "safetensors-headers" / ("models--" + repo_id.replace("/", "--"))
            / commit / (filename + ".json"))


# ---------------------------------------------------------------------------------------------- resolving
def split_ref(model: str | os.PathLike) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``model`` reads as a hub ID ``org/name[@REV]``, else None."""
    m = _HUB_ID.match(str(model))
    return (m["repo"], m["rev"]) if m else None


def with_revision(model: str | os.PathLike | None, revision: str | None):
    """MODEL with ``--revision REV`` folded in (``org/name@REV``); MODEL unchanged without one."""
    if model is None or not revision:
        return model
    if os.path.exists(model):
        from .errors import UsageError

        raise UsageError(f"--revision {revision} was given but {model} is a local folder",
                         "drop --revision, or name the hub model (org/name)")
    ref = split_ref(model)
    if ref is None or ref[1] is not None:
        from .errors import UsageError

        raise UsageError(f"--revision {revision} needs a hub ID org/name without @REV, not {model}",
                         "give either --revision REV or org/name@REV")
    return type(model)(f"{model}@{revision}") if isinstance(model, Path) else f"{model}@{revision}"


def snapshot_ref(folder: Path) -> tuple[str, str] | None:
    """``(repo_id, commit)`` when ``folder`` is a snapshot folder of the hub cache, else None."""
    parts = folder.resolve().parts if folder.exists() else folder.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--") and _COMMIT.match(parts[-1]):
        return parts[-3][len("models--"):].replace("--", "/"), parts[-1]
    return None


# (repo_id, revision asked) and (repo_id, commit) -> HubRepo: one resolution (one model_info call) per process,
# however many times the command reopens the checkpoint.
_RESOLVED: dict[tuple[str, str | None], HubRepo] = {}


def clear_cache() -> None:
    """Forget this process's resolutions (a later lookup asks the Hub, or the cache, again)."""
    _RESOLVED.clear()


def lookup(model: str | os.PathLike) -> HubRepo | None:
    """The hub repo MODEL names, or None for a local path. A hub ID that is also an existing local path is
    local; a snapshot folder of the hub cache is that commit of its repo (its shards are fetched lazily)."""
    path = Path(model)
    if path.exists():
        snap = snapshot_ref(path)
        if snap is None:
            return None
        repo_id, commit = snap
        key = (repo_id, commit)
        if key not in _RESOLVED:
            _RESOLVED[key] = HubRepo(repo_id, commit, path.resolve(), _cached_files(repo_id, commit))
        return _RESOLVED[key]
    ref = split_ref(model)
    if ref is None:
        return None
    if ref not in _RESOLVED:
        repo = resolve(*ref)
        _RESOLVED[ref] = repo
        _RESOLVED[(repo.repo_id, repo.commit)] = repo
    return _RESOLVED[ref]


def _cached_files(repo_id: str, commit: str) -> tuple[str, ...] | None:
    for repo in _RESOLVED.values():
        if repo.repo_id == repo_id and repo.commit == commit:
            return repo.files
    return None


def resolve(repo_id: str, revision: str | None = None) -> HubRepo:
    """Resolve ``repo_id`` at ``revision`` (default ``main``) to a commit and download its metadata files.

    Offline (``HF_HUB_OFFLINE=1``) the revision is resolved from the cache alone. Raises
    :class:`~surgeon.errors.CheckpointError` with the fix for every failure (:func:`hub_errors`).
    """
    from huggingface_hub import HfApi, constants, hf_hub_download

    rev = revision or "main"
    if constants.is_offline_mode():
        with hub_errors(repo_id, rev):
            config = Path(hf_hub_download(repo_id, "config.json", revision=rev, local_files_only=True))
        folder = config.parent
        repo = HubRepo(repo_id, folder.name, folder, None)
        if not repo.safetensors_files() and not (folder / "model.safetensors.index.json").is_file():
            _check_weights(repo_id, [p.name for p in folder.iterdir()])
        return repo

    with hub_errors(repo_id, rev):
        info = HfApi().model_info(repo_id, revision=rev)
    files = tuple(s.rfilename for s in (info.siblings or []))
    _check_weights(repo_id, files)
    if "config.json" not in files:
        raise CheckpointError(f"{repo_id} has no config.json at revision {rev}",
                              "surgeon reads Hugging Face transformers checkpoints (config.json + safetensors)")
    with hub_errors(repo_id, rev, "config.json"):  # by the revision name, so the cache learns refs/<rev>
        config = Path(hf_hub_download(repo_id, "config.json", revision=rev))
    folder = config.parent
    repo = HubRepo(repo_id, folder.name, folder, files)
    if info.sha and info.sha != repo.commit:
        log.warning("%s moved while resolving %s (%s, then %s)", repo_id, rev, info.sha, repo.commit)
    for name in METADATA_FILES:
        if name in files:
            repo.fetch(name)
    return repo


def _check_weights(repo_id: str, files) -> None:
    names = [f for f in files if "/" not in f]
    if any(f.endswith(".safetensors") for f in names):
        return
    pickles = [f for f in names if any(fnmatch(f, p) for p in PICKLE_PATTERNS)]
    if pickles:
        raise CheckpointError(
            f"{repo_id} holds only pickle weights ({sorted(pickles)[0]}); surgeon does not unpickle files",
            "use a revision or copy of the model with safetensors weights, or convert it in a trusted environment "
            "(model.save_pretrained(dir, safe_serialization=True)) and point MODEL at that folder")
    raise CheckpointError(f"{repo_id} has no safetensors weights",
                          "point MODEL at a Hugging Face model with model.safetensors (or an index and shards)")


def local_folder(model: str | os.PathLike) -> Path:
    """A local folder with every file surgeon reads, for loaders that take a folder (transformers'
    ``from_pretrained``): MODEL itself when local, else its hub snapshot with all files downloaded."""
    repo = lookup(model)
    return Path(model) if repo is None else repo.download_all()


# ---------------------------------------------------------------------------------------------- errors
class hub_errors:  # noqa: N801 - used as `with hub_errors(...)`
    """Turn huggingface_hub / network exceptions into one-line :class:`CheckpointError`\\ s naming the fix."""

    def __init__(self, repo_id: str, revision: str | None = None, filename: str | None = None):
        self.repo_id, self.revision, self.filename = repo_id, revision, filename

    def __enter__(self):
        return self

    def __exit__(self, tp, e, tb):
        if e is None or isinstance(e, CheckpointError) or not isinstance(e, Exception):
            return False
        err = translate(e, self.repo_id, self.revision, self.filename)
        if err is None:
            return False
        raise err from None


def translate(e: Exception, repo_id: str, revision: str | None, filename: str | None) -> CheckpointError | None:
    from huggingface_hub import constants
    from huggingface_hub import errors as he

    rev = revision or "main"
    what = f"{filename} of {repo_id}" if filename else repo_id
    offline = isinstance(e, he.OfflineModeIsEnabled) or constants.is_offline_mode()
    if isinstance(e, he.GatedRepoError):
        return CheckpointError(f"{repo_id} is a gated model and no token with access to it was sent",
                               "accept its terms on the Hub, then set HF_TOKEN or run `huggingface-cli login`")
    if isinstance(e, he.RepositoryNotFoundError):
        return CheckpointError(f"{repo_id} is neither a local folder nor a model on the Hugging Face Hub "
                               f"({constants.ENDPOINT})",
                               "check the name (org/name); for a private model set HF_TOKEN or run `huggingface-cli login`")
    if isinstance(e, he.RevisionNotFoundError):
        return CheckpointError(f"{repo_id} has no revision {rev!r}",
                               "give a branch, tag or commit of the repo (--revision REV or org/name@REV)")
    if isinstance(e, he.EntryNotFoundError) and not isinstance(e, he.LocalEntryNotFoundError):
        return CheckpointError(f"{repo_id} at {rev} has no file {filename}",
                               "the repo is incomplete; pick another revision or point MODEL at a local folder")
    if offline and isinstance(e, (he.LocalEntryNotFoundError, he.OfflineModeIsEnabled, FileNotFoundError)):
        return CheckpointError(f"HF_HUB_OFFLINE is set and {what} (revision {rev}) is not in the cache",
                               "run once without HF_HUB_OFFLINE to fill the cache, or point MODEL at a local folder")
    if _is_network_error(e):
        return CheckpointError(f"cannot reach the Hugging Face Hub ({constants.ENDPOINT}) for {what}",
                               "check the network; or set HF_HUB_OFFLINE=1 to use a filled cache, or point MODEL at "
                               "a local folder")
    if isinstance(e, he.HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", "an error")
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        return CheckpointError(f"the Hugging Face Hub answered {status} for {what}: {first}",
                               "retry later, or point MODEL at a local folder")
    return None


def _is_network_error(e: BaseException) -> bool:
    from huggingface_hub import errors as he

    if isinstance(e, he.LocalEntryNotFoundError):  # hf_hub_download: no connection and nothing cached
        return True
    for cls in type(e).__mro__:
        if cls.__module__.split(".")[0] in ("httpx", "httpx2", "httpcore") and cls.__name__ in (
                "ConnectError", "TimeoutException", "NetworkError", "TransportError", "ProxyError"):
            return True
    return isinstance(e, (ConnectionError, TimeoutError))
