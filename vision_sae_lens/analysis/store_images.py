"""The images a store was recorded from, for the analyses that show or re-encode them (the browser's
thumbnails and heatmaps, naming with an image-text model): the user's own, or re-opened from the store's
dataset description where :mod:`vision_sae_lens.data.described` finds that safe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from vision_sae_lens.contracts import ImageSource
from vision_sae_lens.data import open_images, redraw_subset
from vision_sae_lens.data.described import spec_from_description

if TYPE_CHECKING:
    from vision_sae_lens.contracts import ActivationStoreReader
    from vision_sae_lens.data.sources import ImagesLike


def store_images(
    store: ActivationStoreReader, images: ImagesLike | ImageSource | None
) -> tuple[ImageSource | None, str | None]:
    """``(source, None)``: ``images`` when given (a source, or anything ``open_images`` opens), else the
    images re-opened from the store's dataset description; ``(None, why)`` when they cannot be had here (the
    caller says what it does without them). UnsafePathError for a description naming what it may not."""
    if images is not None:
        return (images if isinstance(images, ImageSource) else open_images(images)), None
    description = dict(store.dataset or {})
    # Only a folder's name is recorded (no absolute paths): look beside the store and here.
    root = Path(store.path or ".")
    spec = spec_from_description(description, search=(root.parent, root.parent.parent, Path.cwd()))
    if spec is None:
        return None, f"the store's images cannot be re-opened from its description {json.dumps(description)}"
    try:
        source = open_images(spec)
        if "subset" in description:
            source = redraw_subset(source, description["subset"])
    except Exception as exc:  # the dataset may be gone or need a download: the analyses go on without it
        return None, f"re-opening {spec} failed: {exc}"
    if len(source) < store.n_images:
        return None, f"{spec} holds {len(source)} images, fewer than the store's {store.n_images}"
    return source, None
