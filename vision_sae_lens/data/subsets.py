"""Subsets of an image source: seeded random, stratified by label, recorded so they can be drawn again.

``--limit N`` and every held-out selection go through :func:`subset_indices`, never "the first N": image
sets are often sorted by class (the shipped digits are). A :class:`Subset`'s description records how it was
drawn (seed, stratified, out of how many, a hash of the indices) and :func:`redraw_subset` draws it again
from the full source, refusing when the source changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from vision_sae_lens.contracts import ImageSource
from vision_sae_lens.data.files import sha256_lines
from vision_sae_lens.errors import ConfigError, ImageInputError


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


def redraw_subset(source: ImageSource, subset: dict[str, Any] | Sequence[int]) -> Subset:
    """The subset a description's ``subset`` entry names, drawn again from the full ``source``.

    Raises :class:`ImageInputError` when the images drawn now are not the recorded ones (the
    source changed since recording).
    """
    if not isinstance(subset, dict):  # older descriptions: a [start, stop) range
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


def source_labels(source: ImageSource) -> list[int | None] | None:
    """Labels of every image of ``source`` without decoding any image (None when unknown or unlabelled)."""
    labels = source.labels
    if labels is None or all(v is None for v in labels):
        return None
    return [None if v is None else int(v) for v in labels]


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

    @property
    def labels(self) -> list[int | None] | None:
        inner = self.source.labels
        return None if inner is None else [inner[i] for i in self.indices]

    def name_of(self, i: int) -> str:
        return self.source.name_of(self.indices[i])

    @property
    def description(self) -> dict[str, Any]:
        subset = {
            **self.how,
            "count": len(self),
            "indices_sha256": sha256_lines(str(i) for i in self.indices),
        }
        return {**self.source.description, "count": len(self), "subset": subset}
