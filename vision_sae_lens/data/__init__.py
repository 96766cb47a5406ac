"""Image sources for recording activations: folders, Hugging Face datasets, lists, the demo digits.

``open_images(spec)`` gives an :class:`ImageSource` (``len``, ``source[i] -> (PIL.Image, label | None)``,
``label_names``, ``description``); the backbone's own preprocessing is applied later by the recorder.
"""

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
