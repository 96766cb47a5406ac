"""Image sources: anything the recorder can read as ``source[i] -> (PIL.Image, label | None)``.

``open_images(spec)`` turns a spec string, a list of paths / PIL images, a Hugging Face dataset or any
``len`` + ``getitem`` object into an :class:`ImageSource`. Every source is indexable in a fixed,
deterministic order (the *image index* stored with each activation row), knows its ``label_names``
when it has labels, and describes itself as JSON without absolute paths (``description``) so a store
or checkpoint can say which images it came from without leaking the user's file system.

Specs: ``imagefolder:DIR`` (or a plain directory; class sub-folders become labels), ``hf:NAME[:SPLIT]``,
``hf-disk:DIR[:SPLIT]``, ``demo:mnist[:train|test|all]``. Reading a corrupt file raises
:class:`~vision_sae_lens.errors.ImageInputError`; the recorder skips such images and lists them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from vision_sae_lens.contracts import ImageSource
from vision_sae_lens.errors import ConfigError, ImageInputError

if TYPE_CHECKING:
    from vision_sae_lens.data.demo_digits import Split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")


def open_images(
    spec: Any, *, streaming: bool = False, limit: int | None = None, seed: int = 0
) -> ImageSource:
    """Build an :class:`ImageSource` from a spec string, a directory, a list of paths or PIL images,
    a ``datasets.Dataset`` / ``IterableDataset``, or any object with ``len`` and ``getitem``.

    ``limit`` keeps a seeded random subset of ``limit`` images (stratified by label when the source
    has labels; see :func:`select_images`), never the first ones: datasets are often sorted by class.
    ``streaming=True`` streams a ``hf:`` dataset instead of downloading it whole; a streamed source needs
    ``limit`` so its length, and therefore the store layout, is fixed, and takes the stream's first
    ``limit`` rows (a stream cannot be sampled without reading it whole: shuffle it upstream).
    """
    if limit is not None and limit < 1:
        raise ImageInputError(f"limit must be >= 1 image, got {limit}")
    source = _open(spec, streaming=streaming, limit=limit)
    if limit is not None and not isinstance(source, StreamingHFSource) and limit < len(source):
        source = select_images(source, limit, seed=seed)
    return source


def select_images(source: ImageSource, n: int, *, seed: int = 0) -> Subset:
    """A seeded random subset of ``n`` images of ``source``, stratified by label when it has labels.

    Every label keeps its share of the images (largest remainder; unlabelled images form their own
    stratum) and the chosen indices are kept in dataset order. The same source, ``n`` and ``seed``
    always give the same subset; its description records how it was drawn so it can be re-drawn.
    """
    total = len(source)
    if not 1 <= n <= total:
        raise ImageInputError(f"cannot select {n} of {total} images; choose 1..{total}")
    labels = source_labels(source)
    indices = subset_indices(total, n, labels=labels, seed=seed)
    return Subset(source, indices, how={"seed": seed, "stratified": labels is not None, "of": total})


def redraw_subset(source: ImageSource, subset: Any) -> Subset:
    """The subset a description's ``subset`` entry names, drawn again from the full ``source``.

    Raises :class:`ImageInputError` when the images drawn now are not the recorded ones (the
    source changed since recording).
    """
    if isinstance(subset, (list, tuple)):  # older descriptions: a [start, stop) range
        return Subset(source, range(*subset))
    if subset.get("of") not in (None, len(source)):
        raise ImageInputError(
            f"the subset was drawn from {subset['of']} images, the source now has {len(source)}"
        )
    chosen = select_images(source, int(subset["count"]), seed=int(subset.get("seed", 0)))
    if (
        subset.get("indices_sha256")
        and chosen.description["subset"]["indices_sha256"] != subset["indices_sha256"]
    ):
        raise ImageInputError("the images drawn again differ from the recorded subset: the source changed")
    return chosen


def subset_indices(
    total: int, n: int, *, labels: Sequence[int | None] | None = None, seed: int = 0
) -> np.ndarray:
    """Sorted int64 indices of a seeded random subset of ``n`` out of ``total`` (stratified by ``labels``)."""
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(total, size=n, replace=False)).astype(np.int64)
    lab = np.asarray([-1 if v is None else int(v) for v in labels], dtype=np.int64)
    if len(lab) != total:
        raise ConfigError(f"{len(lab)} labels for {total} items")
    classes, counts = np.unique(lab, return_counts=True)
    quota = counts * n / total
    take = np.floor(quota).astype(np.int64)
    # Largest remainder: the rounding leftovers go to the classes closest to their next image.
    short = n - int(take.sum())
    if short:
        order = np.lexsort((rng.random(len(classes)), -(quota - take)))
        take[order[:short]] += 1
    chosen = [
        rng.choice(np.flatnonzero(lab == c), size=int(t), replace=False)
        for c, t in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def source_labels(source: Any) -> list[int | None] | None:
    """Labels of every image of ``source`` without decoding any image (None when unknown or unlabelled)."""
    if isinstance(source, Subset):
        inner = source_labels(source.source)
        return None if inner is None else [inner[i] for i in source.indices]
    labels: list[Any] | None
    if isinstance(source, ImageFolder):
        labels = list(source._labels)
    elif isinstance(source, HFSource):
        labels = list(source.ds[source.label_col]) if source.label_col else None
    elif isinstance(source, GenericSource):
        labels = getattr(source.obj, "labels", None)
        labels = None if labels is None or callable(labels) else list(labels)
    else:
        labels = getattr(source, "labels", None)
        labels = None if labels is None or callable(labels) else list(labels)
    if labels is None or all(v is None for v in labels):
        return None
    return [None if v is None else int(v) for v in labels]


def _open(spec: Any, *, streaming: bool, limit: int | None) -> ImageSource:
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if text.startswith("imagefolder:"):
            return ImageFolder(text.removeprefix("imagefolder:"))
        if text.startswith("demo:"):
            return _open_demo(text)
        if text.startswith("synthetic:"):
            from vision_sae_lens.data.synthetic import open_synthetic

            return open_synthetic(text)
        if text.startswith(("hf:", "hf-disk:")):
            return _open_hf_spec(text, streaming=streaming, limit=limit)
        if Path(text).is_dir():
            return ImageFolder(text)
        if Path(text).is_file():
            return PathList([text])
        raise ImageInputError(
            f"cannot open images from {text!r}: not a directory or file, and not a spec. Use "
            "'imagefolder:DIR', 'hf:NAME[:SPLIT]', 'hf-disk:DIR[:SPLIT]', 'demo:mnist[:train|test]', "
            "or pass a list of paths / PIL images."
        )
    if _is_hf_dataset(spec):
        return _from_hf_object(
            spec, name=getattr(getattr(spec, "info", None), "dataset_name", None), limit=limit
        )
    if isinstance(spec, Image.Image):
        return PILList([spec])
    if (
        isinstance(spec, Sequence)
        and not isinstance(spec, (bytes, bytearray))
        and not hasattr(spec, "description")
    ):
        items = list(spec)
        if not items:
            raise ImageInputError("empty image list: pass at least one image")
        if all(isinstance(x, Image.Image) for x in items):
            return PILList(items)
        if all(isinstance(x, (str, os.PathLike)) for x in items):
            return PathList(items)
        raise ImageInputError("an image list must hold only paths or only PIL images")
    if hasattr(spec, "__len__") and hasattr(spec, "__getitem__"):
        return GenericSource(spec)
    raise ImageInputError(f"cannot use a {type(spec).__name__} as images; see open_images() for what works")


# --------------------------------------------------------------------------------- file sources
class ImageFolder:
    """Images under a directory, sorted by relative path; ``DIR/<class>/<img>`` gives labels."""

    def __init__(self, root: str | os.PathLike) -> None:
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
        # Classes are the top-level folders that hold images (nested folders count for their top one).
        classes = sorted({f.split("/", 1)[0] for f in files if "/" in f})
        self.label_names = classes or None
        index = {name: i for i, name in enumerate(classes)}
        self._labels = [index.get(f.split("/", 1)[0]) if "/" in f else None for f in files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Image.Image, int | None]:
        return read_image(self.root / self.files[i]), self._labels[i]

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
            "files_sha256": _sha256_lines(self.files),
        }


class PathList:
    """A list of image paths (kept in the given order; no labels)."""

    label_names = None

    def __init__(self, paths: Sequence[str | os.PathLike]) -> None:
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Image.Image, None]:
        return read_image(self.paths[i]), None

    def name_of(self, i: int) -> str:
        return self.paths[i].name

    @property
    def description(self) -> dict[str, Any]:
        # The paths themselves may be absolute: record only their hash and file names' hash.
        return {
            "kind": "files",
            "count": len(self),
            "paths_sha256": _sha256_lines(os.fspath(p) for p in self.paths),
        }


class PILList:
    """A list of in-memory PIL images (no labels); identified by a hash of their pixels."""

    label_names = None

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


def to_standard_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to "RGB" (3 channels) or "L" (1 channel); 16-bit and float images are
    rescaled to 8 bits first (PIL's own ``convert`` clips them)."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.round().astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on white: dropping alpha would reveal whatever colour transparent pixels hold.
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


# ------------------------------------------------------------------------------ generic wrappers
class GenericSource:
    """Any ``len`` + ``getitem`` object whose items are ``(image, label)`` pairs or bare images."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.label_names = list(obj.label_names) if getattr(obj, "label_names", None) is not None else None

    def __len__(self) -> int:
        return len(self.obj)

    def __getitem__(self, i: int) -> tuple[Image.Image, int | None]:
        item = self.obj[i]
        if isinstance(item, tuple) and len(item) == 2:
            img, label = item
            return img, None if label is None else int(label)
        return item, None

    def name_of(self, i: int) -> str:
        return self.obj.name_of(i) if hasattr(self.obj, "name_of") else f"image[{i}]"

    @property
    def description(self) -> dict[str, Any]:
        desc = getattr(self.obj, "description", None)
        if isinstance(desc, dict):
            return dict(desc)
        return {"kind": type(self.obj).__name__, "count": len(self)}


