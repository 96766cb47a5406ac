"""Which latents are worth a page, and the evidence a page shows beyond the top images.

The feature browser gives its default pages to the latents with the highest *interest score*
(:func:`interest_scores`), a product of three terms, each in [0, 1]:

- **selectivity**: with labels, the lift of the latent's best label over chance,
  ``(precision - base) / (1 - base)`` (base: that label's share of the images), clipped at 0;
  without labels, 1;
- **mid-frequency**: ``exp(-(log10(image_frequency / 0.05))**2 / (2 * 0.75**2))``, 1 for a latent firing
  on 5% of the images, 0.27 at 0.3% or 78% (1.2 decades away): neither the near-silent nor the everywhere;
- **support**: ``min(1, images fired on / 10)``, so a latent seen on two images does not win by luck.

Dead latents (never fire), dense ones (token frequency above the package's dense threshold, see
``vision_sae_lens.train.evaluate.DEAD_DENSE_DEFINITION``) and *positional* ones (fire on at least
half the images, with a spatial firing map whose normalised entropy is below 0.5: they track a
place in the image, not content) score 0 and are flagged in the index. :class:`SampleAccumulator`
keeps a seeded random sample of the images each latent fires on, from which a page shows images
from lower activation quantiles; :func:`nearest_latents` ranks latents by decoder cosine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from vision_sae_lens.analysis.scan import ImageReduction
from vision_sae_lens.errors import ConfigError

if TYPE_CHECKING:
    from vision_sae_lens.compat import SAE

POSITIONAL_MIN_IMAGE_FREQUENCY = 0.5
"""A latent firing on fewer images than this share is never called positional."""
POSITIONAL_MAX_ENTROPY = 0.5
"""Normalised entropy of the spatial firing map under which a frequent latent is positional."""
MIN_SUPPORT_IMAGES = 10
"""Images a latent must fire on for full support."""
PREFERRED_IMAGE_FREQUENCY = 0.05
"""Image frequency at which the mid-frequency term is 1."""
FREQUENCY_WIDTH_DECADES = 0.75
"""Width (standard deviation, in decades of image frequency) of the mid-frequency term."""


def spatial_entropy(token_counts: torch.Tensor, patch_tokens: torch.Tensor) -> torch.Tensor:
    """(d_sae,) entropy of each latent's firing map over ``patch_tokens``, divided by its maximum (0..1)."""
    counts = token_counts[:, patch_tokens].double() if token_counts.shape[1] else token_counts.double()
    total = counts.sum(1, keepdim=True)
    p = counts / total.clamp(min=1)
    ent = -(p * torch.log(p.clamp(min=1e-300))).sum(1)
    n = max(int(counts.shape[1]), 2)
    return torch.where(total.squeeze(1) > 0, ent / torch.log(torch.tensor(float(n))), torch.nan).float()


def interest_scores(stats: Any, patch_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per latent: ``score`` (see the module docstring), ``positional`` (bool) and ``entropy``."""
    tokens = _padded_counts(stats.token_counts, int(patch_tokens.max()) + 1 if len(patch_tokens) else 1)
    entropy = spatial_entropy(tokens, patch_tokens)
    positional = (stats.image_frequency >= POSITIONAL_MIN_IMAGE_FREQUENCY) & (
        entropy < POSITIONAL_MAX_ENTROPY
    )
    if stats.precision is not None and stats.label_images is not None:
        share = stats.label_images.double() / max(int(stats.label_images.sum()), 1)
        base = share[stats.best_label.clamp(min=0)]
        lift = ((stats.precision.double() - base) / (1 - base).clamp(min=1e-9)).clamp(min=0)
        selectivity = torch.where(stats.best_label >= 0, lift, 0.0)
    else:
        selectivity = torch.ones_like(stats.image_frequency, dtype=torch.float64)
    fired_images = stats.image_frequency.double() * stats.n_images
    support = (fired_images / MIN_SUPPORT_IMAGES).clamp(max=1)
    decades = torch.log10(stats.image_frequency.double().clamp(min=1e-12) / PREFERRED_IMAGE_FREQUENCY)
    mid = torch.exp(-(decades**2) / (2 * FREQUENCY_WIDTH_DECADES**2))
    score = selectivity * mid * support
    score = torch.where(stats.dead | stats.dense | positional, 0.0, score)
    return {"score": score.float(), "positional": positional, "entropy": entropy}


def _padded_counts(token_counts: torch.Tensor | None, width: int) -> torch.Tensor:
    if token_counts is None:
        raise ConfigError("the statistics carry no spatial firing counts (token_counts)")
    if token_counts.shape[1] < width:
        token_counts = torch.nn.functional.pad(token_counts, (0, width - token_counts.shape[1]))
    return token_counts


def nearest_latents(sae: SAE, latents: list[int], *, n: int = 6) -> dict[int, list[tuple[int, float]]]:
    """For each latent, the ``n`` other latents whose decoder directions have the highest cosine."""
    w_sd = torch.nn.functional.normalize(sae.W_dec.detach().float().cpu(), dim=-1)
    if not latents:
        return {}
    cos_ps = w_sd[latents] @ w_sd.T
    cos_ps[torch.arange(len(latents)), torch.as_tensor(latents)] = -2.0  # not itself
    vals, idx = cos_ps.topk(min(n, w_sd.shape[0] - 1), dim=1)
    return {
        j: [(int(i), float(v)) for i, v in zip(idx[p].tolist(), vals[p].tolist(), strict=True)]
        for p, j in enumerate(latents)
    }


class SampleAccumulator:
    """Scan consumer: a seeded random sample of up to ``size`` images each latent fires on, with the
    latent's max activation on each (reservoir sampling by random priority)."""

    def __init__(self, d_sae: int, size: int = 32, *, seed: int = 0) -> None:
        self.size = size
        self.priority_rs = torch.full((size, d_sae), -1.0)
        self.value_rs = torch.zeros(size, d_sae)
        self.image_rs = torch.full((size, d_sae), -1, dtype=torch.long)
        self.gen = torch.Generator().manual_seed(seed)

    def rows(self, feats_ns: torch.Tensor, image_n: torch.Tensor, token_n: torch.Tensor) -> None:
        pass

    def images(self, red: ImageReduction) -> None:
        max_ms = red.max_ms.float().cpu()
        pri_ms = torch.rand(max_ms.shape, generator=self.gen)
        pri_ms = torch.where(max_ms > 0, pri_ms, -1.0)
        pri = torch.cat([self.priority_rs, pri_ms])
        val = torch.cat([self.value_rs, max_ms])
        img = torch.cat([self.image_rs, red.image_idx.cpu()[:, None].expand_as(max_ms)])
        top = pri.topk(self.size, dim=0).indices
        self.priority_rs, self.value_rs, self.image_rs = (
            pri.gather(0, top),
            val.gather(0, top),
            img.gather(0, top),
        )

    def lower_quantile_samples(self, latent: int, qs: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)) -> list[dict]:
        """Sampled images at quantiles ``qs`` of the latent's per-image max activation."""
        keep = self.priority_rs[:, latent] >= 0
        vals, imgs = self.value_rs[keep, latent], self.image_rs[keep, latent]
        if not len(vals):
            return []
        order = vals.argsort()
        out, seen = [], set()
        for q in qs:
            pos = order[min(len(order) - 1, int(q * len(order)))]
            image = int(imgs[pos])
            if image not in seen:
                seen.add(image)
                out.append({"image": image, "value": float(vals[pos]), "quantile": q})
        return out
