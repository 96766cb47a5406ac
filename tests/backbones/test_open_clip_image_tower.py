"""open_clip backbones hold only the image tower, and it equals the tower of open_clip's full CLIP."""

from __future__ import annotations

import open_clip
import pytest
import torch
from PIL import Image

from tests.backbones.families import register_tiny_open_clip
from vision_sae_lens.backbones import HookedSAEViT
from vision_sae_lens.backbones.open_clip_adapter import ImageTower


def _full_clip(arch: str, seed: int):
    torch.manual_seed(seed)
    return open_clip.create_model_and_transforms(arch, pretrained=None)


def test_random_tower_equals_full_clip_tower_and_has_no_text_weights(tmp_path_factory):
    register_tiny_open_clip(tmp_path_factory.mktemp("cfg"))
    for arch in ("tiny-vit", "tiny-timm-trunk"):
        clip, _, preprocess = _full_clip(arch, seed=3)
        torch.manual_seed(3)
        hooked = HookedSAEViT.from_pretrained(f"open_clip:{arch}", pretrained=False)
        assert isinstance(hooked.backbone, ImageTower)
        ours = hooked.backbone.state_dict()
        theirs = {k: v for k, v in clip.state_dict().items() if k.startswith("visual.")}
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
        assert sum(p.numel() for p in hooked.backbone.parameters()) < sum(
            p.numel() for p in clip.parameters()
        )
        if arch == "tiny-vit":  # (the timm trunk keeps its own 224 px input, whatever the config says)
            img = Image.new("RGB", (50, 40), (120, 30, 200))
            assert torch.equal(hooked.preprocess([img]), preprocess(img).unsqueeze(0))
        pixels = torch.randn(2, 3, *hooked.layout.image_size)
        with torch.no_grad():
            assert torch.equal(hooked(pixels), clip.eval().encode_image(pixels))


def test_full_clip_checkpoint_file_loads_into_the_tower_alone(tmp_path, tmp_path_factory):
    register_tiny_open_clip(tmp_path_factory.mktemp("cfg"))
    clip, _, _ = _full_clip("tiny-vit", seed=5)
    path = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), path)  # text tower included, as open_clip checkpoints are
    hooked = HookedSAEViT.from_pretrained("open_clip:tiny-vit", weights=path)
    assert isinstance(hooked.backbone, ImageTower)
    assert not any(k.startswith(("transformer.", "token_embedding")) for k in hooked.backbone.state_dict())
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(hooked(pixels), clip.eval().encode_image(pixels))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_pretrained_tag_builds_and_loads_the_tower_alone(tmp_path, tmp_path_factory, monkeypatch, suffix):
    import open_clip.model as oc_model
    import open_clip.pretrained as oc_pretrained
    from safetensors.torch import save_file

    register_tiny_open_clip(tmp_path_factory.mktemp("cfg"))
    clip, _, _ = _full_clip("tiny-vit", seed=7)
    path = tmp_path / f"clip{suffix}"
    if suffix == ".pt":
        torch.save(clip.state_dict(), path)  # text tower included, as open_clip checkpoints are
    else:
        save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, path)
    # a tag with its own normalisation, as open_clip's tags carry (e.g. openai's mean / std)
    tag_cfg = {"file": str(path), "mean": (0.1, 0.2, 0.3), "std": (0.5, 0.6, 0.7)}
    monkeypatch.setitem(oc_pretrained._PRETRAINED, "tiny-vit", {"mytag": tag_cfg})
    reference, _, ref_preprocess = open_clip.create_model_and_transforms("tiny-vit", pretrained="mytag")

    def no_text_tower(*args, **kwargs):
        raise AssertionError("the text tower was built")

    monkeypatch.setattr(oc_model, "_build_text_tower", no_text_tower)
    hooked = HookedSAEViT.from_pretrained("open_clip:tiny-vit/mytag")
    assert isinstance(hooked.backbone, ImageTower)
    assert hooked.backbone_id == "open_clip:tiny-vit/mytag"
    img = Image.new("RGB", (50, 40), (120, 30, 200))
    assert torch.equal(hooked.preprocess([img]), ref_preprocess(img).unsqueeze(0))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(hooked(pixels), reference.eval().encode_image(pixels))


def test_a_tag_whose_file_cannot_be_read_alone_falls_back_to_open_clips_loader(
    tmp_path, tmp_path_factory, monkeypatch
):
    import open_clip.pretrained as oc_pretrained

    from vision_sae_lens.backbones import open_clip_adapter

    register_tiny_open_clip(tmp_path_factory.mktemp("cfg"))
    clip, _, _ = _full_clip("tiny-vit", seed=8)
    path = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), path)
    monkeypatch.setitem(oc_pretrained._PRETRAINED, "tiny-vit", {"mytag": {"file": str(path)}})

    def unreadable(path):
        raise RuntimeError("not a plain state dict")

    monkeypatch.setattr(open_clip_adapter, "_read_state_dict", unreadable)
    hooked = HookedSAEViT.from_pretrained("open_clip:tiny-vit/mytag")
    assert isinstance(hooked.backbone, ImageTower)  # the full CLIP was built, its image tower kept
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(hooked(pixels), clip.eval().encode_image(pixels))
