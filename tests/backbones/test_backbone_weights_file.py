"""Backbone weights from a local file: ``weights=PATH`` / ``--weights PATH``; metadata keeps name + sha256."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from sae_lens import TopKTrainingSAEConfig

from vision_sae_lens.backbones import HookedSAEViT
from vision_sae_lens.errors import UnknownBackboneError
from vision_sae_lens.metadata import vision_facts_of
from vision_sae_lens.store import cache_activations
from vision_sae_lens.train import TrainConfig, train_sae

TINY = dict(img_size=32, patch_size=8, depth=2, num_classes=10)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory):
    torch.manual_seed(3)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY).eval()
    path = tmp_path_factory.mktemp("w") / "finetuned.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_timm_weights_file_loads_those_weights_and_keeps_the_path_out_of_the_id(timm_weights):
    reference, path = timm_weights
    hooked = HookedSAEViT.from_pretrained("timm:vit_tiny_patch16_224", weights=str(path), **TINY)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(hooked(pixels), reference(pixels))
    assert hooked.backbone_id == "timm:vit_tiny_patch16_224"
    assert hooked.spec.weights == {"file": "finetuned.pth", "sha256": _sha(path)}


def test_open_clip_weights_file_both_forms(tmp_path, tmp_path_factory):
    from families import register_tiny_open_clip

    register_tiny_open_clip(tmp_path_factory.mktemp("cfg"))
    random = HookedSAEViT.from_pretrained("open_clip:tiny-vit", pretrained=False)
    path = tmp_path / "clip.pt"
    torch.save(random.backbone.state_dict(), path)
    pixels = torch.randn(1, 3, 32, 32)
    for hooked in (
        HookedSAEViT.from_pretrained("open_clip:tiny-vit", weights=path),
        HookedSAEViT.from_pretrained(f"open_clip:tiny-vit/{path}"),  # the older form: same result
    ):
        with torch.no_grad():
            assert torch.equal(hooked(pixels), random(pixels))
        assert hooked.backbone_id == "open_clip:tiny-vit"
        assert hooked.spec.weights == {"file": "clip.pt", "sha256": _sha(path)}


def test_bad_weights_requests_say_what_to_do(tmp_path, timm_weights):
    _, path = timm_weights
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HookedSAEViT.from_pretrained("timm:vit_tiny_patch16_224", weights=tmp_path / "missing.pt", **TINY)
    with pytest.raises(UnknownBackboneError, match="save_pretrained"):
        HookedSAEViT.from_pretrained("hf:some/model", weights=path)
    with pytest.raises(ValueError, match="pretrained=False"):
        HookedSAEViT.from_pretrained("timm:vit_tiny_patch16_224", weights=path, pretrained=False, **TINY)


def test_store_and_sae_metadata_record_name_and_hash_never_the_path(timm_weights, tmp_path):
    _, path = timm_weights
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(8)]
    store = cache_activations(
        "timm:vit_tiny_patch16_224",
        images,
        sites=["blocks.0.hook_resid_post"],
        out_dir=tmp_path / "acts",
        model_kwargs={"weights": str(path), **TINY},
        progress=False,
    )
    assert store.backbone_id == "timm:vit_tiny_patch16_224"
    assert store.metadata["backbone_weights_file"] == {"file": "finetuned.pth", "sha256": _sha(path)}
    assert str(path.parent) not in json.dumps(store.metadata)
    cfg = TrainConfig(
        store=store.path,
        site="blocks.0.hook_resid_post",
        sae=TopKTrainingSAEConfig(d_in=store.d_model, d_sae=32, k=4),
        training_tokens=64,
        batch_size=32,
        eval_fraction=0.25,
        device="cpu",
    )
    run = train_sae(cfg, out_dir=tmp_path / "saes", progress=False)
    assert vision_facts_of(run.sae).backbone_weights_file["sha256"] == _sha(path)
    assert str(path.parent) not in (run.path / "cfg.json").read_text()
