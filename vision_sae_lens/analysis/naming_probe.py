"""The probe images of naming, and the one scan that collects what naming needs about them.

The probe set is a seeded random draw of the store's images (all of them up to ``max_images``,
stratified by label when the store has labels), split again (seeded, stratified) into *naming* images,
whose top activations choose each latent's name, and *held-out* images, on which the chosen name's
detection AUROC is measured. Only the probe images' rows are read (:class:`StoreImages`), and
:class:`ProbeCollector` keeps, per latent, its top ``k`` naming images, on which held-out images it
fires and on which naming images (one bit per image and latent) and, with labels, how often it fires per
label: memory ``d_sae x (k + probe images / 8 + labels)``, never ``images x d_sae`` floats.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from vision_sae_lens.analysis.scan import ImageReduction
from vision_sae_lens.analysis.topk import TopKAccumulator
from vision_sae_lens.errors import ConfigError, StoreCorruptError

if TYPE_CHECKING:
    from vision_sae_lens.contracts import ActivationStoreReader


@dataclass(frozen=True)
class ProbeSplit:
    """Which store images name the latents and which measure the names."""

    naming: np.ndarray
    """Sorted int64 store image indices whose top activations choose the names."""
    heldout: np.ndarray
    """Sorted int64 store image indices on which the detection AUROC is measured."""
    seed: int
    stratified: bool

    def describe(self, n_images: int) -> dict[str, Any]:
        """The record written into names.json."""
        return {
            "method": "seeded random images" + (", stratified by label" if self.stratified else ""),
            "seed": self.seed,
            "store_images": n_images,
            "naming_images": len(self.naming),
            "heldout_images": len(self.heldout),
        }


def split_probe(
    n_images: int,
    *,
    labels: Any = None,
    max_images: int | None = 5000,
    heldout_fraction: float = 0.2,
    seed: int = 0,
) -> ProbeSplit:
    """Draw the probe images and split them into naming and held-out images (see the module docstring)."""
    from vision_sae_lens.data import subset_indices

    if not 0.0 < heldout_fraction < 1.0:
        raise ConfigError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    n_probe = n_images if max_images is None else min(n_images, int(max_images))
    n_held = round(n_probe * heldout_fraction)
    if n_probe - n_held < 1 or n_held < 2:
        raise ConfigError(
            f"{n_probe} probe images leave {n_probe - n_held} to name and {n_held} held out; naming needs at "
            "least one naming image and two held-out images: record more images or raise max_images"
        )
    lab = None if labels is None else np.asarray(labels).astype(np.int64)
    if lab is not None and lab.ndim != 1:
        lab = None  # several labels per image: a plain random draw
    if lab is not None and len(lab) != n_images:
        raise ConfigError(f"{len(lab)} labels for {n_images} store images")
    probe = subset_indices(n_images, n_probe, labels=None if lab is None else lab.tolist(), seed=seed)
    held_pos = subset_indices(
        n_probe, n_held, labels=None if lab is None else lab[probe].tolist(), seed=seed + 1
    )
    held = np.zeros(n_probe, dtype=bool)
    held[held_pos] = True
    return ProbeSplit(probe[~held], probe[held], seed, lab is not None)


class StoreImages:
    """An activation store restricted to some of its images (the rows of the others are never read).

    It offers what a scan reads from a store (sites, layout, tokens, ``ordered`` rows, labels); image
    indices stay the store's. Rows must be ``rows_per_image`` consecutive rows per image, as the
    recorder writes them; provenance is checked as the rows are read.
    """

    def __init__(self, store: ActivationStoreReader, images: np.ndarray) -> None:
        self.store, self.images = store, np.unique(np.asarray(images, dtype=np.int64))
        n_images, n_rows = int(store.n_images), int(store.n_rows)
        self.rows_per_image = n_rows // max(n_images, 1)
        if self.rows_per_image * n_images != n_rows:
            raise StoreCorruptError(
                f"{store.path}: {n_rows} rows for {n_images} images is not a whole number of rows per image"
            )
        if self.images.size and (self.images[0] < 0 or self.images[-1] >= n_images):
            raise ConfigError(f"image indices must lie in [0, {n_images})")
        self.sites, self.layout, self.tokens = store.sites, store.layout, store.tokens
        self.labels, self.label_names = store.labels, store.label_names
        self.n_images, self.n_rows = len(self.images), len(self.images) * self.rows_per_image

    def site_dim(self, site: str) -> int:
        return int(self.store.site_dim(site))

    def ordered(self, site: str, batch_size: int, **_: Any) -> Iterator[Any]:
        """Rows of the chosen images in (image, token) order, about ``batch_size`` rows at a time."""
        from vision_sae_lens.store import Rows

        per = self.rows_per_image
        step = max(1, batch_size // max(per, 1))
        for lo in range(0, len(self.images), step):
            chosen = self.images[lo : lo + step]
            # Consecutive images are read as one range.
            breaks = np.flatnonzero(np.diff(chosen) != 1) + 1
            acts, image_n, token_n = [], [], []
            for run in np.split(chosen, breaks):
                start, stop = int(run[0]) * per, (int(run[-1]) + 1) * per
                img, tok = self.store.provenance(start, stop)
                if not np.array_equal(img, np.repeat(run, per)):
                    raise StoreCorruptError(
                        f"{self.store.path}: rows {start}..{stop - 1} are not the rows of images "
                        f"{int(run[0])}..{int(run[-1])}; the store's rows are not in (image, token) order"
                    )
                acts.append(self.store.read_rows(site, start, stop))
                image_n.append(torch.from_numpy(img))
                token_n.append(torch.from_numpy(tok))
            yield Rows(torch.cat(acts), torch.cat(image_n), torch.cat(token_n))


class LabelTable:
    """Labels of a store's images, one per image (``(n,)`` ints, -1 unlabelled) or several (``(n, L)``
    bool), read as ``(m, L)`` bool rows; one label per image is never expanded for all images at once."""

    def __init__(self, labels: Any, names: list[str] | None, n_images: int) -> None:
        arr = np.asarray(labels)
        if arr.ndim not in (1, 2) or arr.shape[0] != n_images:
            raise ConfigError(
                f"labels must be (n_images,) or (n_images, L) for the store's {n_images} images, got {arr.shape}"
            )
        self.values = arr.astype(bool) if arr.ndim == 2 else arr.astype(np.int64)
        width = arr.shape[1] if arr.ndim == 2 else max(int(arr.max(initial=-1)) + 1, len(names or []), 1)
        self.names = list(names or [f"label {i}" for i in range(width)])
        if len(self.names) != width:
            raise ConfigError(f"{len(self.names)} label names for {width} labels")

    @property
    def n_labels(self) -> int:
        return len(self.names)

    @property
    def single(self) -> np.ndarray | None:
        """The one label per image (for stratified draws), or None for several labels per image."""
        return self.values if self.values.ndim == 1 else None

    def rows(self, images: np.ndarray) -> np.ndarray:
        """``(len(images), L)`` bool."""
        if self.values.ndim == 2:
            return self.values[images]
        lab = self.values[images]
        out = np.zeros((len(images), self.n_labels), dtype=bool)
        out[np.flatnonzero(lab >= 0), lab[lab >= 0]] = True
        return out


class FireBits:
    """Whether each latent fires on each of ``n`` images: one bit per (image, latent)."""

    def __init__(self, n_images: int, d_sae: int) -> None:
        self.n_images = n_images
        self.bits = torch.zeros((n_images + 7) // 8, d_sae, dtype=torch.uint8)

    def set(self, position: int, fires_s: torch.Tensor) -> None:
        """Record image ``position``'s ``(d_sae,)`` bool firing."""
        self.bits[position // 8] |= fires_s.to(torch.uint8) << (position % 8)

    def get(self, latents: slice) -> torch.Tensor:
        """``(n_images, latents)`` bool."""
        bits = self.bits[:, latents]
        unpacked = (bits.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8).view(1, 8, 1)) & 1
        return unpacked.reshape(-1, bits.shape[1])[: self.n_images].bool()


