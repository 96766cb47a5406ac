"""Fixtures of the backbone tests: tiny random-init models of every adapter family (see families.py)."""

from __future__ import annotations

import pytest
from families import build_family
from helpers import build_tiny

from vision_sae_lens.backbones import HookedSAEViT


@pytest.fixture(scope="session")
def tiny_vit() -> HookedSAEViT:
    """A 2-block timm ViT classifier at 32 px (4x4 patches + CLS, d_model 192)."""
    return build_tiny(depth=2)


@pytest.fixture(scope="session")
def build():
    """``build(family, tmp_path_factory)`` -> (hooked model, plain model); see :func:`build_family`."""
    return build_family
