"""Shared pieces of the benchmark tests: in-memory ordered rows and hand-built SAEs."""

from __future__ import annotations

import numpy as np
import torch

from vision_sae_lens.layout import TokenLayout
from vision_sae_lens.store.reader import Rows

LAYOUT = TokenLayout(image_size=(32, 32), patch_size=(4, 4), has_cls=True)


def rows_of(acts_by_image: list[torch.Tensor], *, batch_size: int = 100, with_cls: bool = True):
    """A ``rows()`` callable over per-image (n_patches, d) tensors, in (image, token) order; a CLS row
    (to be ignored by the scorer) precedes each image's patches when ``with_cls``."""

    def rows():
        acts, images, tokens = [], [], []
        for i, a in enumerate(acts_by_image):
            if with_cls:
                acts.append(torch.full((1, a.shape[1]), 100.0))
                images.append(i)
                tokens.append(0)
            acts.append(a)
            images += [i] * len(a)
            tokens += list(range(1, len(a) + 1))
        x, im, tok = torch.cat(acts), torch.tensor(images), torch.tensor(tokens)
        for lo in range(0, len(x), batch_size):
            yield Rows(x[lo : lo + batch_size], im[lo : lo + batch_size], tok[lo : lo + batch_size])

    return rows


class LinearReLUSAE(torch.nn.Module):
    """``encode(x) = relu(x W + b)``, ``decode(f) = f W_dec``: enough SAE for the scorer."""

    def __init__(
        self, w_enc: torch.Tensor, b_enc: torch.Tensor | None = None, w_dec: torch.Tensor | None = None
    ):
        super().__init__()
        self.w_enc = torch.nn.Parameter(w_enc.float())
        self.b_enc = torch.nn.Parameter(torch.zeros(w_enc.shape[1]) if b_enc is None else b_enc.float())
        self.w_dec = torch.nn.Parameter(w_enc.T.clone().float() if w_dec is None else w_dec.float())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.w_enc + self.b_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.w_dec


def oracle_inputs(truth, n_images: int) -> list[torch.Tensor]:
    """Each patch's activation vector is its factor-indicator vector: an identity SAE is the oracle."""
    return [torch.from_numpy(np.asarray(truth.patch_factors(i), dtype=np.float32)) for i in range(n_images)]