class ProbeCollector:
    """Scan consumer: top-``k`` naming images per latent, firing bits on the naming and held-out images,
    per-label firing counts (with ``labels``)."""

    def __init__(
        self, d_sae: int, split: ProbeSplit, *, k: int, by: str = "max", labels: LabelTable | None = None
    ) -> None:
        self.split, self.d_sae = split, d_sae
        self.topk = TopKAccumulator(d_sae, k, by=by)
        self.naming_pos = {int(i): p for p, i in enumerate(split.naming)}
        self.held_pos = {int(i): p for p, i in enumerate(split.heldout)}
        self.naming_fires = FireBits(len(split.naming), d_sae)
        self.heldout_fires = FireBits(len(split.heldout), d_sae)
        self.labels = labels
        n_labels = 0 if labels is None else labels.n_labels
        self.label_counts_sl = torch.zeros(d_sae, n_labels, dtype=torch.int32)
        self.naming_fires_s = torch.zeros(d_sae, dtype=torch.long)

    def rows(self, feats_ns: torch.Tensor, image_n: torch.Tensor, token_n: torch.Tensor) -> None:
        pass

    def images(self, red: ImageReduction) -> None:
        image_m = red.image_idx.tolist()
        naming_m = torch.tensor([i in self.naming_pos for i in image_m], dtype=torch.bool)
        fires_ms = red.max_ms > 0
        if bool(naming_m.any()):
            self.topk.images(cast(ImageReduction, _Only(red, naming_m)))  # reads only what _Only offers
            fires_naming = fires_ms[naming_m]
            self.naming_fires_s += fires_naming.sum(0)
            if self.labels is not None:
                rows = np.asarray([i for i, keep in zip(image_m, naming_m.tolist(), strict=True) if keep])
                labels_ml = torch.from_numpy(self.labels.rows(rows).astype(np.float32))
                self.label_counts_sl += (fires_naming.T.float() @ labels_ml).round().int()
        for m, image in enumerate(image_m):
            if image in self.naming_pos:
                self.naming_fires.set(self.naming_pos[image], fires_ms[m])
            elif image in self.held_pos:
                self.heldout_fires.set(self.held_pos[image], fires_ms[m])

    def top_naming_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positions into split.naming, activations)``, both ``(d_sae, k)``; empty slots -1 / <= 0."""
        image_sk, value_sk = self.topk.image_idx, self.topk.values
        lookup = torch.full((int(self.split.naming.max()) + 1 if len(self.split.naming) else 1,), -1)
        lookup[torch.from_numpy(self.split.naming)] = torch.arange(len(self.split.naming))
        valid = (image_sk >= 0) & (value_sk > 0)
        pos = torch.where(valid, lookup[image_sk.clamp(min=0).clamp(max=len(lookup) - 1)], -1)
        return pos, torch.where(valid, value_sk, 0.0)


class _Only:
    """The part of an :class:`ImageReduction` that :class:`TopKAccumulator` reads, with the images outside
    ``keep_m`` scored -inf so that they never enter a latent's top images."""

    def __init__(self, red: ImageReduction, keep_m: torch.Tensor) -> None:
        self.red, self.keep_ms, self.image_idx = red, keep_m[:, None], red.image_idx

    @property
    def max_ms(self) -> torch.Tensor:
        return torch.where(self.keep_ms, self.red.max_ms, -torch.inf)

    @property
    def mean_ms(self) -> torch.Tensor:
        return torch.where(self.keep_ms, self.red.mean_ms, -torch.inf)

    def argmax_at(self, image_p: torch.Tensor, latent_p: torch.Tensor) -> torch.Tensor:
        return self.red.argmax_at(image_p, latent_p)
