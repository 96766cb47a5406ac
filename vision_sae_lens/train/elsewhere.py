"""Inputs for scoring a package SAE with other benchmarks (ViSAEBench), with their traps handled.

ViSAEBench's metric classes take any object with ``encode`` / ``decode``, so a SAELens SAE from this
package goes in as is. What goes wrong is the activations: its ``evaluate()`` renormalises them
(a package SAE folds its normalisation into the weights and wants raw rows), its own extraction drops
only sequence position 0 (registers stay in), its layer ``L`` means one site only, and its ``FVU`` wants
``(rows, d)`` where ``SparseProbing`` wants ``(images, patches, d)``. :func:`visaebench_inputs` reads
the rows from an activation store instead: the SAE's own site, patch tokens only (CLS and registers
dropped, patches in grid order), raw units, a seeded random (label-stratified) draw of whole images,
shaped both ways, with the keyword arguments that stop ViSAEBench from renormalising.
docs/evaluating_elsewhere.md shows the calls and what the numbers mean next to the package's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sae_lens import SAE

from vision_sae_lens.contracts import ActivationStoreReader
from vision_sae_lens.errors import ConfigError, SAEMismatchError, StoreCorruptError, StoreMismatchError
from vision_sae_lens.train.feed import check_store_for, open_store

_RESID_POST = re.compile(r"blocks\.(\d+)\.hook_resid_post")


@dataclass(frozen=True, eq=False)
class VisaebenchInputs:
    """Patch rows of some images at an SAE's site, as ViSAEBench's metrics take them."""

    activations: torch.Tensor
    """(images, patches, d) float32 raw activations: ``SparseProbing``'s ``activations``."""
    labels: np.ndarray | None
    """(images,) int64 class labels from the store (None when it has none)."""
    image_indices: np.ndarray
    """(images,) the store's image index of each row of :attr:`activations`."""
    grid: tuple[int, int]
    """Patch grid (rows, columns): ViSAEBench's ``grid_size``."""
    layer: int | None
    """ViSAEBench's ``layer`` for this site (``blocks.L.hook_resid_post`` is ``L``); None for other sites."""
    d_sae: int
    """The SAE's width, ViSAEBench's ``dict_size`` (its FVU counts dead latents only when given it)."""

    @property
    def rows(self) -> torch.Tensor:
        """(images * patches, d): ``FVU``'s ``activations`` (a 3-D tensor breaks its dead-latent count)."""
        return self.activations.reshape(-1, self.activations.shape[-1])

    def metric_kwargs(self) -> dict[str, Any]:
        """``mean=None, std=None`` (rows are raw; the SAE holds its own normalisation) and ``dict_size``."""
        return {"mean": None, "std": None, "dict_size": self.d_sae}


def visaebench_layer(hook_name: str) -> int:
    """ViSAEBench's ``layer`` for a site: ``blocks.L.hook_resid_post`` (a block's output) is ``L``.

    ViSAEBench extracts block outputs only; any other site has no ``layer``: hand it the rows instead.
    """
    match = _RESID_POST.fullmatch(hook_name)
    if match is None:
        raise ConfigError(
            f"ViSAEBench's layer L is the output of block L (blocks.L.hook_resid_post); {hook_name!r} is not one. "
            "Give ViSAEBench pre-extracted rows (visaebench_inputs) instead of letting it extract."
        )
    return int(match.group(1))


def visaebench_inputs(
    sae: SAE,
    store: ActivationStoreReader | Any,
    *,
    max_images: int | None = None,
    seed: int = 0,
) -> VisaebenchInputs:
    """Patch rows of ``store`` at ``sae``'s site for ViSAEBench: patches only, raw units, whole images.

    ``max_images`` images are a seeded random draw (stratified by label when the store has labels); None
    takes every image. When the store has labels, images without one are left out (ViSAEBench's probes
    take class indices only). Memory: images x patches x d x 4 bytes. Dead-latent counts computed on these rows
    cover only these rows.
    """
    reader = open_store(store)
    site = getattr(sae.cfg.metadata, "hook_name", None)
    if not site:
        raise SAEMismatchError("the SAE has no cfg.metadata.hook_name, so its site in the store is unknown")
    check_store_for(reader, site, sae.cfg.d_in, name="ViSAEBench rows")
    if getattr(sae.cfg.metadata, "tokens", None) in ("cls", "registers"):
        raise SAEMismatchError(
            f"this SAE was trained on {sae.cfg.metadata.tokens} tokens; ViSAEBench scores patch tokens only."
        )
    layout = reader.layout
    if reader.tokens not in ("patches", "all"):
        raise StoreMismatchError(
            f"the store recorded {reader.tokens!r} tokens; ViSAEBench needs the patch tokens of each image. "
            "Record a store with tokens='patches' (or 'all')."
        )
    image_n, token_n = reader.provenance(0, int(reader.n_rows))
    images, first_row, counts = np.unique(image_n, return_index=True, return_counts=True)
    per_image = len(layout.token_indices(reader.tokens))
    if np.any(counts != per_image):
        raise StoreMismatchError(
            f"some images of the store have fewer than their {per_image} token rows; ViSAEBench needs whole images."
        )
    labels = None if reader.labels is None else np.asarray(reader.labels, dtype=np.int64)
    if labels is not None:  # ViSAEBench's probes take class indices only: unlabelled images stay out
        keep = labels[images] >= 0
        images, first_row = images[keep], first_row[keep]
    chosen = _draw(images, labels, max_images, seed)
    # rows are in (image, token) order, so an image's patches are the last n_patches rows of its block
    patch_offset = per_image - layout.n_patches
    rows_n = (first_row[chosen, None] + patch_offset + np.arange(layout.n_patches)).reshape(-1)
    expected_t = np.tile(np.arange(layout.n_prefix, layout.n_tokens), len(chosen))
    if not np.array_equal(token_n[rows_n], expected_t):
        raise StoreCorruptError(
            f"store {reader.path}: rows are not in (image, token) order; re-record the store."
        )
    acts = reader.gather(site, rows_n).float().reshape(len(chosen), layout.n_patches, -1)
    match = _RESID_POST.fullmatch(site)
    return VisaebenchInputs(
        activations=acts,
        labels=None if labels is None else labels[images[chosen]],
        image_indices=images[chosen],
        grid=layout.grid,
        layer=int(match.group(1)) if match else None,
        d_sae=int(sae.cfg.d_sae),
    )


def _draw(images: np.ndarray, labels: np.ndarray | None, max_images: int | None, seed: int) -> np.ndarray:
    """Positions in ``images`` of a seeded random draw (label-stratified), all of them without a limit."""
    from vision_sae_lens.data.subsets import subset_indices

    if max_images is not None and max_images < 1:
        raise ConfigError(f"max_images must be at least 1 (or None for every image), got {max_images}")
    if max_images is None or max_images >= len(images):
        return np.arange(len(images))
    lab = None if labels is None else [int(v) for v in labels[images]]
    return subset_indices(len(images), max_images, labels=lab, seed=seed)
