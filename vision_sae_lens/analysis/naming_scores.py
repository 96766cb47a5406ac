"""The arithmetic of naming latents: concept scores from a latent's top images, the best few, AUROC.

A latent is described by its top images on the *naming* images (positions ``top_image_sk`` into the
naming images' embeddings, activations ``top_value_sk``; a slot whose value is not > 0 is empty). A
concept is a unit text embedding; ``sim(i, c)`` is the cosine of image ``i``'s and concept ``c``'s
embeddings. Two similarity functions score (latent, concept):

- ``soft_wpmi`` (CLIP-Dissect, Oikarinen & Weng 2023, its defaults): ``P(c | i) = softmax_c(a * sim(i, .))``;
  ``log P(c | top images) = sum_k log(1 + p_k (P(c | i_k) - 1))`` with ``p_k`` falling linearly from
  ``p_start`` to ``p_end`` over the ranks, minus ``lam x`` the log of its mean over latents (the
  concept's prior). Sparse latents fire on fewer than ``top_k`` images: the sum runs over the images it
  fires on and is scaled to ``top_k`` terms, so every latent is on CLIP-Dissect's scale.
- ``contrast``: the activation-weighted mean over the top images of the concept's similarity as a
  z-score over all naming images, ``(sim(i, c) - mean_i sim(., c)) / std_i sim(., c)``: how unusually
  close to the concept the images the latent fires on most are.

Memory is bounded by a byte budget, never by ``latents x concepts``: concepts are processed in chunks
(their similarity to every naming image, and for soft-WPMI every latent's score on the chunk), latents
in chunks inside them (their top images' rows of the chunk), and only the best ``n_best`` concepts of
each latent are kept (:func:`chunk_sizes` says how big the chunks are).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vision_sae_lens.errors import ConfigError

SIMILARITIES = ("contrast", "soft_wpmi")
"""Similarity functions; the first is the default (see docs/analysis.md for the measurement that chose it)."""
DEFAULT_BUDGET_BYTES = 64 * 2**20


@dataclass(frozen=True)
class SoftWPMI:
    """CLIP-Dissect's soft-WPMI constants (its published defaults)."""

    a: float = 10.0
    """Softmax temperature over concepts (``softmax(a * cos)``)."""
    lam: float = 1.0
    """Weight of the concept prior."""
    p_start: float = 0.998
    """Probability that the top image shows the concept ..."""
    p_end: float = 0.97
    """... falling linearly to this at rank ``top_k``."""
    min_prob: float = 1e-7
    """Added inside the log."""


