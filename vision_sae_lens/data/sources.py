"""Image sources: anything the recorder can read as ``source[i] -> (PIL.Image, label | None)``.

``open_images(spec)`` turns a spec string, a list of paths / PIL images, a Hugging Face dataset or any
``len`` + ``getitem`` object into an :class:`~vision_sae_lens.contracts.ImageSource`. Every source is
indexable in a fixed, deterministic order (the *image index* stored with each activation row), knows its
``label_names`` (and, where it can without decoding, every image's label), names its images, and describes
itself as JSON without absolute paths (``description``) so a store or checkpoint can say which images it
came from without leaking the user's file system.

Specs: ``imagefolder:DIR`` (or a plain directory; class sub-folders become labels), ``hf:NAME[:SPLIT]``,
``hf-disk:DIR[:SPLIT]``, ``demo:mnist[:train|test|all]``, ``synthetic:shapes[:train|test]``. The sources
themselves live by kind: files and in-memory images in :mod:`~vision_sae_lens.data.files`, Hugging Face
datasets in :mod:`~vision_sae_lens.data.hf`, subsets in :mod:`~vision_sae_lens.data.subsets`; this module
chooses among them and wraps any other ``len`` + ``getitem`` object (:class:`GenericSource`). Reading a
corrupt file raises :class:`~vision_sae_lens.errors.ImageInputError`; the recorder skips such images and
lists them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

from PIL import Image

from vision_sae_lens.contracts import ImageSource
from vision_sae_lens.data.files import ImageFolder, PathList, PILList
from vision_sae_lens.data.hf import StreamingHFSource, from_hf_object, is_hf_dataset, open_hf_spec
from vision_sae_lens.data.subsets import select_images
from vision_sae_lens.errors import ImageInputError

if TYPE_CHECKING:
    from datasets import IterableDataset

    from vision_sae_lens.data.demo_digits import Split


@runtime_checkable
class IndexedImages(Protocol):
    """Any object with ``len`` whose items are images or ``(image, label)`` pairs (a list, a torch or
    Hugging Face dataset, your own class). ``label_names``, ``labels``, ``name_of(i)`` and ``description``
    are used when it has them."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int, /) -> Any: ...


ImagesLike: TypeAlias = "str | os.PathLike[str] | Image.Image | IndexedImages | IterableDataset"
"""What :func:`open_images` (and every function taking ``images=``) accepts."""


def open_images(
    spec: ImagesLike, *, streaming: bool = False, limit: int | None = None, seed: int = 0
) -> ImageSource:
    """Build an :class:`ImageSource` from a spec string, a directory, a list of paths or PIL images,
    a ``datasets.Dataset`` / ``IterableDataset``, or any object with ``len`` and ``getitem``.

    ``limit`` keeps a seeded random subset of ``limit`` images (stratified by label when the source
    has labels; see :func:`~vision_sae_lens.data.subsets.select_images`), never the first ones: datasets
    are often sorted by class. ``streaming=True`` streams a ``hf:`` dataset instead of downloading it
    whole; a streamed source needs ``limit`` so its length, and therefore the store layout, is fixed, and
    takes the stream's first ``limit`` rows (a stream cannot be sampled without reading it whole: shuffle
    it upstream).
    """
    if limit is not None and limit < 1:
        raise ImageInputError(f"limit must be >= 1 image, got {limit}")
    source = _open(spec, streaming=streaming, limit=limit)
    if limit is not None and not isinstance(source, StreamingHFSource) and limit < len(source):
        return select_images(source, limit, seed=seed)
    return source


def _open(spec: ImagesLike, *, streaming: bool, limit: int | None) -> ImageSource:
    if isinstance(spec, (str, os.PathLike)):
        return _open_spec(os.fspath(spec), streaming=streaming, limit=limit)
    if is_hf_dataset(spec):
        return from_hf_object(spec, name=spec.info.dataset_name, limit=limit)
    if isinstance(spec, Image.Image):
        return PILList([spec])
    if isinstance(spec, Sequence) and not isinstance(spec, (bytes, bytearray, _Described)):
        items = list(spec)
        if not items:
            raise ImageInputError("empty image list: pass at least one image")
        if all(isinstance(x, Image.Image) for x in items):
            return PILList(items)
        if all(isinstance(x, (str, os.PathLike)) for x in items):
            return PathList(items)
        raise ImageInputError("an image list must hold only paths or only PIL images")
    if isinstance(spec, IndexedImages):
        return GenericSource(spec)
    raise ImageInputError(f"cannot use a {type(spec).__name__} as images; see open_images() for what works")


