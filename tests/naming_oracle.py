"""An *oracle* for naming: a store of the shapes world whose patch rows are the patches' exact factor
indicators, and an identity SAE, so latent j fires exactly on the patches carrying factor j."""

from __future__ import annotations

import numpy as np
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from vision_sae_lens.data.synthetic import FACTOR_NAMES
from vision_sae_lens.layout import TokenLayout
from vision_sae_lens.metadata import VisionFacts, apply_vision_facts
from vision_sae_lens.store import StoreWriter

SITE = "blocks.2.hook_resid_post"
LAYOUT = TokenLayout(image_size=(32, 32), patch_size=(4, 4), has_cls=True)
N_FACTORS = len(FACTOR_NAMES)


def write_oracle_store(world, folder):
    """The store (labels: each image's main shape, as the world labels it)."""
    writer = StoreWriter(
        folder, backbone_id="demo:shapes-vit", sites=[SITE], d_model=N_FACTORS, layout=LAYOUT,
        tokens="patches", dtype="float32", dataset=world.description, label_names=list(world.label_names),
    )  # fmt: skip
    tokens = LAYOUT.token_indices("patches").numpy()
    for i in range(len(world)):
        rows = world.patch_factors(i, patch_size=4).astype(np.float32)
        writer.append({SITE: rows}, np.full(len(tokens), i), tokens)
    return writer.finish(labels=[world[i][1] for i in range(len(world))])


def oracle_sae(*, backbone="demo:shapes-vit", d_in=N_FACTORS, site=SITE):
    """Identity encoder and decoder, vision metadata for ``backbone`` / ``site``."""
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=N_FACTORS))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d_in, N_FACTORS))
        sae.W_dec.copy_(torch.eye(N_FACTORS, d_in))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    apply_vision_facts(sae, VisionFacts(backbone=backbone, hook_name=site, tokens="patches", layout=LAYOUT))
    return sae
