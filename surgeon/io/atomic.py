"""Write an output folder atomically: build it in a temp folder beside the target, rename at the end.

An interrupted run (exception, Ctrl-C, SIGTERM, kill -9) never leaves a half-written target: the
target either does not exist or is the complete previous version. Temp folders of dead runs are
removed (with a message) by the next run that writes beside them.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError

log = logging.getLogger(__name__)

TMP_TAG = ".surgeon-tmp-"
OLD_TAG = ".surgeon-old-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(target: Path) -> list[Path]:
    """Remove temp folders left beside ``target`` by runs whose process is gone."""
    removed = []
    parent = target.parent
    if not parent.is_dir():
        return removed
    for p in parent.iterdir():
        name = p.name
        if not name.startswith(f".{target.name}") or (TMP_TAG not in name and OLD_TAG not in name):
            continue
        tag = TMP_TAG if TMP_TAG in name else OLD_TAG
        try:
            pid = int(name.split(tag, 1)[1].split("-", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        if tag == OLD_TAG and not target.exists():
            # Killed between moving the previous version aside and renaming the new one in:
            # put the complete previous version back.
            log.warning("restoring %s from %s, left by an interrupted run (pid %d)", target, p.name, pid)
            os.rename(p, target)
            continue
        log.warning("removing %s, left behind by an interrupted run (pid %d)", p, pid)
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def check_output(target: Path, source: Path | None = None, force: bool = False) -> None:
    """Refuse targets that would overwrite the source or existing work."""
    target = Path(target)
    if source is not None:
        src = Path(source).resolve()
        tgt = target.resolve()
        if tgt == src:
            raise OutputError(f"output {target} is the input model", "choose a different -o folder; surgeon never modifies its input")
        if src in tgt.parents:
            raise OutputError(f"output {target} is inside the input model folder", "choose a -o folder outside the model")
        if tgt in src.parents:
            raise OutputError(f"output {target} contains the input model", "choose a different -o folder")
    if target.exists():
        if not target.is_dir():
            raise OutputError(f"output {target} exists and is a file", "choose a folder path for -o")
        if any(target.iterdir()) and not force:
            raise OutputError(f"output {target} exists and is not empty", "pass --force to replace it, or choose another -o")


@contextmanager
def atomic_output(target: str | os.PathLike, source: Path | None = None, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temp folder; on success it replaces ``target`` in one rename."""
    target = Path(target)
    clean_stale(target)
    check_output(target, source, force)
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {parent}: {e.strerror or e}", "check the -o path and its permissions") from None
    tmp = parent / f".{target.name}{TMP_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
    except OSError as e:
        raise OutputError(f"cannot write in {parent}: {e.strerror or e}", "check the -o path and its permissions") from None
    try:
        yield tmp
        _normalize_modes(tmp)
        _fsync_dir(tmp)
        if target.exists():
            old = parent / f".{target.name}{OLD_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
        _fsync_dir(parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in (28, 13, 30):  # ENOSPC, EACCES, EROFS
            raise OutputError(f"cannot write {target}: {e.strerror}", "free space or fix permissions, then rerun; nothing was left behind") from None
        raise


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _normalize_modes(folder: Path) -> None:
    """Give written files the usual umask-derived mode (some writers create them 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for p in folder.rglob("*"):
        if p.is_file():
            try:
                os.chmod(p, 0o666 & ~umask)
            except OSError:
                pass


def write_file_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Replace the file ``path`` with ``data`` in one rename (a reader sees the old file or the new one,
    never a half-written one); text is written as UTF-8."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_TAG}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (28, 13, 30):  # ENOSPC, EACCES, EROFS
            raise OutputError(f"cannot write {path}: {e.strerror}", "free space or fix permissions, then rerun") from None
        raise
