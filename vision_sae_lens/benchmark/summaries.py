"""The report sections of :func:`~vision_sae_lens.benchmark.scoring.score_rows` from its accumulators:
recovery (factor-centric), splitting and mixing, sparse probing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vision_sae_lens.benchmark.metrics import feature_recovery, splitting_and_mixing
from vision_sae_lens.benchmark.probing import sparse_probing
from vision_sae_lens.benchmark.recovery import FactorRecovery
from vision_sae_lens.benchmark.truth import GroundTruth

if TYPE_CHECKING:
    from vision_sae_lens.benchmark.scoring import ScoreConfig


def image_labels(truth: GroundTruth, images: Any) -> torch.Tensor:
    """``(len(images), F)`` bool image labels."""
    return torch.from_numpy(np.stack([np.asarray(truth.image_factors(i), dtype=bool) for i in images]))


def families(names: list[str]) -> torch.Tensor:
    """Family index of each factor: the part before ``=`` (``color=red`` -> ``color``); a name without
    ``=`` is a family of its own."""
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(n.split("=")[0] if "=" in n else n, len(index)) for n in names])


def recovery_result(rec: FactorRecovery, cfg: ScoreConfig) -> dict[str, torch.Tensor]:
    """Per factor its best latents by AUROC and by F1, and whether it is recovered."""
    return feature_recovery(
        *rec.best_auroc(), rec.best_f1_f, rec.best_f1_latent_f, f1_threshold=cfg.f1_threshold
    )


def splitting(rec: FactorRecovery, names: list[str], cfg: ScoreConfig) -> dict[str, Any]:
    """Splitting and mixing, a chunk of latents at a time (every per-latent number is independent of the
    others; latents per factor add up), so no (latents, factors) float matrix is built whole."""
    alive_s, family_f = rec.fired_s > 0, families(names)
    parts = []
    step = max(1, 2**22 // max(1, len(names)))
    for lo in range(0, rec.n_latents, step):
        hi = min(lo + step, rec.n_latents)
        parts.append(splitting_and_mixing(
            rec.precision_sf(lo, hi), rec.recall_sf(lo, hi), alive_s[lo:hi], prior_f=rec.n_pos_f, family_f=family_f,
            precision_threshold=cfg.precision_threshold, recall_threshold=cfg.recall_threshold,
        ))  # fmt: skip
    mix = {key: torch.cat([p[key] for p in parts]) for key in parts[0] if key != "latents_per_factor_f"}
    mix["latents_per_factor_f"] = torch.stack([p["latents_per_factor_f"] for p in parts]).sum(0)
    return splitting_summary(mix, names, alive_s)


def recovery_summary(rec: dict[str, torch.Tensor], names: list[str], cfg: ScoreConfig) -> dict[str, Any]:
    """Factor-centric recovery: per factor, its best single latent by AUROC and by F1 at that latent's
    best threshold (``factor_f1``; not SynthSAEBench's latent-centric F1)."""
    per_factor = {
        name: {
            "auroc": float(rec["best_auroc_f"][k]),
            "auroc_latent": int(rec["latent_auroc_f"][k]),
            "factor_f1": float(rec["best_f1_f"][k]),
            "factor_f1_latent": int(rec["latent_f1_f"][k]),
            "recovered": bool(rec["recovered_f"][k]),
        }
        for k, name in enumerate(names)
    }
    return {
        "mean_auroc": float(rec["best_auroc_f"].mean()),
        "mean_factor_f1": float(rec["best_f1_f"].mean()),
        "fraction_recovered": float(rec["recovered_f"].double().mean()),
        "f1_threshold": cfg.f1_threshold,
        "per_factor": per_factor,
    }


def splitting_summary(
    mix: dict[str, torch.Tensor], names: list[str], alive_s: torch.Tensor
) -> dict[str, Any]:
    responsive = mix["responsive_s"]
    per_latent = mix["factors_per_latent_s"][responsive]
    per_factor = mix["latents_per_factor_f"]
    return {
        "latents_per_factor": {name: int(per_factor[k]) for k, name in enumerate(names)},
        "mean_latents_per_factor": float(per_factor.double().mean()),
        "factors_split": float((per_factor > 1).double().mean()),
        "responsive_latents": int(responsive.sum()),
        "mean_factors_per_latent": float(per_latent.mean()) if len(per_latent) else 0.0,
        "monosemantic_fraction": float((per_latent <= 1.5).double().mean()) if len(per_latent) else 0.0,
        "mean_purity": float(mix["purity_s"][alive_s].mean()) if bool(alive_s.any()) else 0.0,
    }


def probing(probe: dict, truth: GroundTruth, names: list[str], cfg: ScoreConfig) -> dict[str, Any]:
    """k-sparse probes on the probe images' mean latents and mean activations (seeded halves)."""
    images = sorted(probe)
    if len(images) < 4:
        return {"available": False}
    latents = torch.stack([probe[i][0] / probe[i][2] for i in images])
    raw = torch.stack([probe[i][1] / probe[i][2] for i in images])
    labels = image_labels(truth, images)
    rng = np.random.default_rng(cfg.seed + 1)
    order = rng.permutation(len(images))
    train, test = order[: len(images) // 2], order[len(images) // 2 :]
    out: dict[str, Any] = {"available": True, "ks": list(cfg.probe_ks), "images": len(images)}
    for kind, x in (("sae", latents), ("raw", raw)):
        acc_kf = sparse_probing(x[train], labels[train], x[test], labels[test], ks=cfg.probe_ks)
        out[kind] = [float(np.nanmean(row)) for row in acc_kf]
        out[f"{kind}_per_factor"] = {name: [float(v) for v in acc_kf[:, j]] for j, name in enumerate(names)}
    out["majority_baseline"] = float(
        torch.maximum(labels[test].double().mean(0), 1 - labels[test].double().mean(0)).mean()
    )
    return out
