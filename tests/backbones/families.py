"""The adapter families the backbone tests run on: tiny random-init timm, open_clip and transformers ViTs."""

from __future__ import annotations

import json

import torch

from vision_sae_lens.backbones import HookedSAEViT

TIMM_MODELS = {
    "timm-vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2, num_classes=10)),
    "timm-deit": ("deit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2)),
    "timm-dinov2-reg": (
        "vit_small_patch14_reg4_dinov2",
        dict(img_size=28, patch_size=14, depth=2, embed_dim=32, num_heads=2),
    ),
    "timm-siglip": (
        "vit_base_patch16_siglip_224",
        dict(img_size=32, patch_size=16, depth=2, embed_dim=32, num_heads=2),
    ),
    "timm-eva02": ("eva02_tiny_patch14_224", dict(img_size=28, depth=2, num_classes=0)),
    "timm-reg-gap": (
        "vit_base_patch16_reg4_gap_256",
        dict(img_size=32, patch_size=16, depth=2, embed_dim=32, num_heads=2, num_classes=0),
    ),
}

OPEN_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1},
}


def _hf_models():
    import transformers as tf

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    vision = dict(**small, image_size=32, patch_size=8)
    return {
        "hf-clip-vision": lambda: tf.CLIPVisionModel(tf.CLIPVisionConfig(**vision)),
        "hf-clip": lambda: tf.CLIPModel(
            tf.CLIPConfig(
                vision_config=vision, text_config=dict(small, num_hidden_layers=1), projection_dim=16
            )
        ),
        "hf-siglip": lambda: tf.SiglipVisionModel(tf.SiglipVisionConfig(**vision)),
        "hf-dinov2": lambda: tf.Dinov2Model(tf.Dinov2Config(**vision)),
        "hf-dinov2-reg": lambda: tf.Dinov2WithRegistersModel(
            tf.Dinov2WithRegistersConfig(**vision, num_register_tokens=4)
        ),
        "hf-vit": lambda: tf.ViTModel(tf.ViTConfig(**vision)),
        "hf-vit-classifier": lambda: tf.ViTForImageClassification(tf.ViTConfig(**vision, num_labels=5)),
    }


FAMILIES = [*TIMM_MODELS, "open_clip-vit", "open_clip-timm-trunk", *_hf_models()]


def register_tiny_open_clip(tmp_dir) -> None:
    """open_clip ships no tiny ViT config; register two (a native tower and a timm trunk)."""
    import open_clip

    (tmp_dir / "tiny-vit.json").write_text(json.dumps(OPEN_CLIP_CONFIG))
    trunk = {
        **OPEN_CLIP_CONFIG,
        "vision_cfg": {
            "timm_model_name": "vit_tiny_patch16_224",
            "timm_model_pretrained": False,
            "timm_pool": "token",
            "timm_proj": "linear",
            "image_size": 32,
        },
    }
    (tmp_dir / "tiny-timm-trunk.json").write_text(json.dumps(trunk))
    open_clip.add_model_config(tmp_dir)


def build_family(family: str, tmp_path_factory) -> tuple[HookedSAEViT, torch.nn.Module]:
    """(hooked model, the same plain model object) for one family, random weights, eval mode."""
    torch.manual_seed(0)
    if family in TIMM_MODELS:
        name, kwargs = TIMM_MODELS[family]
        hooked = HookedSAEViT.from_pretrained(f"timm:{name}", pretrained=False, **kwargs)
        return hooked, hooked.backbone
    if family.startswith("open_clip"):
        register_tiny_open_clip(tmp_path_factory.mktemp("open_clip_cfg"))
        arch = "tiny-vit" if family == "open_clip-vit" else "tiny-timm-trunk"
        hooked = HookedSAEViT.from_pretrained(f"open_clip:{arch}", pretrained=False)
        return hooked, hooked.backbone
    model = _hf_models()[family]().eval()
    return HookedSAEViT.from_module(model, backbone_id=f"hf:{family}"), model