def chunk_sizes(
    *, n_images: int, d_sae: int, n_concepts: int, top_k: int, budget_bytes: int = DEFAULT_BUDGET_BYTES
) -> tuple[int, int]:
    """(concepts per chunk, latents per chunk) so that each working tensor stays near ``budget_bytes``.

    A concept chunk holds ``(n_images + d_sae) x concepts`` floats (similarities of every naming image,
    every latent's scores); a latent chunk ``latents x top_k x concepts`` (its top images' rows).
    """
    if budget_bytes < 1:
        raise ConfigError(f"budget_bytes must be positive, got {budget_bytes}")
    per_concept = 4 * (n_images + d_sae)
    concepts = max(1, min(n_concepts, budget_bytes // per_concept))
    latents = max(1, min(d_sae, budget_bytes // (4 * top_k * concepts)))
    return int(concepts), int(latents)


@torch.no_grad()
def rank_concepts(
    top_image_sk: torch.Tensor,
    top_value_sk: torch.Tensor,
    image_emb_ne: torch.Tensor,
    text_emb_ce: torch.Tensor,
    *,
    similarity: str = SIMILARITIES[0],
    n_best: int = 6,
    soft_wpmi: SoftWPMI | None = None,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores_sr, concepts_sr)``: each latent's ``n_best`` best concepts, best first, by ``similarity``.

    ``top_image_sk`` indexes rows of ``image_emb_ne`` (unit rows); ``top_value_sk`` holds the latent's
    activation on them (empty slots: <= 0). A latent with no image is scored NaN with concept -1.
    """
    if similarity not in SIMILARITIES:
        raise ConfigError(f"unknown similarity {similarity!r}; choose one of {', '.join(SIMILARITIES)}")
    from tqdm.auto import tqdm

    s, k = top_image_sk.shape
    n, c = image_emb_ne.shape[0], text_emb_ce.shape[0]
    r = min(n_best, c)
    valid_sk = (top_value_sk > 0) & (top_image_sk >= 0)
    alive_s = valid_sk.any(1)
    index_sk = top_image_sk.clamp(min=0)
    cfg = soft_wpmi or SoftWPMI()
    concept_chunk, latent_chunk = chunk_sizes(
        n_images=n, d_sae=s, n_concepts=c, top_k=k, budget_bytes=budget_bytes
    )
    stats = _concept_statistics(image_emb_ne, text_emb_ce, concept_chunk, a=cfg.a)
    if similarity == "contrast":
        # Linear in the image embeddings: sum_k w_k z(i_k, c) = (mean_emb . t_c - mean_c) / std_c with
        # mean_emb the weighted mean of the top images' embeddings, so no (latent, image, concept) gather.
        weight_sk = torch.where(valid_sk, top_value_sk.float(), 0.0)
        weight_sk = weight_sk / weight_sk.sum(1, keepdim=True).clamp(min=1e-30)
        mean_emb_se = torch.empty(s, image_emb_ne.shape[1])
        step = max(1, budget_bytes // (4 * k * image_emb_ne.shape[1]))
        for a in range(0, s, step):
            rows = image_emb_ne[index_sk[a : a + step]]  # (latents, k, e)
            mean_emb_se[a : a + step] = torch.einsum("lk,lke->le", weight_sk[a : a + step], rows)
    else:
        # p_k by rank, zero on empty slots; the sum over a latent's images is rescaled to k terms.
        p_sk = (cfg.p_start - torch.arange(k) / k * (cfg.p_start - cfg.p_end)).expand(s, k) * valid_sk
        scale_s = k / valid_sk.sum(1).clamp(min=1)
    best_score = torch.full((s, r), -math.inf)
    best_concept = torch.full((s, r), -1, dtype=torch.long)
    starts = range(0, c, concept_chunk)
    for lo in tqdm(starts, desc="naming", unit="chunk", disable=not progress, leave=False):
        hi = min(lo + concept_chunk, c)
        if similarity == "contrast":
            scores_sc = (
                (mean_emb_se @ text_emb_ce[lo:hi].T).sub_(stats["mean_c"][lo:hi]).div_(stats["std_c"][lo:hi])
            )
        else:
            prob_nc = (image_emb_ne @ text_emb_ce[lo:hi].T).mul_(cfg.a).sub_(stats["lse_n"][:, None]).exp_()
            scores_sc = torch.empty(s, hi - lo)
            for a in range(0, s, latent_chunk):
                b = min(a + latent_chunk, s)
                terms = prob_nc[index_sk[a:b]]  # (latents, k, concepts), then in place
                terms.sub_(1).mul_(p_sk[a:b, :, None]).add_(cfg.min_prob).log1p_()
                scores_sc[a:b] = terms.sum(1).mul_(scale_s[a:b, None])
            del prob_nc
            prior_c = torch.logsumexp(scores_sc[alive_s], dim=0) - math.log(max(int(alive_s.sum()), 1))
            scores_sc -= cfg.lam * prior_c
        chunk_top = scores_sc.topk(min(r, hi - lo), dim=1)
        merged = torch.cat([best_score, chunk_top.values], dim=1)
        ids = torch.cat([best_concept, chunk_top.indices + lo], dim=1)
        top = merged.topk(r, dim=1)
        best_score, best_concept = top.values, ids.gather(1, top.indices)
    best_score[~alive_s] = math.nan
    best_concept[~alive_s] = -1
    return best_score, best_concept


@torch.no_grad()
def rerank_by_detection(
    scores_sr: torch.Tensor,
    concepts_sr: torch.Tensor,
    image_emb_ne: torch.Tensor,
    text_emb_ce: torch.Tensor,
    fires: Callable[[slice], torch.Tensor],
    *,
    shortlist: int,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Re-order each latent's first ``shortlist`` names by how well their similarity detects where it fires.

    ``fires(latents)`` gives ``(images, latents)`` bool for the images of ``image_emb_ne``. The AUROC of
    ``cos(image, name)`` for "the latent fires on the image" orders the shortlist (ties and NaN keep the
    similarity's order); the names after it keep their place. Returns the reordered scores and concepts
    and ``auroc_sq``, the shortlist's AUROCs in the new order.
    """
    s = concepts_sr.shape[0]
    q = min(shortlist, concepts_sr.shape[1])
    n = image_emb_ne.shape[0]
    auroc_sq = torch.full((s, q), math.nan)
    step = max(1, budget_bytes // (AUROC_BYTES * n * q))
    for a in range(0, s, step):
        b = min(a + step, s)
        cand = concepts_sr[a:b, :q]
        sim = image_emb_ne @ text_emb_ce[cand.clamp(min=0).reshape(-1)].T  # (n, latents * q)
        auroc_sq[a:b] = auroc_columns(sim, fires(slice(a, b)).repeat_interleave(q, dim=1)).view(b - a, q)
    auroc_sq[concepts_sr[:, :q] < 0] = math.nan
    order = torch.nan_to_num(auroc_sq, nan=-1.0).sort(dim=1, descending=True, stable=True).indices
    scores, concepts = scores_sr.clone(), concepts_sr.clone()
    scores[:, :q], concepts[:, :q] = scores_sr[:, :q].gather(1, order), concepts_sr[:, :q].gather(1, order)
    return scores, concepts, auroc_sq.gather(1, order)


def _concept_statistics(
    image_emb_ne: torch.Tensor, text_emb_ce: torch.Tensor, chunk: int, *, a: float
) -> dict[str, torch.Tensor]:
    """Per naming image the log-sum-exp of ``a * sim`` over every concept (soft-WPMI's softmax), and per
    concept the mean and standard deviation of ``sim`` over the naming images (``contrast``'s z-score)."""
    n, c = image_emb_ne.shape[0], text_emb_ce.shape[0]
    lse_n = torch.full((n,), -math.inf)
    mean_c, std_c = torch.empty(c), torch.empty(c)
    for lo in range(0, c, chunk):
        sim_nc = image_emb_ne @ text_emb_ce[lo : lo + chunk].T
        lse_n = torch.logaddexp(lse_n, torch.logsumexp(a * sim_nc, dim=1))
        mean_c[lo : lo + chunk] = sim_nc.mean(0)
        std_c[lo : lo + chunk] = sim_nc.std(0, correction=0).clamp(min=1e-6)
    return {"lse_n": lse_n, "mean_c": mean_c, "std_c": std_c}


AUROC_BYTES = 80
"""Bytes :func:`auroc_columns` allocates per (row, column): sorted scores, their order, run bounds (int64)."""


def auroc_columns(scores_ns: torch.Tensor, labels_ns: torch.Tensor) -> torch.Tensor:
    """``(s,)`` AUROC of each column's scores for its bool labels: P(score_pos > score_neg) + 0.5 P(tie)
    (Mann-Whitney with mid-ranks, so binary scores are handled); NaN without positives or negatives."""
    ordered_sn, order_sn = scores_ns.T.float().sort(dim=1)
    labels_sn = labels_ns.T.bool().gather(1, order_sn)
    n = ordered_sn.shape[1]
    position = torch.arange(n).expand_as(ordered_sn)
    # A run of equal scores shares the mean of its positions: find each run's first and last position.
    change = ordered_sn[:, 1:] != ordered_sn[:, :-1]
    first = torch.ones_like(labels_sn)
    first[:, 1:] = change
    last = torch.ones_like(labels_sn)
    last[:, :-1] = change
    run_start = torch.where(first, position, 0).cummax(dim=1).values
    run_end = torch.where(last, position, n).flip(1).cummin(dim=1).values.flip(1)
    rank_sum = ((run_start + run_end).double() / 2 + 1).mul_(labels_sn).sum(1)
    n_pos = labels_sn.sum(1).double()
    n_neg = n - n_pos
    auroc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return torch.where((n_pos > 0) & (n_neg > 0), auroc, math.nan).float()
