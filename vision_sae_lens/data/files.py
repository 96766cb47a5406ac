"""Image sources over files and in-memory images: a folder (class sub-folders are labels), a list of paths,
a list of PIL images.

Each is an :class:`~vision_sae_lens.contracts.ImageSource` in a fixed order (sorted relative paths for a
folder, the given order for lists) and describes itself without absolute paths: a folder by its own name
and a hash of its relative paths, a path list by a hash of the paths, PIL images by a hash of their pixels.
:func:`image_files` names the files behind a source, so a recording can tell when they changed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from vision_sae_lens.errors import ImageInputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")


class ImageFolder:
    """Images under a directory, sorted by relative path; ``DIR/<class>/<img>`` gives labels."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ImageInputError(f"image folder not found: {self.root}")
        files = sorted(
            p.relative_to(self.root).as_posix()
            for p in self.root.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if not files:
            raise ImageInputError(
                f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}; check the path"
            )
        self.files = files
        """Relative paths of the images, in source order."""
        # Classes are the top-level folders that hold images (nested folders count for their top one).
        classes = sorted({f.split("/", 1)[0] for f in files if "/" in f})
        self.label_names: list[str] | None = classes or None
        index = {name: i for i, name in enumerate(classes)}
        self.labels: list[int | None] | None = (
            [index[f.split("/", 1)[0]] if "/" in f else None for f in files] if classes else None
        )
        """The class of every image (None for images directly under the root), known without decoding."""

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Image.Image, int | None]:
        return read_image(self.root / self.files[i]), None if self.labels is None else self.labels[i]

    def name_of(self, i: int) -> str:
        """Relative path of image ``i`` (for skip lists and analysis)."""
        return self.files[i]

    @property
    def description(self) -> dict[str, Any]:
        return {
            "kind": "imagefolder",
            "name": self.root.resolve().name,
            "count": len(self),
            "classes": len(self.label_names or []),
            "files_sha256": sha256_lines(self.files),
        }


class PathList:
    """A list of image paths (kept in the given order; no labels)."""

    label_names = None
    labels = None

    def __init__(self, paths: Sequence[str | os.PathLike[str]]) -> None:
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Image.Image, None]:
        return read_image(self.paths[i]), None

    def name_of(self, i: int) -> str:
        return self.paths[i].name

    @property
    def description(self) -> dict[str, Any]:
        # The paths themselves may be absolute: record only their hash.
        return {
            "kind": "files",
            "count": len(self),
            "paths_sha256": sha256_lines(os.fspath(p) for p in self.paths),
        }


class PILList:
    """A list of in-memory PIL images (no labels); identified by a hash of their pixels."""

    label_names = None
    labels = None

    def __init__(self, images: Sequence[Image.Image]) -> None:
        self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Image.Image, None]:
        return self.images[i], None

    def name_of(self, i: int) -> str:
        return f"image[{i}]"

    @property
    def description(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for img in self.images:
            digest.update(f"{img.mode}{img.size}".encode())
            digest.update(img.tobytes())
        return {"kind": "pil", "count": len(self), "pixels_sha256": digest.hexdigest()}


def read_image(path: Path) -> Image.Image:
    """Open and fully decode one image file, raising ImageInputError (not a PIL error) when it is bad."""
    try:
        with Image.open(path) as img:
            img.load()
            return img
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # DecompressionBombError: PIL's own limit on decoded pixels, kept as PIL sets it
        raise ImageInputError(f"cannot read image {path.name}: {exc}") from exc


def image_files(source: ImageFolder | PathList) -> list[tuple[str, Path]]:
    """``(name, path)`` of every image file of a file-based source, in source order."""
    if isinstance(source, ImageFolder):
        return [(f, source.root / f) for f in source.files]
    return [(str(i), p) for i, p in enumerate(source.paths)]


def sha256_lines(lines: Iterable[str]) -> str:
    """Hex SHA-256 of the lines, each followed by a newline (how descriptions identify lists of names)."""
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()
