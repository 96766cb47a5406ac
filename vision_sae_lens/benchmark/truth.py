"""Ground truth for the benchmark: which factors each patch and image carries, and where.

The scorer asks a :class:`GroundTruth` three questions per image: its patch labels ``(n_patches, F)``,
its image labels ``(F,)`` and (for localization) its pixel masks ``(F, H, W)`` at the model's input
resolution. :class:`SyntheticTruth` answers them for the shapes world; :class:`ArrayTruth` for a
user's own labelled images (image labels alone, or with masks).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol, runtime_checkable

import numpy as np

from vision_sae_lens.data.synthetic import ShapesWorld, patch_coverage
from vision_sae_lens.errors import ConfigError


@runtime_checkable
class GroundTruth(Protocol):
    """Factor labels of the images a store was recorded from (image index = the store's image index)."""

    factor_names: list[str]
    """Name of each factor (column)."""

    def image_factors(self, image: int) -> np.ndarray:
        """``(F,)`` bool."""
        ...

    def patch_factors(self, image: int) -> np.ndarray:
        """``(n_patches, F)`` bool, row-major patches."""
        ...

    def pixel_masks(self, image: int) -> np.ndarray | None:
        """``(F, H, W)`` bool at the model's input resolution, or None when there are no masks."""
        ...


class SyntheticTruth:
    """The shapes world's exact labels; a patch carries a factor when ``min_coverage`` of its pixels do."""

    def __init__(self, world: ShapesWorld, *, patch_size: int, min_coverage: float = 0.25) -> None:
        if not 0.0 < min_coverage <= 1.0:
            raise ConfigError(f"min_coverage must be in (0, 1], got {min_coverage}")
        self.world, self.patch_size, self.min_coverage = world, int(patch_size), float(min_coverage)
        self.factor_names = list(world.factor_names)
        self._masks = lru_cache(maxsize=256)(world.pixel_masks)

    def image_factors(self, image: int) -> np.ndarray:
        return np.asarray(self._masks(int(image)).any(axis=(1, 2)))

    def patch_factors(self, image: int) -> np.ndarray:
        return patch_coverage(self._masks(int(image)), patch_size=self.patch_size) >= self.min_coverage

    def pixel_masks(self, image: int) -> np.ndarray:
        return self._masks(int(image))


class ArrayTruth:
    """Labels held in arrays: ``image_labels`` ``(n_images, F)`` and optionally ``masks``
    ``(n_images, F, H, W)`` (then patch labels come from mask coverage, else every patch gets its image's
    labels: a weak, image-level supervision of the patch metrics)."""

    def __init__(
        self,
        image_labels: np.ndarray,
        *,
        factor_names: list[str] | None = None,
        masks: np.ndarray | None = None,
        patch_size: int | None = None,
        n_patches: int | None = None,
        min_coverage: float = 0.25,
    ) -> None:
        labels = np.asarray(image_labels).astype(bool)
        if labels.ndim != 2:
            raise ConfigError(f"image_labels must be (n_images, n_factors), got shape {labels.shape}")
        if masks is not None and (masks.ndim != 4 or masks.shape[:2] != labels.shape):
            raise ConfigError(
                f"masks must be (n_images, n_factors, H, W) matching image_labels {labels.shape}"
            )
        if masks is not None and patch_size is None:
            raise ConfigError("masks need patch_size (the backbone's patch size) to give patch labels")
        if masks is None and n_patches is None:
            raise ConfigError("without masks, pass n_patches (patches per image) to give patch labels")
        self.labels, self.masks = labels, masks
        self.factor_names = list(factor_names or [f"factor_{k}" for k in range(labels.shape[1])])
        if len(self.factor_names) != labels.shape[1]:
            raise ConfigError(f"{len(self.factor_names)} factor names for {labels.shape[1]} factors")
        self.patch_size, self.n_patches, self.min_coverage = patch_size, n_patches, min_coverage

    def image_factors(self, image: int) -> np.ndarray:
        return self.labels[image]

    def patch_factors(self, image: int) -> np.ndarray:
        if self.masks is None:
            assert self.n_patches is not None, "__init__ requires n_patches without masks"
            return np.broadcast_to(self.labels[image], (self.n_patches, self.labels.shape[1]))
        assert self.patch_size is not None, "__init__ requires patch_size with masks"
        return patch_coverage(self.masks[image], patch_size=self.patch_size) >= self.min_coverage

    def pixel_masks(self, image: int) -> np.ndarray | None:
        return None if self.masks is None else self.masks[image].astype(bool)
