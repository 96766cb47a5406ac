"""Image sources for recording activations: folders, Hugging Face datasets, lists, the demo digits.

``open_images(spec)`` gives an :class:`ImageSource` (``len``, ``source[i] -> (PIL.Image, label | None)``,
``label_names``, ``description``); the backbone's own preprocessing is applied later by the recorder.
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
    "to_standard_mode",
]

if TYPE_CHECKING:
    from vision_sae_lens.data.sources import (
        GenericSource,
        HFSource,
        ImageFolder,
        ImageSource,
        PathList,
        PILList,
        StreamingHFSource,
        Subset,
        open_images,
        read_image,
        redraw_subset,
        select_images,
        source_labels,
        subset_indices,
        to_standard_mode,
    )

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "ImageSource": "vision_sae_lens.data.sources",
        "open_images": "vision_sae_lens.data.sources",
        "ImageFolder": "vision_sae_lens.data.sources",
        "PathList": "vision_sae_lens.data.sources",
        "PILList": "vision_sae_lens.data.sources",
        "HFSource": "vision_sae_lens.data.sources",
        "StreamingHFSource": "vision_sae_lens.data.sources",
        "GenericSource": "vision_sae_lens.data.sources",
        "Subset": "vision_sae_lens.data.sources",
        "select_images": "vision_sae_lens.data.sources",
        "subset_indices": "vision_sae_lens.data.sources",
        "source_labels": "vision_sae_lens.data.sources",
        "redraw_subset": "vision_sae_lens.data.sources",
        "read_image": "vision_sae_lens.data.sources",
        "to_standard_mode": "vision_sae_lens.data.sources",
    },
)
