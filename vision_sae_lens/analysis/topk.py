"""Streaming top-k: for every latent, the k images where it fires most, and the patch that fired.

Each latent keeps a (value, image, token) buffer of size k. Per batch of finished images (see
:mod:`vision_sae_lens.analysis.scan`) the buffer and the batch's per-image scores are concatenated
and sorted with a *stable* descending sort; the buffer holds lower image indices than the batch,
so ties go to the lower image index (and, within an image, the max sits at its lowest token).
Memory is O(d_sae x k) whatever the dataset size. Scores: ``by="max"`` (max over the image's tokens)
or ``by="mean"`` (mean over its tokens; the token reported is still where the max is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from vision_sae_lens.analysis.scan import ImageReduction, scan
from vision_sae_lens.errors import ConfigError, OutOfRangeError
from vision_sae_lens.layout import Layout

if TYPE_CHECKING:
    from vision_sae_lens.backbones import HookedSAEViT
    from vision_sae_lens.compat import SAE


@dataclass
class TopActivations:
    """Top-k images per latent. Slots beyond the number of images hold value -inf and image -1."""

    values: torch.Tensor
    """(s, k) float32 scores, descending along k."""
    image_idx: torch.Tensor
    """(s, k) int64 dataset image indices."""
    token_idx: torch.Tensor
    """(s, k) int64 token (sequence position) of the image's max activation."""
    by: str
    """"max" or "mean"."""
    layout: Layout
    """Token layout, to turn tokens into patches."""

    @property
    def patch_idx(self) -> torch.Tensor:
        """(s, k) patch index of ``token_idx`` (-1 for CLS / register tokens and empty slots)."""
        patch = self.token_idx - self.layout.n_prefix
        return torch.where((patch >= 0) & (self.image_idx >= 0), patch, -1)

    @property
    def k(self) -> int:
        """Buffer size."""
        return self.values.shape[1]

    def for_latent(self, latent: int, *, active_only: bool = True) -> list[dict[str, Any]]:
        """The top images of one latent as dicts (image, token, patch, value); by default only value > 0."""
        if not 0 <= latent < self.values.shape[0]:
            raise OutOfRangeError(f"latent {latent} out of range: {self.values.shape[0]} latents")
        out = []
        for j in range(self.k):
            value = float(self.values[latent, j])
            if self.image_idx[latent, j] < 0 or (active_only and not value > 0):
                continue
            out.append(
                dict(
                    image=int(self.image_idx[latent, j]),
                    token=int(self.token_idx[latent, j]),
                    patch=int(self.patch_idx[latent, j]),
                    value=value,
                )
            )
        return out


class TopKAccumulator:
    """Consumer of a scan that keeps the top-k images of every latent."""

    def __init__(self, d_sae: int, k: int, *, by: str = "max") -> None:
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        if by not in ("max", "mean"):
            raise ConfigError(f"by must be 'max' or 'mean', got {by!r}")
        self.k, self.by = k, by
        self.values = torch.full((d_sae, k), float("-inf"))
        self.image_idx = torch.full((d_sae, k), -1, dtype=torch.long)
        self.token_idx = torch.full((d_sae, k), -1, dtype=torch.long)

    def rows(self, feats_ns: torch.Tensor, image_n: torch.Tensor, token_n: torch.Tensor) -> None:
        pass

    def images(self, red: ImageReduction) -> None:
        scores_sm = (red.max_ms if self.by == "max" else red.mean_ms).T
        s, m = scores_sm.shape
        values = torch.cat([self.values, scores_sm], dim=1)
        # Column c < k is the buffer's slot c; c >= k is the batch's image c - k.
        columns = torch.arange(self.k + m).expand(s, -1)
        if m > self.k:
            # Only a value >= the batch's k-th best per latent can enter; pre-filtering keeps the sort small.
            kth = torch.topk(scores_sm, self.k, dim=1).values[:, -1:]
            tail = scores_sm >= kth
            width = int(tail.sum(1).max())
            if width < m:
                # Stable argsort of the mask keeps the batch's image order among the survivors.
                pick = torch.sort((~tail).to(torch.uint8), dim=1, stable=True).indices[:, :width] + self.k
                columns = torch.cat([columns[:, : self.k], pick], dim=1)
                values = values.gather(1, columns)
        order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, : self.k]
        column_sk = columns.gather(1, order)
        from_batch = column_sk >= self.k
        image_pos = (column_sk - self.k).clamp(min=0)
        slot = column_sk.clamp(max=self.k - 1)
        images = torch.where(from_batch, red.image_idx[image_pos], self.image_idx.gather(1, slot))
        tokens = self.token_idx.gather(1, slot)
        # The token of the max is looked up only for the batch images that entered the top-k.
        latent_p, k_p = from_batch.nonzero(as_tuple=True)
        tokens[latent_p, k_p] = red.argmax_at(image_pos[latent_p, k_p], latent_p)
        self.values = values.gather(1, order)
        self.image_idx, self.token_idx = images, tokens

    def result(self, layout: Layout) -> TopActivations:
        return TopActivations(self.values, self.image_idx, self.token_idx, self.by, layout)


def top_activating(
    sae: SAE,
    source: Any,
    *,
    k: int = 16,
    by: str = "max",
    model: HookedSAEViT | None = None,
    batch_size: int = 4096,
    progress: bool = True,
) -> TopActivations:
    """Top-``k`` images of every latent, streaming over an activation store or raw images.

    ``source``: an ``ActivationStore`` (reads the SAE's site; no backbone needed), images with
    ``model=`` (PIL images, paths, a tensor batch, an image source), or an iterator of
    ``(acts_nd, image_n, token_n)`` batches in (image, token) order. ``by``: rank images by the max
    (default) or the mean activation over their tokens. Ties go to the lower image index.
    """
    acc = TopKAccumulator(int(sae.cfg.d_sae), k, by=by)
    view = scan(sae, source, [acc], model=model, batch_size=batch_size, progress=progress)
    return acc.result(view.layout)
