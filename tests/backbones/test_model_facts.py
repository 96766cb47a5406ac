"""model.cfg (TransformerLens names), run_with_cache(remove_batch_dim=True), output_kind from metadata,
from_module on a custom module (d_model from the blocks, the transform contract)."""

from __future__ import annotations

import pytest
import timm
import torch
from ported_helpers import tiny_model
from torch import nn

from vision_sae_lens.backbones import HookedSAEViT, TokenLayout
from vision_sae_lens.backbones.timm_adapter import is_embedding_head
from vision_sae_lens.errors import ImageInputError, UnknownBackboneError


def test_cfg_has_transformer_lens_fields():
    model = tiny_model()
    cfg = model.cfg
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.n_ctx) == (
        192,
        2,
        3,
        64,
        768,
        17,
    )
    assert cfg.model_name == "timm:vit_tiny_patch16_224"
    assert cfg.device == torch.device("cpu") and cfg.dtype == torch.float32
    assert model.half().cfg.dtype == torch.float16
    assert cfg.d_model == model.backbone.embed_dim and cfg.n_heads == model.backbone.blocks[0].attn.num_heads


def test_remove_batch_dim_matches_transformer_lens():
    model = tiny_model()
    pixels = torch.randn(1, 3, 32, 32)
    _, full = model.run_with_cache(pixels)
    _, single = model.run_with_cache(pixels, remove_batch_dim=True)
    assert full.has_batch_dim and not single.has_batch_dim
    assert single.keys() == full.keys()
    for name in full:
        assert torch.equal(single[name], full[name][0]), name
    assert single["hook_pooled"].shape == (model.d_model,)
    with pytest.raises(ImageInputError, match="batch of one"):
        model.run_with_cache(torch.randn(2, 3, 32, 32), remove_batch_dim=True)


@pytest.mark.parametrize(
    "name, kwargs, embedding",
    [
        ("vit_base_patch16_clip_224.openai", {}, True),
        ("vit_base_patch16_clip_224.laion2b", {}, True),
        ("vit_base_patch16_clip_224.openai_ft_in1k", {}, False),
        ("vit_base_patch16_clip_224.openai", {"num_classes": 10}, False),
        ("vit_tiny_patch16_224.augreg_in21k", {}, False),
    ],
)
def test_output_kind_comes_from_pretrained_metadata(name, kwargs, embedding):
    model = timm.create_model(name, pretrained=False, depth=1, **kwargs)
    assert is_embedding_head(model) is embedding
    hooked = HookedSAEViT.from_module(model, backbone_id=f"timm:{name}")
    assert hooked.output_kind == ("embedding" if embedding else "logits")


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return x + self.fc(self.norm(x))


class _CustomViT(nn.Module):
    def __init__(self, d: int = 24) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, d, 8, 8)
        self.layers = nn.ModuleList([_Block(d), _Block(d)])

    def forward(self, pixels):
        x = self.embed(pixels).flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = layer(x)
        return x.mean(1)


LAYOUT = TokenLayout(image_size=(16, 16), patch_size=(8, 8), has_cls=False)


def test_from_module_infers_d_model_from_blocks_and_checks_transform():
    def transform(img):
        return torch.from_numpy(__import__("numpy").asarray(img, dtype="float32") / 255).permute(2, 0, 1)

    model = HookedSAEViT.from_module(_CustomViT(), blocks="layers", layout=LAYOUT, transform=transform)
    assert model.d_model == 24 and model.cfg.d_model == 24
    from PIL import Image

    assert model([Image.new("RGB", (16, 16))]).shape == (1, 24)
    with pytest.raises(UnknownBackboneError, match=r"float tensor \(3, 16, 16\)"):
        HookedSAEViT.from_module(_CustomViT(), blocks="layers", layout=LAYOUT, transform=lambda img: img)
    with pytest.raises(UnknownBackboneError, match="callable"):
        HookedSAEViT.from_module(_CustomViT(), blocks="layers", layout=LAYOUT, transform="resize")
    no_transform = HookedSAEViT.from_module(_CustomViT(), blocks="layers", layout=LAYOUT)
    with pytest.raises(UnknownBackboneError, match="without a transform"):
        no_transform([Image.new("RGB", (16, 16))])


def test_sae_on_another_device_is_a_clear_error():
    from ported_helpers import get_hooked_sae

    from vision_sae_lens.errors import SAEMismatchError

    model = tiny_model()
    sae = get_hooked_sae(model, "blocks.0.hook_resid_post").to("meta")
    with pytest.raises(SAEMismatchError, match="the SAE is on meta but the model is on cpu"):
        model.add_sae(sae)
    assert not model._acts_to_saes
