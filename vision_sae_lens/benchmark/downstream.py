"""Spliced downstream loss of a multi-label backbone: what the model still predicts with the SAE in.

For each image batch the backbone runs clean, with the SAE spliced in at its site (``run_with_saes``)
without and with the error term, and with the SAE's tokens zero-ablated. Each output is scored against
the ground-truth factor labels (mean binary cross-entropy, per-factor accuracy of ``logit > 0``) and
against the clean output (mean Bernoulli KL per factor). ``loss_recovered`` is SAELens' "CE loss
recovered" for this loss: ``(L_zero - L_sae) / (L_zero - L_clean)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from vision_sae_lens.splice import sae_token_mask

if TYPE_CHECKING:
    from vision_sae_lens.backbones import HookedSAEViT
    from vision_sae_lens.compat import SAE


@torch.no_grad()
def multilabel_downstream(
    model: HookedSAEViT,
    sae: SAE,
    images: Sequence[Any],
    labels_nf: np.ndarray,
    *,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Scores of the clean, spliced (``sae``, ``sae_with_error``) and zero-ablated model on ``images``."""
    site = sae.cfg.metadata.hook_name
    model.check_sae(sae)
    labels = torch.as_tensor(np.asarray(labels_nf), dtype=torch.float32)
    outs: dict[str, list[torch.Tensor]] = {"clean": [], "sae": [], "sae_with_error": [], "zero_ablation": []}
    for lo in range(0, len(images), batch_size):
        pixels = model.preprocess(list(images[lo : lo + batch_size]))
        outs["clean"].append(model.output_tensor(model(pixels)).float().cpu())
        for name, err in (("sae", False), ("sae_with_error", True)):
            spliced = model.run_with_saes(pixels, saes=[sae], use_error_term=err)
            outs[name].append(model.output_tensor(spliced).float().cpu())

        def zero(acts: torch.Tensor, hook: Any) -> torch.Tensor:
            mask = sae_token_mask(sae, acts.shape[1])
            out = acts.clone()
            if mask is None:
                out.zero_()
            else:
                out[:, mask.to(acts.device)] = 0
            return out

        ablated = model.run_with_hooks(pixels, fwd_hooks=[(site, zero)])
        outs["zero_ablation"].append(model.output_tensor(ablated).float().cpu())
    logits = {k: torch.cat(v) for k, v in outs.items()}
    clean_p = torch.sigmoid(logits["clean"])
    report: dict[str, Any] = {"images": len(images)}
    for name, z in logits.items():
        p = torch.sigmoid(z)
        report[name] = {
            "bce": float(F.binary_cross_entropy_with_logits(z, labels)),
            "accuracy": float(((z > 0).float() == labels).float().mean()),
            "kl_to_clean": float(_bernoulli_kl(clean_p, p).mean()),
        }
    l_clean, l_zero = report["clean"]["bce"], report["zero_ablation"]["bce"]
    for name in ("sae", "sae_with_error"):
        gap = l_zero - l_clean
        report[name]["loss_recovered"] = (l_zero - report[name]["bce"]) / gap if gap > 0 else float("nan")
    return report


def _bernoulli_kl(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    p, q = p.clamp(eps, 1 - eps), q.clamp(eps, 1 - eps)
    return p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()
