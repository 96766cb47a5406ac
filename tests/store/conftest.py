"""Fixtures for the store tests: a timm ViT with registers (the tiny ViT is the suite-wide ``tiny_model``)."""

from __future__ import annotations

import pytest
import torch

from vision_sae_lens.backbones import HookedSAEViT


@pytest.fixture(scope="session")
def reg_model() -> HookedSAEViT:
    """DINOv2-style timm ViT with CLS + 4 registers + 2x2 patches (d_model 32)."""
    torch.manual_seed(1)
    return HookedSAEViT.from_pretrained(
        "timm:vit_small_patch14_reg4_dinov2",
        pretrained=False,
        img_size=28,
        patch_size=14,
        depth=2,
        embed_dim=32,
        num_heads=2,
    )
