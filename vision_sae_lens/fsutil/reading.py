"""Reading and opening files safely: regular files only, JSON with a size cap, state files without
following symlinks (a FIFO, ``/dev/zero`` or a planted link is refused before a byte is read)."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import IO, Any

from vision_sae_lens.errors import UnsafePathError

MAX_JSON_BYTES = 64 * 2**20
"""Largest JSON file the package reads (ours are kilobytes; a bigger one is a mistake or an attack)."""


def open_regular(path: str | os.PathLike) -> IO[bytes]:
    """Open ``path`` for reading if it is a regular file (a symlink to one is fine); refuse a FIFO, a
    device (``/dev/zero``), a directory (UnsafePathError) before a byte is read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO's open must not hang
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnsafePathError(f"{path} is {_kind(mode)}, not a regular file; refusing to read it.")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_capped(path: str | os.PathLike, *, max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of the regular file ``path``; a file over ``max_bytes`` is refused (UnsafePathError)."""
    with open_regular(path) as f:
        data = f.read(max_bytes + 1)  # never more, even if the file grows while being read
    if len(data) > max_bytes:
        raise UnsafePathError(
            f"{path} is larger than {max_bytes:,} bytes, far more than the configuration and metadata files "
            "this package reads hold; refusing to read it (check that it is the file you meant)."
        )
    return data


def read_json(path: str | os.PathLike, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse the JSON file ``path``: regular files only, at most ``max_bytes`` (UnsafePathError).

    ``FileNotFoundError`` and ``json.JSONDecodeError`` (a ``ValueError``) pass through, as from
    ``json.loads(path.read_text())``, so callers keep their own messages for those.
    """
    return json.loads(read_capped(path, max_bytes=max_bytes))


def open_state_file(path: Path, flags: int) -> int:
    """``os.open`` a state file at a fixed name (lock, ...) without following a symlink; a descriptor.

    A symlink (it survives a tarball) or anything that is not a regular file there is refused with
    :class:`~vision_sae_lens.errors.UnsafePathError` before a byte is read or truncated.
    """
    try:
        # O_NONBLOCK: opening a FIFO planted at the name must not hang; it is refused just below.
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(
                f"{path} is a symbolic link; this package's state file there is never followed (writing it "
                f"would change the file it points to). Remove the link (rm {path}) and run again."
            ) from None
        if exc.errno not in (errno.EISDIR, errno.ENXIO):  # ENXIO: a socket
            raise
        mode = os.lstat(path).st_mode
    else:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            os.set_blocking(fd, True)
            return fd
        os.close(fd)
    raise UnsafePathError(
        f"{path} is {_kind(mode)}, not a regular file; this package keeps a state file there. Remove it and "
        "run again."
    )


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    return next((text for test, text in kinds.items() if test(mode)), "not a regular file")