def _open_spec(text: str, *, streaming: bool, limit: int | None) -> ImageSource:
    if text.startswith("imagefolder:"):
        return ImageFolder(text.removeprefix("imagefolder:"))
    if text.startswith("demo:"):
        return _open_demo(text)
    if text.startswith("synthetic:"):
        from vision_sae_lens.data.synthetic import open_synthetic

        return open_synthetic(text)
    if text.startswith(("hf:", "hf-disk:")):
        return open_hf_spec(text, streaming=streaming, limit=limit)
    if Path(text).is_dir():
        return ImageFolder(text)
    if Path(text).is_file():
        return PathList([text])
    raise ImageInputError(
        f"cannot open images from {text!r}: not a directory or file, and not a spec. Use "
        "'imagefolder:DIR', 'hf:NAME[:SPLIT]', 'hf-disk:DIR[:SPLIT]', 'demo:mnist[:train|test]', "
        "or pass a list of paths / PIL images."
    )


# What GenericSource uses of a user's object when it has it (each optional).
@runtime_checkable
class _Described(Protocol):
    @property
    def description(self) -> dict[str, Any]: ...


@runtime_checkable
class _Named(Protocol):
    def name_of(self, i: int, /) -> str: ...


@runtime_checkable
class _Labelled(Protocol):
    @property
    def label_names(self) -> Sequence[str] | None: ...


@runtime_checkable
class _KnowsLabels(Protocol):
    @property
    def labels(self) -> Sequence[int | None] | None: ...


class GenericSource:
    """Any ``len`` + ``getitem`` object whose items are ``(image, label)`` pairs or bare images; its
    ``label_names``, ``labels``, ``name_of`` and ``description`` are used when it has them."""

    def __init__(self, obj: IndexedImages) -> None:
        self.obj = obj
        names = obj.label_names if isinstance(obj, _Labelled) else None
        self.label_names = None if names is None else list(names)

    def __len__(self) -> int:
        return len(self.obj)

    def __getitem__(self, i: int) -> tuple[Image.Image, int | None]:
        item = self.obj[i]
        if isinstance(item, tuple) and len(item) == 2:
            img, label = item
            return img, None if label is None else int(label)
        return item, None

    @property
    def labels(self) -> list[int | None] | None:
        labels = self.obj.labels if isinstance(self.obj, _KnowsLabels) else None
        if labels is None or callable(labels):  # a method of that name is something else
            return None
        return [None if v is None else int(v) for v in labels]

    def name_of(self, i: int) -> str:
        return self.obj.name_of(i) if isinstance(self.obj, _Named) else f"image[{i}]"

    @property
    def description(self) -> dict[str, Any]:
        desc = self.obj.description if isinstance(self.obj, _Described) else None
        if isinstance(desc, dict):
            return dict(desc)
        return {"kind": type(self.obj).__name__, "count": len(self)}


def _open_demo(spec: str) -> ImageSource:
    name, _, split = spec.removeprefix("demo:").partition(":")
    if name != "mnist":
        raise ImageInputError(
            f"unknown demo image set {spec!r}; the shipped one is 'demo:mnist[:train|test|all]'"
        )
    splits: dict[str, Split] = {"": "train", "train": "train", "test": "test", "all": "all"}
    if split not in splits:
        raise ImageInputError(f"unknown demo split {split!r} in {spec!r}; choose train, test or all")
    try:
        from vision_sae_lens.data.demo_digits import load_demo_digits
    except ImportError as exc:
        raise ImageInputError("the embedded demo digits are not available in this installation") from exc
    return GenericSource(load_demo_digits(splits[split]))
