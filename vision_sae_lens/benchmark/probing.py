"""k-sparse probing: how well k features (SAE latents or raw activation dimensions) predict a label.

For each label the features are standardised on the training half, the k with the largest absolute
difference of class means are kept (Gurnee et al. 2023, "Finding Neurons in a Haystack"; Gao et al. 2024
and SAEBench use the same selection), and an L2-regularised logistic regression on those k is fitted
with L-BFGS; the score is its accuracy on the held-out half. Works on any labelled features: pass a
user's own per-image latents and labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vision_sae_lens.errors import ConfigError


def sparse_probing(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    ks: Sequence[int] = (1, 2, 5, 10),
    l2: float = 1e-3,
) -> np.ndarray:
    """Held-out accuracy ``(len(ks), n_labels)`` of k-sparse logistic probes; NaN for a label that has a
    single class in the training half. ``x_*`` (n, m) features, ``y_*`` (n, n_labels) bool."""
    x_train, x_test = x_train.double(), x_test.double()
    y_train, y_test = y_train.bool(), y_test.bool()
    if x_train.shape[1] != x_test.shape[1] or y_train.shape[1] != y_test.shape[1]:
        raise ConfigError("train and test features / labels must have the same widths")
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-8)
    z_train, z_test = (x_train - mean) / std, (x_test - mean) / std
    out = np.full((len(ks), y_train.shape[1]), np.nan)
    for j in range(y_train.shape[1]):
        pos = y_train[:, j]
        if bool(pos.all()) or not bool(pos.any()):
            continue
        diff = (z_train[pos].mean(0) - z_train[~pos].mean(0)).abs()
        order = torch.argsort(diff, descending=True)
        for i, k in enumerate(ks):
            cols = order[: min(k, z_train.shape[1])]
            w, b = fit_logistic(z_train[:, cols], pos, l2=l2)
            pred = (z_test[:, cols] @ w + b) > 0
            out[i, j] = float((pred == y_test[:, j]).double().mean())
    return out


def fit_logistic(
    x_nm: torch.Tensor, y_n: torch.Tensor, *, l2: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of an L2-regularised logistic regression (mean log-loss + ``l2 * |w|^2``)."""
    w = torch.zeros(x_nm.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    target = y_n.double()
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = x_nm @ w + b
        # log(1 + e^z) - y z is the log-loss; softplus keeps it stable for large |z|.
        loss = (torch.nn.functional.softplus(z) - target * z).mean() + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()
