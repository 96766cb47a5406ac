"""File-safety primitives shared by every stage that writes to disk.

The mental model: a file or folder with its final name is complete, and this package only ever
deletes what it created itself.

- :func:`write_atomic` writes a unique temp file beside the target, fsyncs it, renames it over the
  target and fsyncs the folder: a reader (or a resume after ``kill -9``) sees the old file or the new
  one, never a torn one, and two writers never share a temp file.
- :func:`replace_folder` moves a fully written temp folder into place (the same promise for folders).
- :class:`DirLock` is an OS lock (``fcntl.flock``) on ``DIR/.vsl.lock`` that names its owner; the
  kernel releases it when the owner dies, so a crash never leaves a stale lock.
- :func:`mark_folder` / :func:`remove_own_folder`: folders we create carry a marker file, and
  ``--overwrite`` deletes a folder only when it carries that marker.
- :func:`check_name` / :func:`check_inside`: user-supplied names that become paths stay inside
  their parent.
- :func:`seal_sae_folder` / :func:`verify_sae_folder`: ``checksums.json`` of an SAE folder, written
  last (it doubles as the folder's completion marker) and checked before an SAE is used or published.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from vision_sae_lens.errors import OutputLockedError, SAEFolderError, UnsafePathError

logger = logging.getLogger(__name__)

LOCK_FILE = ".vsl.lock"
MARKER_FILE = ".vision_sae_lens.json"
SAE_CHECKSUMS_FILE = "checksums.json"
SAE_CHECKSUMS_FORMAT = "vision_sae_lens.sae_folder"
SAE_SEALED_FILES = ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors")


# ------------------------------------------------------------------------------ atomic writes
def temp_name(path: Path) -> Path:
    """A temp path beside ``path`` that no other process or call will pick (pid + random)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` either keeps its old content or holds all of ``data``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 1) -> None:
    """Atomically write ``obj`` as JSON (readable, with a trailing newline)."""
    write_atomic(path, (json.dumps(obj, indent=indent, default=str) + "\n").encode())


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


def remove_stale_temps(folder: Path) -> int:
    """Delete ``*.tmp`` files and folders left under ``folder`` by killed writers; call only under the lock."""
    removed = 0
    if not folder.is_dir():
        return 0
    for path in folder.rglob("*.tmp"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed


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


# ------------------------------------------------------------------------------------- locking
class DirLock:
    """An exclusive ``fcntl.flock`` on ``folder/.vsl.lock`` holding the owner's pid, host and command.

    ``acquire`` never waits: when another process (or another open of the lock in this process)
    holds it, it raises :class:`~vision_sae_lens.errors.OutputLockedError` naming that owner. The lock
    file is left in place on release (deleting it would let two processes lock different files).
    """

    def __init__(self, folder: str | os.PathLike, *, what: str) -> None:
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        """Take the lock (creating ``folder`` if needed) or raise OutputLockedError at once."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise OutputLockedError(
                f"{self.folder} is in use by another {self.what} ({owner}; lock file {self.path}). Wait for it "
                "to finish or write somewhere else; the lock goes away by itself when that process ends."
            ) from None
        record: dict[str, object] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": " ".join(_command_line())[:300],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases the flock)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)  # no owner any more (and finished outputs do not differ by pid)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_owner(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "owner unknown"
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}: {info.get('command', '')}"


def _command_line() -> list[str]:
    try:
        return Path("/proc/self/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        import sys

        return list(sys.argv)


@contextlib.contextmanager
def locked(folder: str | os.PathLike, *, what: str) -> Iterator[DirLock]:
    """``with locked(DIR, what="cache run"):`` holds :class:`DirLock` for the block."""
    lock = DirLock(folder, what=what).acquire()
    try:
        yield lock
    finally:
        lock.release()


# ---------------------------------------------------------------------- our folders, overwrite
def mark_folder(folder: Path, kind: str) -> None:
    """Record that ``folder`` was created by vision_sae_lens (as a ``kind``: checkpoints, browser, ...)."""
    write_json_atomic(folder / MARKER_FILE, {"created_by": "vision_sae_lens", "kind": kind})


def is_own_folder(folder: Path) -> bool:
    """Whether ``folder`` carries our marker (or is a sealed SAE folder, whose checksums.json is ours)."""
    if (folder / MARKER_FILE).is_file():
        return True
    try:
        return json.loads((folder / SAE_CHECKSUMS_FILE).read_text()).get("format") == SAE_CHECKSUMS_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def remove_own_folder(folder: Path, *, why: str = "--overwrite") -> None:
    """Delete ``folder`` if vision_sae_lens created it; refuse (UnsafePathError) any other folder."""
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
        folder.rmdir()
        return
    if folder.is_symlink() or not folder.is_dir() or not is_own_folder(folder):
        raise UnsafePathError(
            f"{why} would delete {folder}, but vision_sae_lens did not create it (no {MARKER_FILE} or "
            f"{SAE_CHECKSUMS_FILE} in it); nothing was deleted. Remove it yourself if you mean it, or choose "
            "another name or output folder."
        )
    shutil.rmtree(folder)


# ------------------------------------------------------------------------------------ names
def check_name(name: Any, *, what: str, allow_slash: bool = False) -> str:
    """Return ``name`` if it is a safe relative name for a file or folder; raise UnsafePathError otherwise.

    Refused: empty names, absolute paths (POSIX or Windows), ``.``/``..`` components, backslashes,
    NUL and other control characters, and (unless ``allow_slash``) any ``/``.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnsafePathError(f"{what} must be a non-empty string, got {name!r}")
    problem = None
    if any(ord(c) < 32 for c in name):
        problem = "contains control characters"
    elif (
        PurePosixPath(name).is_absolute()
        or PureWindowsPath(name).is_absolute()
        or PureWindowsPath(name).drive
    ):
        problem = "is an absolute path"
    elif "\\" in name:
        problem = "contains a backslash"
    elif not allow_slash and "/" in name:
        problem = "contains '/'"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        problem = "has an empty, '.' or '..' path component"
    if problem:
        raise UnsafePathError(
            f"{what} {name!r} {problem}; it becomes a path, so it must be a plain relative name that stays "
            "inside its parent folder (letters, digits, '.', '_', '-')."
        )
    return name


def check_inside(parent: Path, relative: str, *, what: str) -> Path:
    """``parent / relative``, refusing (UnsafePathError) a path that resolves outside ``parent``."""
    if PurePosixPath(relative).is_absolute() or ".." in PurePosixPath(relative).parts:
        raise UnsafePathError(f"{what} {relative!r} points outside {parent}; refusing to use it")
    target = parent / relative
    base = parent.resolve()
    if not target.resolve().is_relative_to(base):
        raise UnsafePathError(
            f"{what} {relative!r} resolves outside {parent} (a symlink?); refusing to use it"
        )
    return target


# ----------------------------------------------------------------------------- SAE checksums
def sha256_file(path: Path, chunk: int = 2**20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def seal_sae_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """Write ``checksums.json`` (sizes and sha256 of cfg.json and the safetensors files) into an SAE folder.

    Written last and atomically, it is the folder's completion marker: ``publish`` requires it and
    ``evaluate``, ``analyze`` and ``vision-sae-lens verify`` check it. Returns what was written.
    """
    folder = Path(folder)
    if not (folder / "cfg.json").is_file() or not (folder / "sae_weights.safetensors").is_file():
        raise SAEFolderError(f"{folder} is not a SAELens folder (needs cfg.json and sae_weights.safetensors)")
    files = {
        name: {"bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
        for name in SAE_SEALED_FILES
        if (folder / name).is_file()
    }
    doc = {"format": SAE_CHECKSUMS_FORMAT, "version": 1, "files": files}
    write_json_atomic(folder / SAE_CHECKSUMS_FILE, doc)
    return doc


def verify_sae_folder(folder: str | os.PathLike, *, require: bool = True) -> bool:
    """Check an SAE folder against its ``checksums.json``; False when it has none and ``require`` is off.

    Raises :class:`~vision_sae_lens.errors.SAEFolderCorruptError` naming every file that is missing,
    has another size or another sha256, and :class:`~vision_sae_lens.errors.SAEFolderError` for a
    folder without (or with an unreadable) ``checksums.json`` when ``require`` is on.
    """
    from vision_sae_lens.errors import SAEFolderCorruptError

    folder = Path(folder)
    path = folder / SAE_CHECKSUMS_FILE
    if not path.is_file():
        if require:
            raise SAEFolderError(
                f"{folder} has no {SAE_CHECKSUMS_FILE}: it is not a complete vision_sae_lens SAE folder (training "
                "may have been interrupted). Re-run `train --resume`, or for a folder you saved yourself run "
                f"`vision-sae-lens verify --seal {folder}` to record its checksums."
            )
        return False
    try:
        doc = json.loads(path.read_text())
        entries = dict(doc["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SAEFolderCorruptError(f"{path} is unreadable ({exc}); re-seal or re-train the folder") from exc
    problems = []
    for name in SAE_SEALED_FILES:
        if (folder / name).is_file() and name not in entries:
            problems.append(f"{name}: not covered by {SAE_CHECKSUMS_FILE}")
    for name, entry in entries.items():
        check_name(name, what=f"file name in {path}")
        file = folder / name
        if not file.is_file():
            problems.append(f"{name}: missing")
        elif file.stat().st_size != entry.get("bytes"):
            problems.append(
                f"{name}: {file.stat().st_size} bytes, {SAE_CHECKSUMS_FILE} says {entry.get('bytes')}"
            )
        elif sha256_file(file) != entry.get("sha256"):
            problems.append(f"{name}: sha256 does not match {SAE_CHECKSUMS_FILE}")
    if problems:
        raise SAEFolderCorruptError(
            f"SAE folder {folder} failed verification: {'; '.join(problems)}. The files were changed or damaged "
            "after they were written; re-train or re-download it."
        )
    return True
