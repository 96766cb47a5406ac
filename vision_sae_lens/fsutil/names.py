"""Names: user-supplied names that become paths stay inside their parent."""

from __future__ import annotations

import unicodedata
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from vision_sae_lens.errors import UnsafePathError


def check_name(name: Any, *, what: str, allow_slash: bool = False) -> str:
    """Return ``name`` if it is a safe relative name for a file or folder; raise UnsafePathError otherwise.

    Refused: empty names, absolute paths (POSIX or Windows), empty, ``.``, ``..`` and ``.git``
    components (so no leading, trailing or doubled ``/``), backslashes, NUL and other control
    characters (C0, DEL, C1), and (unless ``allow_slash``) any ``/``.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnsafePathError(f"{what} must be a non-empty string, got {name!r}")
    problem = None
    if any(unicodedata.category(c) == "Cc" for c in name):
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
    elif any(part.lower() == ".git" for part in name.split("/")):
        problem = "has a '.git' path component"
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
