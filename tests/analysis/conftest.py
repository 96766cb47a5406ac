"""Fixtures for the analysis tests (random weights, no downloads)."""

from __future__ import annotations

import pytest
from helpers import build_tiny

from vision_sae_lens.backbones import HookedSAEViT


@pytest.fixture(scope="session")
def vit() -> HookedSAEViT:
    """2-block timm ViT classifier at 32 px: 4x4 patches + CLS, d_model 192, 10 classes."""
    return build_tiny(depth=2)
