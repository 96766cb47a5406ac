"""Tiny random-init backbones and small image sets for the store tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vision_sae_lens.backbones import HookedSAEViT

TINY_ID = "timm:vit_tiny_patch16_224"
TINY_KWARGS = dict(img_size=32, patch_size=8, depth=3, num_classes=10)
SITES = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def build_tiny(seed: int = 0) -> HookedSAEViT:
    """3-block timm ViT at 32 px: CLS + 4x4 patches, d_model 192 (same weights for the same seed)."""
    torch.manual_seed(seed)
    return HookedSAEViT.from_pretrained(TINY_ID, pretrained=False, **TINY_KWARGS)


def random_images(n: int, seed: int = 0, size: tuple[int, int] = (32, 32)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_model() -> HookedSAEViT:
    return build_tiny()


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


def make_folder(root: Path) -> Path:
    """An image folder with two classes, odd modes and sizes, and one corrupt file."""
    imgs = random_images(10, seed=3)
    for i, img in enumerate(imgs):
        cls = root / ("cat" if i % 2 else "dog")
        cls.mkdir(parents=True, exist_ok=True)
        if i == 3:
            img = img.convert("RGBA")
        if i == 5:
            img = img.resize((50, 20)).convert("P")
        if i == 7:
            img = Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 200)
        img.save(cls / f"img{i:02d}.png")
    (root / "dog" / "img99_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root
