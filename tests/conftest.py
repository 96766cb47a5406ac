"""Fixtures shared by every stage's tests (stage-specific ones live in each folder's conftest.py).

Helpers that are not fixtures are in ``tests/helpers.py`` (``from helpers import build_tiny``), never
imported from a conftest: with one ``conftest`` module per folder, such imports depend on the order in
which pytest collects the folders.
"""

from __future__ import annotations

import os

import pytest
from helpers import build_tiny

# No test may reach the Hub; those that test it start a local server and say so.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Stores' verified records (vision_sae_lens.store.integrity) go to a temp folder, never ~/.cache."""
    old = os.environ.get("VISION_SAE_LENS_CACHE")
    os.environ["VISION_SAE_LENS_CACHE"] = str(tmp_path_factory.mktemp("vsl-cache"))
    yield
    if old is None:
        os.environ.pop("VISION_SAE_LENS_CACHE", None)
    else:
        os.environ["VISION_SAE_LENS_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_model():
    """The suite's tiny timm ViT (3 blocks, see ``helpers.build_tiny``), built once per session."""
    return build_tiny()
