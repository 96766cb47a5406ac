"""The top-level package: what it exports, and that importing it registers the vision releases."""

from __future__ import annotations

import subprocess
import sys

import pytest

import vision_sae_lens


def test_every_exported_name_exists():
    for name in vision_sae_lens.__all__:
        assert getattr(vision_sae_lens, name) is not None, name
    for name in ("cache_activations", "ActivationStore", "train_sae", "TrainConfig", "push_to_hub"):
        assert name in vision_sae_lens.__all__


@pytest.mark.slow
def test_importing_the_package_registers_the_vision_releases_with_saelens():
    # A fresh interpreter: nothing but `import vision_sae_lens` may be needed.
    code = (
        "import vision_sae_lens\n"
        "from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory\n"
        "d = get_pretrained_saes_directory()\n"
        "print(d['saev-clip-vit-b-16-in1k'].repo_id)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""}
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "osunlp/SAE_CLIP_24K_ViT-B-16_IN1K"
