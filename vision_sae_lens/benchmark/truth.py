"""Ground truth for the benchmark: which factors each patch and image carries, and where.

The scorer asks a :class:`GroundTruth` three questions per image: its patch labels ``(n_patches, F)``,
its image labels ``(F,)`` and (for localization) its pixel masks ``(F, H, W)`` at the model's input
resolution. :class:`SyntheticTruth` answers them for the shapes world; :class:`ArrayTruth` for a
user's own labelled images (image labels alone, or with masks).

:class:`ActivationTruth` is ground truth in activation space (SynthSAEBench's kind): the true feature
directions ``(F, d)`` and every row's sparse feature activations, for a store of plain rows
(:class:`~vision_sae_lens.layout.RowLayout`: "image" ``i`` is row ``i``). Besides the three questions it
answers :meth:`~ActivationTruth.factor_pairs` for a whole batch at once (the scorer's fast path for any
truth that has it) and carries ``directions``, which switch on SynthSAEBench's metrics.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from vision_sae_lens.contracts import ActivationStoreReader
from vision_sae_lens.data.synthetic import ShapesWorld, patch_coverage
from vision_sae_lens.errors import ConfigError, DataFileNotFoundError, StoreMismatchError
from vision_sae_lens.layout import RowLayout

BACKBONE_ID = "demo:shapes-vit"
"""The backbone the synthetic suite records its shapes images with."""
DEFAULT_SITE = "blocks.2.hook_resid_post"
"""Residual stream after 3 of the shapes ViT's 4 blocks."""
TRUTH_FORMAT = "vision_sae_lens.activation_truth"


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


