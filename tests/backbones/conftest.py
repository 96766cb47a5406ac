"""Fixtures of the backbone tests: tiny random-init models of every adapter family (see families.py)."""

from __future__ import annotations

import pytest
from families import TL_FAMILIES, build_eager, build_family
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


_EAGER: dict[str, HookedSAEViT] = {}


@pytest.fixture(params=TL_FAMILIES)
def tl_model(request, tmp_path_factory) -> HookedSAEViT:
    """One family's tiny eager model (built once per session); hooks, toggles and SAEs reset after each test."""
    family = request.param
    if family not in _EAGER:
        _EAGER[family] = build_eager(family, tmp_path_factory)
    model = _EAGER[family]
    yield model
    model.reset_saes()
    model.reset_hooks(including_permanent=True)
    for toggle in vars(model.toggles):
        setattr(model.toggles, toggle, False)
    for block in model.blocks:
        block.attn.keep_z = False
