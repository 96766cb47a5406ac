"""Image sources over Hugging Face ``datasets``: a map-style ``Dataset`` (``hf:NAME[:SPLIT]``,
``hf-disk:DIR[:SPLIT]`` or the object itself) and the first ``limit`` rows of a streamed ``IterableDataset``.

The image column is the first ``datasets.Image`` feature (else ``image`` / ``img``), the label column the
first ``ClassLabel`` (else ``label`` / ``labels``). A row that does not decode raises
:class:`~vision_sae_lens.errors.ImageInputError`; a streamed source is read in order through
:meth:`StreamingHFSource.iter_range` (random access would re-stream from the start).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np
from PIL import Image, UnidentifiedImageError

from vision_sae_lens.errors import ImageInputError

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict, Features, IterableDataset


def is_hf_dataset(obj: object) -> TypeGuard[Dataset | IterableDataset]:
    """Whether ``obj`` is a ``datasets.Dataset`` or ``IterableDataset`` (without importing ``datasets``)."""
    return type(obj).__module__.startswith("datasets.") and type(obj).__name__ in (
        "Dataset",
        "IterableDataset",
    )


def open_hf_spec(spec: str, *, streaming: bool, limit: int | None) -> HFSource | StreamingHFSource:
    """The source of an ``hf:NAME[:SPLIT]`` or ``hf-disk:DIR[:SPLIT]`` spec."""
    import datasets

    kind, _, rest = spec.partition(":")
    # Split names never contain "/" or ":"; a trailing ":word" is the split.
    name, split = rest, None
    head, sep, tail = rest.rpartition(":")
    if sep and tail and "/" not in tail:
        name, split = head, tail
    if kind == "hf-disk":
        ds = datasets.load_from_disk(name)
        if isinstance(ds, datasets.DatasetDict):
            split = split or _default_split(ds)
            ds = ds[split]
        return from_hf_object(ds, name=Path(name).resolve().name, split=split, kind="hf-disk", limit=limit)
    loaded = datasets.load_dataset(name, split=split or "train", streaming=streaming)
    return from_hf_object(loaded, name=name, split=split or "train", kind="hf", limit=limit)


def from_hf_object(
    ds: Dataset | IterableDataset,
    *,
    name: str | None,
    split: str | None = None,
    kind: str = "hf",
    limit: int | None = None,
) -> HFSource | StreamingHFSource:
    """The source of a dataset object; a streamed one needs ``limit`` (its length fixes the store layout)."""
    image_col, label_col, label_names = _hf_columns(ds.features)
    meta = {"kind": kind, "name": name or "dataset", "split": split}
    if type(ds).__name__ == "IterableDataset":
        if limit is None:
            raise ImageInputError(
                "a streamed dataset has no length: pass limit=N (CLI: --limit N) so the store layout is fixed"
            )
        return StreamingHFSource(ds, image_col, label_col, label_names, limit=limit, meta=meta)
    return HFSource(ds, image_col, label_col, label_names, meta=meta)


class HFSource:
    """A map-style ``datasets.Dataset`` with an image column (and a ClassLabel column when present)."""

    def __init__(
        self,
        ds: Dataset,
        image_col: str,
        label_col: str | None,
        label_names: list[str] | None,
        *,
        meta: dict[str, Any],
    ) -> None:
        self.ds, self.image_col, self.label_col, self.label_names = ds, image_col, label_col, label_names
        self._meta = meta

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[Image.Image, int | None]:
        try:
            row = self.ds[int(i)]
        except (OSError, ValueError, UnidentifiedImageError) as exc:
            raise ImageInputError(f"cannot decode image {i} of the dataset: {exc}") from exc
        return _hf_image(row[self.image_col]), _hf_label(row, self.label_col)

    @property
    def labels(self) -> list[int | None] | None:
        """The label column (read without decoding an image), or None when the dataset has none."""
        if self.label_col is None:
            return None
        return [None if v is None else int(v) for v in self.ds[self.label_col]]

    def name_of(self, i: int) -> str:
        return f"row {i}"

    @property
    def description(self) -> dict[str, Any]:
        # datasets' content hash of the table (it has no public name)
        return {**self._meta, "count": len(self), "fingerprint": self.ds._fingerprint}


class StreamingHFSource:
    """The first ``limit`` rows of a streamed ``datasets.IterableDataset``; read in order through
    :meth:`iter_range` (random access would re-stream from the start)."""

    labels = None  # unknown until the stream is read

    def __init__(
        self,
        ds: IterableDataset,
        image_col: str,
        label_col: str | None,
        label_names: list[str] | None,
        *,
        limit: int,
        meta: dict[str, Any],
    ) -> None:
        self.ds, self.image_col, self.label_col, self.label_names = ds, image_col, label_col, label_names
        self.limit, self._meta = int(limit), meta

    def __len__(self) -> int:
        return self.limit

    def __getitem__(self, i: int) -> tuple[Image.Image, int | None]:
        item = next(iter(self.iter_range(i, i + 1)))[1]
        if isinstance(item, Exception):
            raise item
        return item

    def iter_range(
        self, start: int, stop: int
    ) -> Iterator[tuple[int, tuple[Image.Image, int | None] | ImageInputError]]:
        """``(index, (image, label))`` for indices ``start..stop-1``; a bad row yields ``(index, error)``."""
        stop = min(stop, self.limit)
        for offset, row in enumerate(self.ds.skip(start).take(max(stop - start, 0))):
            try:
                yield start + offset, (_hf_image(row[self.image_col]), _hf_label(row, self.label_col))
            except ImageInputError as exc:
                yield start + offset, exc

    def name_of(self, i: int) -> str:
        return f"row {i}"

    @property
    def description(self) -> dict[str, Any]:
        return {**self._meta, "count": self.limit, "streaming": True}


def _default_split(dsd: DatasetDict) -> str:
    return "train" if "train" in dsd else sorted(dsd)[0]


def _hf_columns(features: Features | None) -> tuple[str, str | None, list[str] | None]:
    import datasets

    if features is None:
        raise ImageInputError("the dataset declares no features; cannot find its image column")
    image_cols = [k for k, f in features.items() if isinstance(f, datasets.Image)]
    image_col = image_cols[0] if image_cols else next((k for k in ("image", "img") if k in features), None)
    if image_col is None:
        raise ImageInputError(f"no image column among the dataset's columns {list(features)}")
    labels = [k for k, f in features.items() if isinstance(f, datasets.ClassLabel)]
    label_col = labels[0] if labels else next((k for k in ("label", "labels") if k in features), None)
    names = list(features[label_col].names) if labels else None
    return image_col, label_col, names


def _hf_image(value: object) -> Image.Image:
    """A row's image cell (a PIL image, ``{"bytes"|"path": ...}`` when not decoded, or an array)."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, Mapping) and (value.get("bytes") or value.get("path")):
        data = value.get("bytes")
        try:
            with Image.open(io.BytesIO(data) if data else value["path"]) as img:
                img.load()
                return img
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise ImageInputError(f"cannot decode a dataset image: {exc}") from exc
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    raise ImageInputError(f"dataset image column holds a {type(value).__name__}, not an image")


def _hf_label(row: Mapping[str, Any], col: str | None) -> int | None:
    if col is None or row.get(col) is None:
        return None
    return int(row[col])
