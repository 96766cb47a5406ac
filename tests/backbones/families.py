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


TL_FAMILIES = ["timm-vit", "timm-dinov2-reg", "open_clip-vit", "hf-siglip", "hf-dinov2", "hf-vit-classifier"]
"""The families TransformerLens' ported tests run on: timm (fused qkv; a classifier; LayerScale and
registers), open_clip (nn.MultiheadAttention, ln_pre, a projection into the text space), transformers
(q/k/v projections; no CLS token; LayerScale; a classifier)."""


TL_EVERY_ATTENTION = [
    "timm-vit",
    "timm-dinov2-reg",
    "timm-siglip",
    "open_clip-vit",
    "hf-clip-vision",
    "hf-siglip",
    "hf-dinov2",
    "hf-vit",
]
"""Every eager-capable family but open_clip's timm trunk (twelve blocks of the same timm modules as ``timm-*``)."""

TL_ONE_PER_LIBRARY = ["timm-vit", "open_clip-vit", "hf-vit-classifier"]
"""For the ported tests of the hook machinery itself, where the architecture does not matter."""


def build_eager(family: str, tmp_path_factory) -> HookedSAEViT:
    """The family's tiny model with ``attention="eager"`` (every TransformerLens site exists), its
    vectors (norm weights and biases, LayerScale, linear biases) drawn at random: libraries initialise
    norms to (1, 0) and LayerScale to 1e-5, which would hide a mixed-up weight, bias or scale."""
    fused, _ = build_family(family, tmp_path_factory)
    fused.remove_bridges()  # one wrapper per backbone: the eager one below
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in fused.backbone.named_parameters():
            if param.ndim == 1:
                noise = torch.randn(param.shape, generator=generator)
                param.copy_(noise * 0.1 if name.endswith("bias") else 1 + 0.3 * noise)
    return HookedSAEViT(fused.spec, attention="eager")


def images_for(model: HookedSAEViT, n: int = 8, seed: int = 0) -> torch.Tensor:
    """``n`` fixed preprocessed images (the counterpart of a batch of prompts)."""
    size = model.layout.image_size
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def class_ids(model: HookedSAEViT, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` fixed class ids of the model's class readout (the counterpart of answer tokens)."""
    n_classes = model.class_readout.directions.shape[0]
    return torch.randint(0, n_classes, (n,), generator=torch.Generator().manual_seed(seed))


def give_classes(model: HookedSAEViT, n_classes: int = 6) -> bool:
    """Give ``model`` named class directions: a classifier's head, or for an image-text tower random unit
    class text embeddings. False when the backbone has no linear head (it outputs features)."""
    if model.spec.readout is None:
        return False
    if model.output_kind == "embedding":
        d_embed = model.spec.readout.linear()[0].shape[0]
        text = torch.nn.functional.normalize(
            torch.randn(n_classes, d_embed, generator=torch.Generator().manual_seed(1)), dim=-1
        )
        model.use_classes([f"class{i}" for i in range(n_classes)], text_embeddings=text)
    else:
        n_out = model.spec.readout.linear()[0].shape[0]
        model.use_classes([f"class{i}" for i in range(n_out)])
    return True


class AttnOnlyBlock(torch.nn.Module):
    """A pre-norm block with attention and no MLP."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(d)
        self.attn = torch.nn.MultiheadAttention(d, 2, batch_first=True)

    def forward(self, x):
        h = self.norm(x)
        return x + self.attn(h, h, h, need_weights=False)[0]


class AttnOnlyViT(torch.nn.Module):
    """Two attention-only blocks on 8x8 patches of a 32 px image (no CLS): the image counterpart of
    TransformerLens' ``attn-only-2l``; hook it with :func:`HookedSAEViT.from_module` and ``blocks="blocks"``."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.embed = torch.nn.Conv2d(3, d, 8, 8)
        self.blocks = torch.nn.ModuleList([AttnOnlyBlock(d), AttnOnlyBlock(d)])

    def forward(self, pixels):
        x = self.embed(pixels).flatten(2).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return x.mean(1)
