"""An SAE folder's ``checksums.json``: its completion marker and its seal against later edits."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from vision_sae_lens.errors import SAEFolderCorruptError, SAEFolderError, UnsafePathError
from vision_sae_lens.fsutil.names import check_name
from vision_sae_lens.fsutil.reading import read_json
from vision_sae_lens.fsutil.writing import write_json_atomic

SAE_CHECKSUMS_FILE = "checksums.json"
SAE_CHECKSUMS_FORMAT = "vision_sae_lens.sae_folder"
SAE_SEALED_FILES = (
    "cfg.json",
    "sae_weights.safetensors",
    "sparsity.safetensors",
    "eval.json",
    "train_config.json",
    "split.json",
    "names.json",
)
"""Files of an SAE folder that ``checksums.json`` covers when present: what loads the SAE and what
describes its result (a forged ``eval.json`` or ``names.json`` would otherwise reach the model card)."""


def sha256_file(path: Path, chunk: int = 2**20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def seal_sae_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """Write ``checksums.json`` (sizes and sha256 of the :data:`SAE_SEALED_FILES` present) into an SAE folder.

    Written last and atomically, it is the folder's completion marker: ``publish`` requires it and
    ``evaluate``, ``analyze`` and ``vision-sae-lens verify`` check it. A sealed file that is a symlink
    is refused (UnsafePathError): the seal would vouch for whatever it points to. Returns what was written.
    """
    folder = Path(folder)
    if not (folder / "cfg.json").is_file() or not (folder / "sae_weights.safetensors").is_file():
        raise SAEFolderError(f"{folder} is not a SAELens folder (needs cfg.json and sae_weights.safetensors)")
    links = [name for name in SAE_SEALED_FILES if (folder / name).is_symlink()]
    if links:
        raise UnsafePathError(
            f"{folder}: {', '.join(links)} {'is a symbolic link' if len(links) == 1 else 'are symbolic links'}; "
            "an SAE folder is sealed only with its own files. Copy the real file(s) in and seal again."
        )
    files = {name: _file_entry(folder / name) for name in SAE_SEALED_FILES if (folder / name).is_file()}
    doc = {"format": SAE_CHECKSUMS_FORMAT, "version": 1, "files": files}
    write_json_atomic(folder / SAE_CHECKSUMS_FILE, doc)
    return doc


def update_seal(folder: str | os.PathLike, name: str) -> bool:
    """Re-record file ``name`` in a sealed SAE folder's ``checksums.json`` after this package rewrote it
    (``evaluate`` writing ``eval.json``, ``explain`` writing ``names.json``); the other entries stay as
    they are. False if not sealed."""
    folder = Path(folder)
    path = folder / SAE_CHECKSUMS_FILE
    doc = read_json(path) if path.is_file() and not path.is_symlink() else None
    if not isinstance(doc, dict) or doc.get("format") != SAE_CHECKSUMS_FORMAT:
        return False
    doc["files"][check_name(name, what="sealed file name")] = _file_entry(folder / name)
    write_json_atomic(folder / SAE_CHECKSUMS_FILE, doc)
    return True


def _file_entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def verify_sae_folder(folder: str | os.PathLike, *, require: bool = True) -> bool:
    """Check an SAE folder against its ``checksums.json``; False when it has none and ``require`` is off.

    Raises :class:`~vision_sae_lens.errors.SAEFolderCorruptError` naming every file that is missing,
    a symlink, not covered, of another size or another sha256, and
    :class:`~vision_sae_lens.errors.SAEFolderError` for a folder without (or with an unreadable)
    ``checksums.json`` when ``require`` is on.
    """
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
        doc = read_json(path)
        entries = dict(doc["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SAEFolderCorruptError(f"{path} is unreadable ({exc}); re-seal or re-train the folder") from exc
    problems = []
    uncovered = [n for n in SAE_SEALED_FILES if (folder / n).exists() and n not in entries]
    problems += [f"{name}: not covered by {SAE_CHECKSUMS_FILE}" for name in uncovered]
    for name, entry in entries.items():
        check_name(name, what=f"file name in {path}")
        file = folder / name
        if file.is_symlink():
            problems.append(f"{name}: a symbolic link, not the folder's own file")
        elif not file.is_file():
            problems.append(f"{name}: missing")
        elif file.stat().st_size != entry.get("bytes"):
            problems.append(
                f"{name}: {file.stat().st_size} bytes, {SAE_CHECKSUMS_FILE} says {entry.get('bytes')}"
            )
        elif sha256_file(file) != entry.get("sha256"):
            problems.append(f"{name}: sha256 does not match {SAE_CHECKSUMS_FILE}")
    if problems:
        fix = "The files were changed or damaged after they were written; re-train or re-download it."
        if uncovered and len(uncovered) == len(problems):
            fix = (
                "It was sealed before these files were covered (or they were added later). If you trust them, "
                f"record them with `vision-sae-lens verify --seal {folder}`."
            )
        raise SAEFolderCorruptError(f"SAE folder {folder} failed verification: {'; '.join(problems)}. {fix}")
    return True
