"""Fixtures for the analysis tests (random weights, no downloads)."""

from __future__ import annotations

import pytest
import torch

from vision_sae_lens.backbones import HookedSAEViT


@pytest.fixture(scope="session")
def vit() -> HookedSAEViT:
    """2-block timm ViT classifier at 32 px: 4x4 patches + CLS, d_model 192, 10 classes."""
    torch.manual_seed(0)
    return HookedSAEViT.from_pretrained(
        "timm:vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=10
    )
