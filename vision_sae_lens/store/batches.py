"""The recorder's input side: images of the shards to record, decoded and preprocessed into
:class:`ImageBatch` es one batch ahead of the forward pass.

A loader thread walks the shards in order and cuts each into batches that never cross a shard boundary;
each batch's images are decoded and preprocessed on a pool of threads (PIL releases the GIL). A streamed
source is read in order by the loader thread itself. An image that cannot be read or preprocessed is not
fatal: it is left out of the batch's pixels and listed in ``skipped`` (the store's metadata keeps the list).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from vision_sae_lens.contracts import StreamedImageSource
from vision_sae_lens.errors import escape_control
from vision_sae_lens.store.prefetch import prefetched
from vision_sae_lens.store.transfer import pinned

if TYPE_CHECKING:
    from vision_sae_lens.backbones import HookedSAEViT
    from vision_sae_lens.contracts import ImageSource
    from vision_sae_lens.store.plan import RecordingPlan

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageBatch:
    """One batch of a shard's images, preprocessed, with what the shard's record keeps about each image."""

    shard: int
    """Index of the shard the images belong to."""
    pixels: torch.Tensor | None
    """(b, c, h, w) pixels of the readable images (None when none of the batch's images was readable)."""
    image_idx: list[int]
    """Source index of each image in ``pixels``, in order."""
    labels: list[int]
    """Label of every image of the batch, skipped ones included (-1: unlabelled or skipped)."""
    skipped: list[dict[str, Any]]
    """``{"image_idx", "name", "error"}`` of each image that could not be read or preprocessed."""
    n_images: int
    """Images of the batch, skipped ones included."""
    last_of_shard: bool
    """Whether this batch ends its shard (the shard is committed after it)."""


# One image as a pool worker leaves it: (index, pixels (1, c, h, w) or the error that made it unusable, label).
_Loaded = tuple[int, torch.Tensor | Exception, int | None]
# What a worker gets: an index to read, or (index, what a stream read: (image, label) or its error).
_Item = int | tuple[int, tuple[Image.Image, int | None] | Exception]


def load_batches(
    model: HookedSAEViT, source: ImageSource, plan: RecordingPlan, shards: list[int], threads: int
) -> Generator[ImageBatch, None, None]:
    """Preprocessed batches of ``shards``, produced one batch ahead on a loader thread that decodes and
    preprocesses each batch's images on a pool of ``threads``. Closing the generator stops the threads."""

    def produce() -> Iterator[ImageBatch]:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vsl-decode") as pool:
            for k in shards:
                images = plan.shard_range(k)
                # A streaming source is read in order by this thread; a map-style one by the pool.
                streamed = (
                    source.iter_range(images.start, images.stop)
                    if isinstance(source, StreamedImageSource)
                    else None
                )
                for lo in range(images.start, images.stop, plan.batch_size):
                    hi = min(lo + plan.batch_size, images.stop)
                    items: list[_Item] = (
                        [next(streamed) for _ in range(lo, hi)] if streamed else list(range(lo, hi))
                    )
                    loaded = list(pool.map(lambda item: _load_one(model, source, item), items))
                    yield _batch(k, source, loaded, last=hi == images.stop, device=model.device)

    return prefetched(produce(), depth=2)


def _load_one(model: HookedSAEViT, source: ImageSource, item: _Item) -> _Loaded:
    i, got = item if isinstance(item, tuple) else (item, None)
    if isinstance(got, Exception):  # the streaming reader could not decode this row
        return i, got, None
    try:
        img, label = source[i] if got is None else got
        # model.preprocess converts the image mode itself: one conversion for every entry point.
        return i, model.preprocess([img]).cpu(), label
    except Exception as exc:  # any failure to read or preprocess one image skips it (and is listed)
        return i, exc, None


def _batch(
    shard: int, source: ImageSource, loaded: list[_Loaded], *, last: bool, device: torch.device
) -> ImageBatch:
    pixels, image_idx, labels, skipped = [], [], [], []
    for i, got, label in loaded:
        if isinstance(got, Exception):
            name = source.name_of(i)
            logger.warning("skipping image %d (%s): %s", i, escape_control(name), escape_control(got))
            skipped.append({"image_idx": i, "name": name, "error": _portable_error(got)})
            labels.append(-1)
            continue
        pixels.append(got)
        image_idx.append(i)
        labels.append(-1 if label is None else int(label))
    return ImageBatch(
        shard=shard,
        # pinned here, on the loader thread, so the forward's copy to a GPU ``device`` is asynchronous
        pixels=pinned(torch.cat(pixels), device) if pixels else None,
        image_idx=image_idx,
        labels=labels,
        skipped=skipped,
        n_images=len(loaded),
        last_of_shard=last,
    )


def _portable_error(exc: BaseException) -> str:
    """``Type: message`` without the folders of any path in it (kept in the store's metadata), at most 300
    characters."""
    message = re.sub(r"(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\]+[/\\])+", "", str(exc))
    return f"{type(exc).__name__}: {message}"[:300]
