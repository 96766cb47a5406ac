"""Locking: one ``fcntl.flock`` per output folder, naming its owner, released by the kernel on death."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from vision_sae_lens.errors import OutputLockedError
from vision_sae_lens.fsutil.reading import open_state_file

LOCK_FILE = ".vsl.lock"


class DirLock:
    """An exclusive ``fcntl.flock`` on ``folder/.vsl.lock`` holding the owner's pid, host and command.

    ``acquire`` never waits: when another process (or another open of the lock in this process)
    holds it, it raises :class:`~vision_sae_lens.errors.OutputLockedError` naming that owner. The lock
    file is left in place on release (deleting it would let two processes lock different files).
    ``name`` gives another lock file name: a folder that is itself replaced by a rename (the feature
    browser) is locked through a file beside it, in its parent. The lock file is opened without
    following a symlink and must be a regular file (:func:`~vision_sae_lens.fsutil.open_state_file`).
    """

    def __init__(self, folder: str | os.PathLike, *, what: str, name: str = LOCK_FILE) -> None:
        self.folder, self.what = Path(folder), what
        self.path = self.folder / name
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        """Take the lock (creating ``folder`` if needed) or raise OutputLockedError at once."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = open_state_file(self.path, os.O_RDWR | os.O_CREAT)
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
def locked(folder: str | os.PathLike, *, what: str, name: str = LOCK_FILE) -> Iterator[DirLock]:
    """``with locked(DIR, what="cache run"):`` holds :class:`DirLock` for the block."""
    lock = DirLock(folder, what=what, name=name).acquire()
    try:
        yield lock
    finally:
        lock.release()
