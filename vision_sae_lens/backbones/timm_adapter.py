"""timm ViTs (ViT, DeiT, DINOv2 incl. registers, SigLIP, EVA, CLIP towers, ...) as a BackboneSpec."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Literal, Protocol, cast

from torch import nn

from vision_sae_lens.backbones.attention import n_heads_of
from vision_sae_lens.backbones.spec import BackboneSpec, BlockSites, ModuleSite
from vision_sae_lens.errors import UnknownBackboneError, close_matches
from vision_sae_lens.layout import TokenLayout


class _PatchEmbed(Protocol):
    img_size: tuple[int, int]
    patch_size: tuple[int, int]


class _TimmViT(Protocol):
    """What timm's VisionTransformer-like models (ViT, Eva, ...) share and the spec reads."""

    patch_embed: _PatchEmbed
    blocks: Sequence[nn.Module]
    embed_dim: int


def load_timm(name: str, *, pretrained: bool, **kwargs: Any) -> BackboneSpec:
    """Create ``timm:NAME`` with timm's own loader (``pretrained=True`` downloads or reads the cache;
    ``local-dir:DIR`` loads a folder saved by ``timm.models.save_for_hf``)."""
    import timm

    if not name.startswith(("local-dir:", "hf-hub:", "hf_hub:")) and not timm.is_model(name):
        raise UnknownBackboneError(
            f"timm has no model {name!r}.{close_matches(name, timm.list_models())} "
            "List them with timm.list_models('vit*')."
        )
    model = timm.create_model(name, pretrained=pretrained, **kwargs)
    return timm_spec(model, backbone_id=f"timm:{name}")


def timm_spec(model: nn.Module, *, backbone_id: str) -> BackboneSpec:
    """Describe a timm VisionTransformer-like model (``blocks``, ``patch_embed``, ``num_prefix_tokens``)."""
    import timm.data

    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
        raise UnknownBackboneError(
            f"{type(model).__name__} is not a timm ViT (no .blocks / .patch_embed); "
            "use HookedSAEViT.from_module(model, blocks=...) for other architectures."
        )
    vit = cast(_TimmViT, model)  # the checks above: a timm ViT-like model
    n_prefix = int(getattr(model, "num_prefix_tokens", 1))
    has_cls = getattr(model, "cls_token", None) is not None
    layout = TokenLayout(
        image_size=(*vit.patch_embed.img_size,),
        patch_size=(*vit.patch_embed.patch_size,),
        has_cls=has_cls,
        n_registers=n_prefix - int(has_cls),
    )
    # resolve_data_config reports the pretrained size (518 for DINOv2) even when the model was built
    # at another img_size: the model's own patch_embed size is what it runs at.
    data_cfg = timm.data.resolve_data_config(model=model)
    data_cfg["input_size"] = (data_cfg["input_size"][0], *layout.image_size)
    transform = timm.data.create_transform(**data_cfg)
    block = vit.blocks[0]
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    return BackboneSpec(
        backbone_id=backbone_id,
        model=model,
        blocks=list(vit.blocks),
        block_sites=_block_sites(block),
        layout=layout,
        transform=transform,
        preprocessing=_describe(data_cfg),
        output_kind="logits" if num_classes > 0 and not is_embedding_head(model) else "embedding",
        embed=_optional_site(model, "pos_drop"),
        final_norm=_optional_site(model, "norm"),
        pooled=_optional_site(model, "head", "input"),
        d_model=int(vit.embed_dim),
        d_mlp=_d_mlp(block),
        n_heads=n_heads_of(attn) if isinstance(attn := getattr(block, "attn", None), nn.Module) else None,
    )


def _optional_site(
    model: nn.Module, name: str, where: Literal["input", "output"] = "output"
) -> ModuleSite | None:
    child = getattr(model, name, None)  # not every timm ViT variant has it
    return ModuleSite(child, where) if isinstance(child, nn.Module) else None


# Pretrained tags of image-text towers fine-tuned into classifiers ("openai_ft_in1k", "laion2b_ft_in12k").
_FINETUNED_TAG = re.compile(r"(^|_)ft(_|$)|in1k|in12k|in21k|in22k")


def is_embedding_head(model: nn.Module) -> bool:
    """Whether a timm model's head is an image-text projection (CLIP tower), decided from its pretrained
    config: an image-text architecture whose tag is not a classification fine-tune, with the head the
    config ships (a user-set ``num_classes`` means a new classifier head)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch, tag = str(cfg.get("architecture") or ""), str(cfg.get("tag") or "")
    image_text = any(word in arch for word in ("_clip_", "_siglip", "_metaclip", "_openclip"))
    same_head = int(cfg.get("num_classes") or 0) == int(getattr(model, "num_classes", 0) or 0)
    return image_text and same_head and not _FINETUNED_TAG.search(tag)


def _block_sites(block: nn.Module) -> BlockSites:
    names = dict(block.named_children())
    post_norm = "PostNorm" in type(block).__name__ or "ResPost" in type(block).__name__
    mlp = names.get("mlp")
    # SwiGLU-style MLPs gate with a second projection: their `act` output is not the hidden activation.
    gated = mlp is not None and any(hasattr(mlp, a) for a in ("fc1_g", "w12", "fc1_x"))
    return BlockSites(
        attn_out="drop_path1" if "drop_path1" in names else None,
        mlp_out="drop_path2" if "drop_path2" in names else None,
        # Pre-norm blocks feed resid_mid to norm2; post-norm blocks feed it to the MLP itself.
        resid_mid=("mlp" if post_norm else "norm2") if "norm2" in names else None,
        mlp_post="mlp.act" if mlp is not None and hasattr(mlp, "act") and not gated else None,
        mlp_in="mlp" if mlp is not None else None,
        attn="attn" if "attn" in names else None,
    )


def _d_mlp(block: nn.Module) -> int | None:
    fc1 = getattr(getattr(block, "mlp", None), "fc1", None)
    return int(fc1.out_features) if isinstance(fc1, nn.Linear) else None


def _describe(data_cfg: dict) -> dict[str, Any]:
    size = list(data_cfg["input_size"][1:])
    crop_pct = float(data_cfg.get("crop_pct") or 0.875)
    return {
        "library": "timm",
        "size": size,
        "resize": [math.floor(s / crop_pct) for s in size],
        "crop": data_cfg.get("crop_mode") or "center",
        "crop_pct": crop_pct,
        "interpolation": data_cfg.get("interpolation", "bicubic"),
        "mean": list(data_cfg["mean"]),
        "std": list(data_cfg["std"]),
        "channels": int(data_cfg["input_size"][0]),
    }