class ActivationTruth:
    """True feature directions and each row's feature activations (CSR: ``indptr``, ``indices``, ``values``).

    Row ``i`` of the store it describes has activations ``values[indptr[i]:indptr[i+1]]`` of features
    ``indices[...]`` (the rest are 0) and equals ``sum_k act_k * directions[k]`` plus any bias and noise
    of the generator. A feature counts as present in a row when its activation is > 0.
    """

    def __init__(
        self,
        directions: torch.Tensor,
        indptr: torch.Tensor,
        indices: torch.Tensor,
        values: torch.Tensor,
        *,
        feature_names: list[str] | None = None,
        store_fingerprint: str | None = None,
    ) -> None:
        self.directions = torch.as_tensor(directions).float()
        self.indptr, self.indices = torch.as_tensor(indptr).long(), torch.as_tensor(indices).long()
        self.values = torch.as_tensor(values).float()
        n_features = self.directions.shape[0]
        if self.directions.dim() != 2 or n_features == 0:
            raise ConfigError(f"directions must be (n_features, d), got shape {tuple(self.directions.shape)}")
        if self.indptr.dim() != 1 or len(self.indptr) < 1 or int(self.indptr[0]) != 0:
            raise ConfigError("indptr must be a 1-D CSR row pointer starting at 0")
        ends_ok = int(self.indptr[-1]) == len(self.indices) == len(self.values)
        if bool((self.indptr.diff() < 0).any()) or not ends_ok:
            raise ConfigError("indptr must be non-decreasing and end at len(indices) == len(values)")
        if len(self.indices) and (int(self.indices.min()) < 0 or int(self.indices.max()) >= n_features):
            raise ConfigError(f"feature indices must lie in 0..{n_features - 1}")
        if not bool(torch.isfinite(self.values).all()) or not bool(torch.isfinite(self.directions).all()):
            raise ConfigError("feature activations and directions must be finite (no NaN/inf)")
        self.factor_names = list(feature_names or [f"feature_{k}" for k in range(n_features)])
        if len(self.factor_names) != n_features:
            raise ConfigError(f"{len(self.factor_names)} feature names for {n_features} features")
        self.store_fingerprint = store_fingerprint

    @classmethod
    def from_batches(
        cls, directions: torch.Tensor, feature_acts: Iterable[torch.Tensor], **kwargs: object
    ) -> ActivationTruth:
        """Collect ``(n, F)`` activation batches (dense or sparse, rows in store order) into a truth."""
        indptr, indices, values, offset = [torch.zeros(1, dtype=torch.long)], [], [], 0
        for acts in feature_acts:
            acts = (acts.to_dense() if acts.is_sparse else acts).detach().cpu().float()
            rows, cols = acts.nonzero(as_tuple=True)
            indptr.append(offset + torch.cumsum(torch.bincount(rows, minlength=len(acts)), 0))
            offset += len(rows)
            indices.append(cols)
            values.append(acts[rows, cols])
        empty = torch.zeros(0)
        return cls(directions, torch.cat(indptr), torch.cat(indices or [empty.long()]),
                   torch.cat(values or [empty]), **kwargs)  # type: ignore[arg-type]  # fmt: skip

    @property
    def n_rows(self) -> int:
        """Rows described."""
        return len(self.indptr) - 1

    def feature_activations(self, rows: torch.Tensor) -> torch.Tensor:
        """Dense ``(n, F)`` float32 activations of ``rows`` (store row / image indices)."""
        rows = self._check_rows(rows)
        starts, counts = self.indptr[rows], self.indptr[rows + 1] - self.indptr[rows]
        local = torch.repeat_interleave(torch.arange(len(rows)), counts)
        at = torch.repeat_interleave(starts - torch.cumsum(counts, 0) + counts, counts) + torch.arange(
            len(local)
        )
        out = torch.zeros(len(rows), len(self.factor_names))
        out[local, self.indices[at]] = self.values[at]
        return out

    def factor_pairs(self, image_n: torch.Tensor, patch_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch row, feature)`` pairs of the features present (activation > 0) in each row."""
        del patch_n  # one row per example: there is only "patch" 0
        rows, features = (self.feature_activations(image_n) > 0).nonzero(as_tuple=True)
        return rows, features

    def image_factors(self, image: int) -> np.ndarray:
        return (self.feature_activations(torch.tensor([image]))[0] > 0).numpy()

    def patch_factors(self, image: int) -> np.ndarray:
        return self.image_factors(image)[None, :]

    def pixel_masks(self, image: int) -> None:
        return None

    def save(self, path: str | Path) -> Path:
        """Write a safetensors file (directions, CSR arrays; names and store fingerprint as metadata)."""
        import json

        from safetensors.torch import save

        from vision_sae_lens import fsutil

        path = Path(path)
        meta = {"format": TRUTH_FORMAT, "feature_names": json.dumps(self.factor_names),
                "store_fingerprint": self.store_fingerprint or ""}  # fmt: skip
        tensors = {"directions": self.directions.contiguous(), "indptr": self.indptr,
                   "indices": self.indices, "values": self.values}  # fmt: skip
        fsutil.write_atomic(path, save(tensors, metadata=meta))
        return path

    @classmethod
    def load(cls, path: str | Path, *, store: ActivationStoreReader | None = None) -> ActivationTruth:
        """Read :meth:`save`'s file; with ``store``, check it describes that store's rows."""
        import json

        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise DataFileNotFoundError(f"no activation truth file at {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != TRUTH_FORMAT:
            raise ConfigError(f"{path} is not an activation truth file (format {meta.get('format')!r})")
        t = load_file(str(path))
        truth = cls(t["directions"], t["indptr"], t["indices"], t["values"],
                    feature_names=json.loads(meta["feature_names"]),
                    store_fingerprint=meta.get("store_fingerprint") or None)  # fmt: skip
        if store is not None:
            truth.check_store(store)
        return truth

    def check_store(self, store: ActivationStoreReader) -> None:
        """Refuse a store whose rows this truth does not describe (fingerprint or row count)."""
        fingerprint, n_rows = store.fingerprint, store.n_rows
        if self.store_fingerprint and fingerprint != self.store_fingerprint:
            raise StoreMismatchError(
                f"this truth describes the store with fingerprint {self.store_fingerprint}, not {fingerprint}"
            )
        if n_rows != self.n_rows:
            raise StoreMismatchError(f"this truth describes {self.n_rows} rows; the store holds {n_rows}")
        if not isinstance(store.layout, RowLayout):
            raise StoreMismatchError("an activation truth describes a store of plain rows (RowLayout)")

    def _check_rows(self, rows: torch.Tensor) -> torch.Tensor:
        rows = torch.as_tensor(rows).long().reshape(-1)
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= self.n_rows):
            raise ConfigError(f"row indices must lie in 0..{self.n_rows - 1} (this truth's rows)")
        return rows