class Subset:
    """The images of ``source`` at ``indices`` (see :func:`select_images`)."""

    def __init__(
        self,
        source: ImageSource,
        indices: Sequence[int] | np.ndarray,
        *,
        how: dict[str, Any] | None = None,
    ) -> None:
        self.source, self.indices = source, [int(i) for i in indices]
        self.label_names = source.label_names
        self.how = dict(how or {})
        """How the indices were drawn (seed, stratified, of): recorded in the description."""

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Image.Image, int | None]:
        return self.source[self.indices[i]]

    def name_of(self, i: int) -> str:
        inner = getattr(self.source, "name_of", None)
        return inner(self.indices[i]) if inner else f"image[{i}]"

    @property
    def description(self) -> dict[str, Any]:
        subset = {
            **self.how,
            "count": len(self),
            "indices_sha256": _sha256_lines(str(i) for i in self.indices),
        }
        return {**self.source.description, "count": len(self), "subset": subset}


# ------------------------------------------------------------------------------------- demo set
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


# ------------------------------------------------------------------------ Hugging Face datasets
def _is_hf_dataset(obj: Any) -> bool:
    mod = type(obj).__module__
    return mod.startswith("datasets.") and type(obj).__name__ in ("Dataset", "IterableDataset")


def _open_hf_spec(spec: str, *, streaming: bool, limit: int | None) -> ImageSource:
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
        return _from_hf_object(ds, name=Path(name).resolve().name, split=split, kind="hf-disk", limit=limit)
    ds = datasets.load_dataset(name, split=split or "train", streaming=streaming)
    return _from_hf_object(ds, name=name, split=split or "train", kind="hf", limit=limit)


