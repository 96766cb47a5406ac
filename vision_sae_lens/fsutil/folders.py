"""Our folders: a marker says what this package created, so ``--overwrite`` replaces only that."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from vision_sae_lens.errors import OutputExistsError, UnsafePathError
from vision_sae_lens.fsutil.locking import locked
from vision_sae_lens.fsutil.reading import read_json
from vision_sae_lens.fsutil.sealing import SAE_CHECKSUMS_FILE, SAE_CHECKSUMS_FORMAT
from vision_sae_lens.fsutil.writing import remove_stale_temps, replace_folder, temp_folder, write_json_atomic

MARKER_FILE = ".vision_sae_lens.json"


def mark_folder(folder: Path, kind: str) -> None:
    """Record that ``folder`` was created by vision_sae_lens (as a ``kind``: checkpoints, browser, ...)."""
    write_json_atomic(folder / MARKER_FILE, {"created_by": "vision_sae_lens", "kind": kind})


def folder_kind(folder: Path) -> str | None:
    """The ``kind`` our marker gives ``folder`` ("sae" for a sealed SAE folder); None if it is not ours."""
    for name, key, ours in (
        (MARKER_FILE, "kind", None),
        (SAE_CHECKSUMS_FILE, "format", SAE_CHECKSUMS_FORMAT),
    ):
        path = folder / name
        if path.is_symlink() or not path.is_file():
            continue
        try:
            value = read_json(path).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if ours is None and isinstance(value, str):
            return value
        if ours is not None and value == ours:
            return "sae"
    return None


def is_own_folder(folder: Path) -> bool:
    """Whether ``folder`` carries our marker (or is a sealed SAE folder, whose checksums.json is ours)."""
    return folder_kind(folder) is not None


def check_output_folder(target: Path, *, overwrite: bool, kinds: tuple[str, ...], what: str) -> None:
    """Refuse, before any work, an output folder that a build would replace without leave.

    Free: a missing or empty folder. With ``overwrite``: a folder this package created as one of
    ``kinds`` (its marker; ``"sae"`` for a sealed SAE folder). Anything else raises: an existing output
    of ours without ``overwrite`` (:class:`~vision_sae_lens.errors.OutputExistsError`), a folder that is
    not ours, of another kind, a symlink or a file (:class:`~vision_sae_lens.errors.UnsafePathError`).
    The writer then builds in :func:`temp_folder` and moves it in with :func:`replace_folder`.
    """
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise UnsafePathError(
            f"{what} {target} is {'a symbolic link' if target.is_symlink() else 'a file'}; nothing was "
            "written. Choose another output folder."
        )
    if not target.exists() or not any(target.iterdir()):
        return
    kind = folder_kind(target)
    if kind not in kinds:
        found = (
            "was not created by vision_sae_lens" if kind is None else f"holds a vision_sae_lens {kind} folder"
        )
        raise UnsafePathError(
            f"{what} {target} exists and {found} (no {MARKER_FILE} of a {' or '.join(kinds)}); it is left "
            "alone and nothing was written. Choose another output folder, or move that one away."
        )
    if not overwrite:
        raise OutputExistsError(
            f"{what} {target} already exists (an earlier {kind} folder of this package); nothing was written. "
            "Pass --overwrite (overwrite=True) to replace it, or choose another output folder."
        )


@contextlib.contextmanager
def building_folder(target: str | os.PathLike, *, kind: str, overwrite: bool, what: str) -> Iterator[Path]:
    """``with building_folder(OUT, kind="browser", overwrite=False, what="browser") as tmp:`` write into
    ``tmp``; when the block ends cleanly, ``tmp`` gets our marker and replaces ``OUT`` in one rename.

    :func:`check_output_folder` runs first (before any work) and again under a :class:`DirLock` on
    ``.{name}.vsl.lock`` beside ``OUT`` (the folder itself is replaced, so it cannot hold its lock):
    a second writer of the same ``OUT`` is refused at once, or, once the first is done, finds its
    output and needs ``overwrite``. Temps of killed writers of ``OUT`` are removed under the lock; on
    an error the temp folder goes and ``OUT`` is as it was.
    """
    target = Path(os.path.abspath(target))
    check_output_folder(target, overwrite=overwrite, kinds=(kind,), what=what)
    with locked(target.parent, what=f"{what} writer", name=f".{target.name}.vsl.lock"):
        check_output_folder(target, overwrite=overwrite, kinds=(kind,), what=what)
        remove_stale_temps(target.parent, recursive=False, target=target.name)
        tmp = temp_folder(target)
        try:
            yield tmp
            mark_folder(tmp, kind)
            replace_folder(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


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
