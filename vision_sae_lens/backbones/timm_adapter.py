"""timm ViTs (ViT, DeiT, DINOv2 incl. registers, SigLIP, EVA, CLIP towers, ...) as a BackboneSpec."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Literal, Protocol, cast

import torch
from torch import nn

from vision_sae_lens.backbones.attention import n_heads_of
from vision_sae_lens.backbones.spec import (
    BackboneSpec,
    BlockSites,
    HeadReadout,
    ModuleSite,
    PositionEmbedding,
)
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
    pre_norm = _norm_or_none(getattr(model, "norm_pre", None))
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
        pos_embed=None if pre_norm is not None else _pos_embed(model, layout),
        pre_norm=pre_norm,
        final_norm=_optional_site(model, "norm"),
        readout=_readout(model, layout),
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
    gated = mlp is not None and (
        any(hasattr(mlp, a) for a in ("fc1_g", "w12", "fc1_x")) or "Glu" in type(mlp).__name__
    )
    linear = {
        n: f"mlp.{n}"
        for n in ("fc1", "fc2")
        if mlp is not None and isinstance(getattr(mlp, n, None), nn.Linear)
    }
    return BlockSites(
        ln1="norm1" if "norm1" in names and not post_norm else None,
        ln2="norm2" if "norm2" in names and not post_norm else None,
        fc1=None if gated else linear.get("fc1"),
        fc2=linear.get("fc2"),
        # timm's ViT blocks hold LayerScale modules (ls1/ls2), EVA blocks bare parameters (gamma_1/gamma_2)
        ls1=next((n for n in ("ls1", "gamma_1") if getattr(block, n, None) is not None), None),
        ls2=next((n for n in ("ls2", "gamma_2") if getattr(block, n, None) is not None), None),
        attn_out="drop_path1" if "drop_path1" in names else None,
        mlp_out="drop_path2" if "drop_path2" in names else None,
        # Pre-norm blocks feed resid_mid to norm2; post-norm blocks feed it to the MLP itself.
        resid_mid=("mlp" if post_norm else "norm2") if "norm2" in names else None,
        mlp_post="mlp.act" if mlp is not None and hasattr(mlp, "act") and not gated else None,
        mlp_in="mlp" if mlp is not None else None,
        attn="attn" if "attn" in names else None,
    )


def _norm_or_none(module: object) -> nn.Module | None:
    return module if isinstance(module, nn.Module) and not isinstance(module, nn.Identity) else None


def _pos_embed(model: nn.Module, layout: TokenLayout) -> PositionEmbedding | None:
    """timm adds ``pos_embed`` to every token, or (``no_embed_class``) to the patches only."""
    pos = getattr(model, "pos_embed", None)
    if not isinstance(pos, torch.Tensor) or getattr(model, "dynamic_img_size", False):
        return None
    first = layout.n_prefix if getattr(model, "no_embed_class", False) else 0
    if pos.shape[1] != layout.n_tokens - first:
        return None
    return PositionEmbedding(
        weight=lambda: cast(torch.Tensor, model.pos_embed)[0], token_index=range(first, layout.n_tokens)
    )


def _readout(model: nn.Module, layout: TokenLayout) -> HeadReadout | None:
    """Token or mean pooling of the final-normed tokens into a linear head; None for attention pooling
    (MAP: not linear) or a norm after pooling (``fc_norm``: its scale is not a per-token site)."""
    head, pool = getattr(model, "head", None), getattr(model, "global_pool", None)
    if getattr(model, "attn_pool", None) is not None or _norm_or_none(getattr(model, "fc_norm", None)):
        return None
    if not isinstance(head, nn.Linear) or pool not in ("token", "avg"):
        return None
    if pool == "token":
        tokens: range = range(0, 1)
    else:
        first = 0 if getattr(model, "pool_include_prefix", False) else layout.n_prefix
        tokens = range(first, layout.n_tokens)
    return HeadReadout(linear=lambda: (head.weight, head.bias), token_index=tokens)


def _d_mlp(block: nn.Module) -> int | None:
    # fc2's input is the hidden activation (a gated MLP's fc1 is twice as wide)
    fc2 = getattr(getattr(block, "mlp", None), "fc2", None)
    return int(fc2.in_features) if isinstance(fc2, nn.Linear) else None


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