def _default_split(dsd: Any) -> str:
    return "train" if "train" in dsd else sorted(dsd)[0]


def _from_hf_object(ds: Any, *, name: str | None, split: str | None = None, kind: str = "hf", limit=None):
    image_col, label_col, label_names = _hf_columns(ds.features)
    meta = {"kind": kind, "name": name or "dataset", "split": split}
    if type(ds).__name__ == "IterableDataset":
        if limit is None:
            raise ImageInputError(
                "a streamed dataset has no length: pass limit=N (CLI: --limit N) so the store layout is fixed"
            )
        return StreamingHFSource(ds, image_col, label_col, label_names, limit=limit, meta=meta)
    return HFSource(ds, image_col, label_col, label_names, meta=meta)


def _hf_columns(features: Any) -> tuple[str, str | None, list[str] | None]:
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


class HFSource:
    """A map-style ``datasets.Dataset`` with an image column (and a ClassLabel column when present)."""

    def __init__(self, ds, image_col: str, label_col: str | None, label_names, *, meta: dict) -> None:
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

    def name_of(self, i: int) -> str:
        return f"row {i}"

    @property
    def description(self) -> dict[str, Any]:
        return {**self._meta, "count": len(self), "fingerprint": getattr(self.ds, "_fingerprint", None)}


class StreamingHFSource:
    """The first ``limit`` rows of a streamed ``datasets.IterableDataset``; read in order through
    :meth:`iter_range` (random access would re-stream from the start)."""

    def __init__(self, ds, image_col: str, label_col: str | None, label_names, *, limit: int, meta: dict):
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
    ) -> Iterator[tuple[int, tuple[Image.Image, int | None] | Exception]]:
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


def _hf_image(value: Any) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        import io

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


def _hf_label(row: dict, col: str | None) -> int | None:
    if col is None or row.get(col) is None:
        return None
    return int(row[col])


def _sha256_lines(lines: Any) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()
