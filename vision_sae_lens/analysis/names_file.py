"""``names.json``: the latent names of an SAE on disk, beside its ``eval.json``.

Written atomically (:func:`vision_sae_lens.fsutil.write_json_atomic`); a file already at the target is
replaced only when it is a names file this package wrote (its first key is the format record), never a
symlink or anyone else's file. Into a sealed SAE folder (one with ``checksums.json``) go only the names
of that folder's own SAE (same weights), and the seal is updated to the new file, as ``evaluate`` does
for ``eval.json``: a hand-edited names.json then fails ``verify`` and ``publish``. The format (reading,
checking it against an SAE) is :mod:`vision_sae_lens.names_format`; the schema is in docs/analysis.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vision_sae_lens.errors import SAEFolderError, UnsafePathError
from vision_sae_lens.names_format import NAMES_FILE, NAMES_FORMAT, NAMES_VERSION, names_problems, read_names

__all__ = ["NAMES_FILE", "NAMES_FORMAT", "NAMES_VERSION", "read_names", "write_names"]


def write_names(names: Any, path: str | Path) -> Path:
    """Write ``names.json`` atomically; a file already at ``path`` is replaced only when it is ours.

    ``names``: a :class:`~vision_sae_lens.analysis.naming.LatentNames` or the dict its ``to_json()`` gives.
    ``path``: a file, or a folder (then ``folder/names.json``, e.g. the SAE's folder beside eval.json).
    In a sealed SAE folder the names must be of that folder's SAE (SAEFolderError otherwise, nothing
    written), and ``checksums.json`` is updated to cover the new file.
    """
    from vision_sae_lens import fsutil

    target = Path(path)
    if target.is_dir() and not target.is_symlink():
        target = target / NAMES_FILE
    if target.is_symlink() or (target.exists() and not _is_ours(target)):
        raise UnsafePathError(
            f"{target} exists and was not written by vision_sae_lens (no {NAMES_FORMAT!r} format record, or a "
            "symlink); nothing was written. Move it away or choose another output path."
        )
    doc = names.to_json() if hasattr(names, "to_json") else names
    sealed = target.name == NAMES_FILE and fsutil.folder_kind(target.parent) == "sae"
    if sealed:
        _check_own_sae(doc, target.parent)
    fsutil.write_json_atomic(target, doc, indent=None)
    if sealed:
        fsutil.update_seal(target.parent, NAMES_FILE)
    return target


def _check_own_sae(doc: dict[str, Any], folder: Path) -> None:
    """Refuse names of another SAE in the sealed SAE ``folder`` (its seal would then vouch for them)."""
    from vision_sae_lens.backbones.recorded import weights_sha256
    from vision_sae_lens.train.checkpoint import open_sae_folder

    sae = open_sae_folder(folder)  # also checks the folder against its seal
    problems = names_problems(
        doc,
        hook_name=sae.cfg.metadata.hook_name,
        d_sae=int(sae.cfg.d_sae),
        weights_sha256=weights_sha256(sae),
    )
    if not (doc.get("sae") or {}).get("weights_sha256"):
        problems.append("it records no weights_sha256 of the SAE it names")
    if problems:
        raise SAEFolderError(
            f"{folder} is a sealed SAE folder and these are not its SAE's names ({'; '.join(problems)}); nothing "
            "was written. Write them elsewhere (--out FILE), or name that folder's own SAE."
        )


def _is_ours(path: Path) -> bool:
    """Whether the regular file at ``path`` starts as a names file of ours (a symlink is never ours)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as fh:
        head = fh.read(200)
    return f'"format": "{NAMES_FORMAT}"'.encode() in head or f'"format":"{NAMES_FORMAT}"'.encode() in head
