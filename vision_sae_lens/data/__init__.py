"""Image sources for recording activations: folders, Hugging Face datasets, lists, the demo digits.

``open_images(spec)`` gives an :class:`ImageSource` (``len``, ``source[i] -> (PIL.Image, label | None)``,
``label_names``, ``labels``, ``name_of``, ``description``); the backbone's own preprocessing, and the one
conversion of any image mode to the backbone's, are applied later (``backbones.images``).
"""

from typing import TYPE_CHECKING

from vision_sae_lens._lazy import lazy_exports

__all__ = [
    "ImageSource",
    "open_images",
    "ImageFolder",
    "PathList",
    "PILList",
    "HFSource",
    "StreamingHFSource",
    "GenericSource",
    "Subset",
    "select_images",
    "subset_indices",
    "source_labels",
    "redraw_subset",
    "read_image",
]

if TYPE_CHECKING:
    from vision_sae_lens.contracts import ImageSource
    from vision_sae_lens.data.files import ImageFolder, PathList, PILList, read_image
    from vision_sae_lens.data.hf import HFSource, StreamingHFSource
    from vision_sae_lens.data.sources import GenericSource, open_images
    from vision_sae_lens.data.subsets import (
        Subset,
        redraw_subset,
        select_images,
        source_labels,
        subset_indices,
    )

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "ImageSource": "vision_sae_lens.contracts",
        "open_images": "vision_sae_lens.data.sources",
        "ImageFolder": "vision_sae_lens.data.files",
        "PathList": "vision_sae_lens.data.files",
        "PILList": "vision_sae_lens.data.files",
        "HFSource": "vision_sae_lens.data.hf",
        "StreamingHFSource": "vision_sae_lens.data.hf",
        "GenericSource": "vision_sae_lens.data.sources",
        "Subset": "vision_sae_lens.data.subsets",
        "select_images": "vision_sae_lens.data.subsets",
        "subset_indices": "vision_sae_lens.data.subsets",
        "source_labels": "vision_sae_lens.data.subsets",
        "redraw_subset": "vision_sae_lens.data.subsets",
        "read_image": "vision_sae_lens.data.files",
    },
)
