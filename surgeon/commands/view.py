"""``surgeon view MODEL --exit NAME -o DIR``: one depth exit as a plain Hugging Face folder, at no disk cost.

A sorted checkpoint written with exit-aligned shards (every surgeon output that declares exits;
``surgeon manifest --align-shards`` re-shards an older one) keeps the shared tensors (embedding,
final norm, LM head) in their own file(s) and puts every exit boundary between two files. The view
of a prefix exit of ``k`` layers is then: the exit's ``config.json`` (from the manifest), **hard
links** to the shared file(s), to the files holding layers ``0..k-1`` and to the tokenizer and other
side files, and an index naming exactly those tensors (a few kB of new files in all). Every runtime loads it
as an ordinary checkpoint of ``k`` layers (no unused tensors, no config overrides).

Where a link cannot be made, the view is a streamed copy of just the exit's tensors (the
``surgeon extract --exit`` path), and the result says why (``mode="copy"``, ``reason``): the source
is not exit-aligned for this exit, the target is on another file system, or the exit has widths
(its tensors must be sliced). A non-prefix exit is copied the same way (its layers are renumbered).

The view's own sorted manifest lists the source's exits that are prefixes of this one (their
quality records kept, except those measured against the source's full model) and a ``view`` object
naming the source folder, the exit and the source's config hash (SPEC §4); the weight hashes are the
source's (the bytes are the same files). ``surgeon inspect`` shows it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OutputError, UsageError
from ..exits import default_name, prefix_depth
from ..io.checkpoint import Checkpoint
from ..options import OutputFolder, opt, with_default
from ..progress import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ViewOptions(OutputFolder):
    model: Path = opt(help="A sorted checkpoint folder (with a sorted manifest).", cli=False)
    exit: str = opt(None, "The exit to view: a manifest exit name, or a layer count (or a narrowed prefix "
                          "K:ffn=F:heads=H, which is copied).", metavar="NAME")
    output: Path | None = with_default(OutputFolder, "output", None,
                                       "The view folder to create (on the same file system for hard links).")
    force: bool = with_default(OutputFolder, "force", False, "Replace an existing view folder.")

    def __post_init__(self):
        if not self.exit:
            raise UsageError("--exit is required", "name the exit to view, e.g. --exit depth-20 (see surgeon manifest show)")
        if self.output is None:
            raise UsageError("-o/--output is required", "give the folder the view is created in")


@dataclass
class ViewResult:
    output: str
    source: str
    exit: str
    layers: int
    mode: str  # "link" (hard links to the source's shards) or "copy" (a streamed copy of the exit's tensors)
    reason: str | None = None  # why it is a copy
    linked: list[str] = field(default_factory=list)
    bytes_added: int = 0  # bytes the view's own files take on disk (links add none)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def exit_files(ckpt: Checkpoint, layers: list[int]) -> tuple[list[str] | None, str | None]:
    """The weight files that hold exactly the exit's tensors, or ``(None, why not)``."""
    from ..arch.registry import resolve_family

    family = resolve_family(ckpt.text_config, ckpt.tensors)
    keep = set(layers)
    wanted, unwanted = set(), set()
    for name, info in ckpt.tensors.items():
        split = family.split_layer_name(name)
        (wanted if split is None or split[0] in keep else unwanted).add(info.file)
    mixed = sorted(wanted & unwanted)
    if mixed:
        return None, (f"the source is not exit-aligned for this exit ({mixed[0]} also holds other layers); "
                      "re-shard it once with `surgeon manifest MODEL --in-place --align-shards` to link views")
    return sorted(wanted), None


def run(opts: ViewOptions, progress: Progress | None = None) -> ViewResult:
    from ..io.atomic import check_output
    from ..manifest.resolve import resolve_checkpoint_exit

    ckpt = Checkpoint.open(opts.model)
    resolved = resolve_checkpoint_exit(ckpt, opts.exit)
    manifest, choice = resolved.manifest, resolved.exit
    if choice.name is None:
        choice = type(choice)(default_name(choice.layers, choice.widths), list(choice.layers), choice.widths)
    out = Path(opts.output)
    check_output(out, ckpt.path, opts.force)
    layers = list(choice.layers)
    reason = None
    files = None
    if choice.widths:
        reason = "the exit has widths: its tensors are sliced"
    elif prefix_depth(layers) is None:
        reason = "the exit is not a prefix: its layers are renumbered"
    else:
        files, reason = exit_files(ckpt, layers)
    if files is not None:
        try:
            return _link(ckpt, manifest, choice, files, out, opts.force)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise OutputError(f"cannot link {ckpt.path} into {out}: {e.strerror or e}",
                                  "check the -o path and its permissions") from None
            reason = (f"cannot hard-link into {out.parent} ({e.strerror}: another file system?); "
                      "put the view beside the source to link")
    log.info("view of %s: writing a copy of its tensors (%s)", choice.name, reason)
    named = any(e["name"] == choice.name for e in (manifest or {}).get("exits", []))
    return _copy(ckpt, choice.name if named else opts.exit, choice, out, opts.force, reason, progress)


