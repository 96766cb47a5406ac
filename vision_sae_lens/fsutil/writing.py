"""Writing: atomic files, folders that appear complete, the package's own temp names and their cleanup."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

_OWN_TEMP = re.compile(r"\..+\.[0-9]+-[0-9a-f]{8}\.tmp")


def temp_name(path: Path) -> Path:
    """A temp path beside ``path`` that no other process or call will pick (pid + random):
    ``.{name}.{pid}-{8 hex}.tmp``, the one pattern :func:`is_own_temp` recognises."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def is_own_temp(name: str) -> bool:
    """Whether a file or folder name is one of this package's temp names (see :func:`temp_name`)."""
    return _OWN_TEMP.fullmatch(name) is not None


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` either keeps its old content or holds all of ``data``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        # O_EXCL | O_NOFOLLOW: a name planted beside the target (a symlink) is never written through.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(tmp, flags, 0o666), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 1) -> None:
    """Atomically write ``obj`` as JSON (readable, with a trailing newline).

    NaN / Inf are refused (``ValueError`` from ``json``): they are not JSON, and a NaN metric would pass
    every comparison a reader makes with it."""
    write_atomic(path, (json.dumps(obj, indent=indent, default=str, allow_nan=False) + "\n").encode())


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside ``folder`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` and the folders themselves (before renaming it into place)."""
    for sub, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(sub, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(sub)


def temp_folder(final: Path) -> Path:
    """A fresh, empty temp folder beside ``final`` (unique name, so concurrent writers never share it)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    tmp.mkdir()
    return tmp


def replace_folder(tmp: Path, final: Path) -> None:
    """Move the complete folder ``tmp`` to ``final`` (fsynced first); an existing ``final`` is replaced.

    A directory cannot be renamed over a non-empty one, so an old ``final`` is first renamed aside
    and deleted after the new one is in place: a crash leaves either the old or the new folder under
    ``final`` (or, in the instant between the two renames, none: never a partial one).
    """
    fsync_tree(tmp)
    old = None
    if final.exists():
        old = temp_name(final.with_name(final.name + ".old"))
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_temps(folder: Path, *, recursive: bool = True, target: str | None = None) -> int:
    """Delete the temp files and folders that killed writers of this package left in ``folder``.

    Only names of :func:`temp_name`'s pattern go (a user's ``.draft.tmp`` or ``.cache.tmp/`` stays),
    and only when the process named in them is gone (a folder may be shared by commands that lock
    different things: ``train --out runs`` and ``analyze --out runs/browser``); with ``target``, only
    the temps of that one name (``.{target}.…tmp``, ``.{target}.old.…tmp``). Symlinks are never
    followed. Call it under the lock that every writer of these names holds. Returns how many went.
    """
    removed = 0
    if not folder.is_dir() or folder.is_symlink():
        return 0
    for sub, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            if not is_own_temp(name) or (target is not None and not _temp_of(name, target)):
                continue
            if _writer_alive(name):
                continue
            path = Path(sub, name)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
        dirs[:] = [d for d in dirs if recursive and not is_own_temp(d)]
    return removed


def _writer_alive(name: str) -> bool:
    pid = int(name.rsplit(".", 2)[-2].split("-")[0])
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _temp_of(name: str, target: str) -> bool:
    return re.fullmatch(rf"\.{re.escape(target)}(\.old)?\.[0-9]+-[0-9a-f]{{8}}\.tmp", name) is not None


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) means the disk is full: ENOSPC / EDQUOT, or the failure of
    torch's zip writer (``inline_container.cc``), whose C++ error hides the errno."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen)
        if "No space left" in text or "inline_container" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False
