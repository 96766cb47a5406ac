"""Helpers for the analysis tests: random SAEs, noise images, a labelled image source, a browser's index
data and headless Chromium."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sae_lens import StandardSAE, StandardSAEConfig

from vision_sae_lens.metadata import VisionFacts, apply_vision_facts

SITE = "blocks.0.hook_resid_post"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
)
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="chromium / chromedriver not installed (apt-get install chromium chromium-driver; .ci/run does)",
)


def make_sae(model, *, d_sae: int = 48, tokens: str | None = "patches", site: str = SITE, seed: int = 1):
    """A random StandardSAE at ``site`` with vision metadata for ``tokens`` (None: no metadata)."""
    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=model.d_model, d_sae=d_sae))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    sae.cfg.metadata.hook_name = site
    if tokens is not None:
        apply_vision_facts(
            sae, VisionFacts(backbone=model.backbone_id, hook_name=site, tokens=tokens, layout=model.layout)
        )
    return sae


def noise_images(n: int, size: tuple[int, int] = (48, 40), seed: int = 0) -> list[Image.Image]:
    """``n`` random RGB images of ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)) for _ in range(n)]


class LabelledImages:
    """An image source: ``len``, ``[i] -> (PIL, label)``, label names, a JSON description."""

    def __init__(self, n: int, n_labels: int = 3, seed: int = 0) -> None:
        self.images = noise_images(n, seed=seed)
        self.labels = [i % n_labels for i in range(n)]
        self.label_names = [f"class{c}" for c in range(n_labels)]
        self.description = {"kind": "test-noise", "count": n, "seed": seed}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


def read_index(site: Path) -> dict:
    """The data of a browser's index (``data/index.js``); ``site``: its folder or its ``index.html``."""
    folder = site.parent if site.suffix == ".html" else site
    text = (folder / "data" / "index.js").read_text()
    return json.loads(text.removeprefix("window.VSL_INDEX = ").rstrip().rstrip(";"))


def headless_chromium(width: int = 1200, height: int = 900):
    """A Selenium driver of headless Chromium that keeps the console log (quit it when done)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.add_argument(f"--window-size={width},{height}")
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager must not try to download one.
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
