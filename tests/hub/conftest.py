"""Fixtures for the Hub tests: a local Hub-compatible server and tiny SAELens checkpoint folders.

``hub`` starts :class:`LocalHub` on 127.0.0.1 and points huggingface_hub at it (endpoint, a fresh
cache directory, online mode, a fake token) for one test, restoring everything afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import torch
from local_hub import LocalHub
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

from vision_sae_lens.fsutil import seal_sae_folder
from vision_sae_lens.layout import TokenLayout
from vision_sae_lens.metadata import VisionFacts, apply_vision_facts

TOKEN = "hf_testtokenABCDEFGH12345678"


@pytest.fixture(scope="module")
def hub_server():
    server = LocalHub().start()
    yield server
    server.stop()


@pytest.fixture
def hub(hub_server, tmp_path, monkeypatch):
    """The local Hub, with huggingface_hub pointed at it and an empty cache under tmp_path."""
    hub_server.require_token = None
    hub_server.fail_commits = False
    url = hub_server.url
    monkeypatch.setattr(hf_constants, "ENDPOINT", url)
    monkeypatch.setattr(
        hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return hub_server


@pytest.fixture
def offline(monkeypatch):
    """Switch huggingface_hub to offline mode (as HF_HUB_OFFLINE=1 does) for the rest of a test."""

    def switch() -> None:
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    return switch


def vision_facts(hook_name: str = "blocks.1.hook_resid_post") -> VisionFacts:
    return VisionFacts(
        backbone="timm:vit_tiny_patch16_224",
        hook_name=hook_name,
        tokens="patches",
        layout=TokenLayout(image_size=(32, 32), patch_size=(8, 8), has_cls=True),
        dataset={"name": "demo:mnist"},
    )


def make_checkpoint(
    folder: Path,
    *,
    hook_name: str = "blocks.1.hook_resid_post",
    arch: str = "standard",
    seed: int = 0,
    eval_json: dict | None = None,
    facts: bool = True,
) -> Path:
    """Write a tiny SAELens checkpoint folder (random weights, vision facts, optional eval.json)."""
    torch.manual_seed(seed)
    if arch == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=16, d_sae=32, k=4))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=16, d_sae=32))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    if facts:
        apply_vision_facts(sae, vision_facts(hook_name))
    folder.mkdir(parents=True, exist_ok=True)
    sae.save_model(str(folder))
    seal_sae_folder(folder)  # what train_sae and the importers write last
    if eval_json is not None:
        (folder / "eval.json").write_text(json.dumps(eval_json))
    return folder
