"""Re-opening the images a store's dataset description names, without reading outside what it may name.

A store records its image source as a description (``{"kind", "name", "split", hashes...}``, never a
path). Analysis re-opens the images from it when the user passes none. The description comes from a
file that may have been edited or written elsewhere, so it is held to what a recording writes: the
embedded sets, a Hugging Face Hub dataset id, or the *bare name* of an image folder or a saved
(``hf-disk``) dataset, looked for only in the folders the caller gives and accepted only when its
content matches the recorded hash. An absolute path, ``..``, a name with ``/`` where a folder name
belongs, or a Hub id that is also a local path is refused with :class:`UnsafePathError`: the user passes
the images explicitly instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vision_sae_lens.errors import UnsafePathError, escape_control


def spec_from_description(description: Mapping[str, Any], *, search: Sequence[Path]) -> str | None:
    """The ``open_images`` spec of the images ``description`` names, or None when they are not found here.

    ``search``: the folders a folder-like dataset (``imagefolder``, ``hf-disk``) may be in, e.g. beside the
    store and the working directory. Raises UnsafePathError for a description naming anything else.
    """
    name, split, kind = description.get("name"), description.get("split"), description.get("kind")
    if isinstance(name, str) and name.startswith("demo:"):
        return f"{name}:{split}" if split else name
    if kind == "hf" and name:
        return f"hf:{_hub_id(name, description)}" + (f":{split}" if split else "")
    if kind in ("imagefolder", "hf-disk") and name:
        folder_name = _bare_name(name, description)
        for base in search:
            folder = base / folder_name
            if folder.is_dir() and _matches(folder, kind, description):
                return f"{kind}:{folder}" + (f":{split}" if kind == "hf-disk" and split else "")
    return None


def _refuse(description: Mapping[str, Any], why: str) -> UnsafePathError:
    return UnsafePathError(
        f"the store's dataset description {escape_control(json.dumps(dict(description)))} {why}; a store only "
        "records a Hub dataset id or the bare name of a folder, so this one was edited or written elsewhere. "
        "Refusing to read it: pass the images explicitly (--images SPEC, or images=...)."
    )


def _hub_id(name: object, description: Mapping[str, Any]) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(name, str):
        raise _refuse(description, "has a name that is not a string")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise _refuse(description, "names something that is not a Hugging Face Hub dataset id") from None
    # datasets.load_dataset reads a local folder (or script) of that name before asking the Hub
    if Path(name).exists() or Path(f"{name}.py").exists():
        raise _refuse(description, f"names a Hub dataset that is also a local path ({name!r} exists here)")
    return name


def _bare_name(name: object, description: Mapping[str, Any]) -> str:
    from vision_sae_lens.fsutil import check_name

    try:
        return check_name(name, what="dataset folder name")
    except UnsafePathError:
        raise _refuse(description, "names a path, not a folder name") from None


def _matches(folder: Path, kind: str, description: Mapping[str, Any]) -> bool:
    """Whether ``folder`` holds the recorded dataset (same file list, or same HF fingerprint)."""
    try:
        if kind == "imagefolder":
            from vision_sae_lens.data.files import ImageFolder

            recorded, key = description.get("files_sha256"), "files_sha256"
            return recorded is not None and ImageFolder(folder).description.get(key) == recorded
        import datasets

        recorded = description.get("fingerprint")
        if recorded is None:
            return False
        ds = datasets.load_from_disk(str(folder))
        if isinstance(ds, datasets.DatasetDict):
            split = description.get("split")
            ds = ds.get(split)
        return ds is not None and ds._fingerprint == recorded
    except Exception:  # noqa: BLE001 - an unreadable candidate is simply not the dataset
        return False
