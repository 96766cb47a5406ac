"""``names.json``: the latent names of an SAE on disk, beside its ``eval.json``.

Written atomically (:func:`vision_sae_lens.fsutil.write_json_atomic`); a file already at the target is
replaced only when it is a names file this package wrote (its first key is the format record), never a
symlink or anyone else's file. The schema is documented in docs/analysis.md (``names.json (version 1)``);
:func:`read_names` checks format and version, and readers ignore keys they do not know.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vision_sae_lens.errors import ConfigError, UnsafePathError

NAMES_FILE = "names.json"
NAMES_FORMAT = "vision_sae_lens.latent_names"
NAMES_VERSION = 1


def write_names(names: Any, path: str | Path) -> Path:
    """Write ``names.json`` atomically; a file already at ``path`` is replaced only when it is ours.

    ``names``: a :class:`~vision_sae_lens.analysis.naming.LatentNames` or the dict its ``to_json()`` gives.
    ``path``: a file, or a folder (then ``folder/names.json``, e.g. the SAE's folder beside eval.json).
    """
    from vision_sae_lens.fsutil import write_json_atomic

    target = Path(path)
    if target.is_dir() and not target.is_symlink():
        target = target / NAMES_FILE
    if target.is_symlink() or (target.exists() and not _is_ours(target)):
        raise UnsafePathError(
            f"{target} exists and was not written by vision_sae_lens (no {NAMES_FORMAT!r} format record, or a "
            "symlink); nothing was written. Move it away or choose another output path."
        )
    write_json_atomic(target, names.to_json() if hasattr(names, "to_json") else names, indent=None)
    return target


def read_names(path: str | Path) -> dict[str, Any]:
    """The names.json document at ``path`` (a file or a folder holding one), checked for format and version."""
    target = Path(path)
    if target.is_dir():
        target = target / NAMES_FILE
    try:
        doc = json.loads(target.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read latent names from {target}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != NAMES_FORMAT:
        raise ConfigError(f"{target} is not a vision_sae_lens names file (format {NAMES_FORMAT!r})")
    if int(doc.get("version", 0)) > NAMES_VERSION:
        raise ConfigError(
            f"{target} has names format version {doc['version']}; upgrade vision_sae_lens to read it"
        )
    return doc


def _is_ours(path: Path) -> bool:
    """Whether the regular file at ``path`` starts as a names file of ours (a symlink is never ours)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as fh:
        head = fh.read(200)
    return f'"format": "{NAMES_FORMAT}"'.encode() in head or f'"format":"{NAMES_FORMAT}"'.encode() in head
