"""The nnsight example of docs/backbones.md: a vision SAE inside an nnsight trace of the same backbone."""

from __future__ import annotations

import torch
from nnsight import NNsight

from tests.backbones.test_splice import SITE, make_sae


def test_sae_in_nnsight_trace_equals_run_with_saes(tiny_vit):
    sae = make_sae("topk", tiny_vit, tokens="patches")
    pixels = torch.randn(2, 3, 32, 32)
    timm_model = tiny_vit.backbone  # the plain timm model (the hooked wrapper leaves it unchanged)

    # --- the documented example ---
    model = NNsight(timm_model)
    with torch.no_grad(), model.trace(pixels):
        resid = model.blocks[0].output  # blocks.0.hook_resid_post, (batch, tokens, d_model)
        latents = sae.encode(resid[:, 1:])  # patches only: token 0 is CLS
        latents_saved = latents.save()
        model.blocks[0].output[:, 1:] = sae.decode(latents)
        logits = model.output.save()
    # --- end of example ---

    with torch.no_grad():
        expected, cache = tiny_vit.run_with_cache_with_saes(pixels, saes=[sae])
    assert torch.equal(logits, expected)
    assert torch.equal(latents_saved, cache[f"{SITE}.hook_sae_acts_post"][:, 1:])