def _link(ckpt: Checkpoint, manifest: dict | None, choice, files: list[str], out: Path, force: bool) -> ViewResult:
    from ..io.atomic import atomic_output
    from ..io.checkpoint import INDEX_FILE
    from ..io.writer import WrittenFile
    from ..manifest.build import build_manifest
    from ..manifest.model import HEADER_KEY
    from ..manifest.store import header_value, write_manifest
    from ..provenance import PROVENANCE_FILE, operation, sha256_json, write_chain

    layers = list(choice.layers)
    k = len(layers)
    source_exit = next((e for e in (manifest or {}).get("exits", []) if e["name"] == choice.name), None)
    config = dict(source_exit["config"]) if source_exit else _prefix_config(ckpt, k)
    names = [n for n, info in ckpt.tensors.items() if info.file in set(files)]
    with atomic_output(out, ckpt.path, force) as tmp:
        for f in files:
            # resolve(): link the file, not a symlink to it (a hub cache snapshot holds relative symlinks to blobs)
            os.link(ckpt.file(f).resolve(), tmp / f)  # EXDEV across file systems: the caller copies instead
        added = 0
        for name in ckpt.side_files():  # tokenizer, chat template, generation config: linked too
            try:
                os.link((ckpt.path / name).resolve(), tmp / name)
            except OSError:
                shutil.copy2(ckpt.path / name, tmp / name)
                added += (tmp / name).stat().st_size
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        weight_map = {n: ckpt.tensors[n].file for n in sorted(names)}
        total = sum(ckpt.tensors[n].nbytes for n in names)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        view_ckpt = Checkpoint.open(tmp)
        nested = [{"name": e["name"], "layers": list(e["layers"]), **({"widths": e["widths"]} if e.get("widths") else {}),
                   "quality": [q for q in e.get("quality") or [] if "reference" not in q]}
                  for e in (manifest or {}).get("exits", [])
                  if 0 < (prefix_depth(e["layers"]) or 0) <= k  # the prefixes up to this exit
                  and not (len(e["layers"]) == k and e.get("widths"))]
        if not any(e["name"] == choice.name for e in nested):
            nested.append({"name": choice.name, "layers": list(range(k))})

        source = ckpt.source if ckpt.hub is not None else str(ckpt.path.resolve())  # a hub model: org/name@commit
        provenance = write_chain(tmp, ckpt.path, operation("view", source, {"exit": choice.name},
                                                           layers=k, linked=files))
        m = build_manifest(view_ckpt, nested, provenance)
        m["view"] = {"source": source, "exit": choice.name,
                     "source_config_sha256": (manifest or {}).get("base", {}).get("config_sha256")
                     or sha256_json(ckpt.config)}
        index["metadata"][HEADER_KEY] = header_value(m)  # the header copy lives in the index: linked files stay untouched
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        known = {w["name"]: w for w in ((manifest or {}).get("weights") or {}).get("files", [])}
        written = None
        if all(f in known for f in files):
            written = [WrittenFile(f, known[f]["bytes"], known[f]["sha256"]) for f in files]
        write_manifest(tmp, m, written)  # without the source's hashes, the linked files are hashed (read once)
        added += sum((tmp / n).stat().st_size for n in ("config.json", INDEX_FILE, "sorted_manifest.json",
                                                          PROVENANCE_FILE))
    return ViewResult(str(out), source, choice.name, k, "link", None, files, added)


def _copy(ckpt: Checkpoint, exit: str, choice, out: Path, force: bool, reason: str | None, progress) -> ViewResult:
    from .extract import ExtractOptions
    from .extract import run as extract

    r = extract(ExtractOptions(model=ckpt.path, exit=exit, output=out, force=force), progress=progress)
    source = ckpt.source if ckpt.hub is not None else str(ckpt.path)
    return ViewResult(str(out), source, choice.name, len(choice.layers), "copy", reason, [],
                      r.result.bytes_written if r.result else 0)


def _prefix_config(ckpt: Checkpoint, k: int) -> dict:
    from ..manifest.build import exit_plan

    return exit_plan(ckpt, list(range(k)), None).config
