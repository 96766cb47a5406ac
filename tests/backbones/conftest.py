"""Fixtures of the backbone tests: tiny random-init models of every adapter family (see families.py)."""

from __future__ import annotations

import pytest
from families import TL_FAMILIES, TL_ONE_PER_LIBRARY, build_eager, build_family
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


def _clean(model: HookedSAEViT) -> HookedSAEViT:
    """No hooks, SAEs or toggled sites left from an earlier test."""
    model.reset_saes()
    model.reset_hooks(including_permanent=True)
    for toggle in vars(model.toggles):
        setattr(model.toggles, toggle, False)
    for block in model.blocks:
        block.attn.keep_z = False
    model._class_readout = None  # classes named or given by an earlier test
    return model


@pytest.fixture(scope="session")
def eager_model(tmp_path_factory):
    """``eager_model(family)``: the family's tiny eager model (see :func:`build_eager`), built once per
    session and handed out clean (no hooks, SAEs or toggled sites)."""

    def get(family: str) -> HookedSAEViT:
        if family not in _EAGER:
            _EAGER[family] = build_eager(family, tmp_path_factory)
        return _clean(_EAGER[family])

    return get


@pytest.fixture(params=TL_FAMILIES)
def tl_model(request, eager_model) -> HookedSAEViT:
    """One family of TL_FAMILIES as :func:`eager_model` builds it; cleaned again after the test."""
    model = eager_model(request.param)
    yield model
    _clean(model)


@pytest.fixture(params=TL_ONE_PER_LIBRARY)
def tl_hook_model(request, eager_model) -> HookedSAEViT:
    """Like ``tl_model``, one family per library: for tests of the hook machinery, which is the same
    for every architecture."""
    model = eager_model(request.param)
    yield model
    _clean(model)
