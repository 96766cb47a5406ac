"""Hugging Face transformers vision models as a BackboneSpec.

Covers CLIPVisionModel / CLIPModel (image side), SiglipVisionModel / SiglipModel, Dinov2Model,
Dinov2WithRegistersModel, ViTModel and ``*ForImageClassification`` heads on them. Module paths are
probed, not hard-coded (transformers 5 dropped the ``.vision_model`` wrapper of the vision-only classes).
"""

from __future__ import annotations

import logging
from typing import Any, cast

import torch
from torch import nn

from vision_sae_lens.backbones.spec import (
    BackboneSpec,
    BlockSites,
    HeadReadout,
    ModuleSite,
    PositionEmbedding,
)
from vision_sae_lens.errors import UnknownBackboneError, escape_control
from vision_sae_lens.layout import TokenLayout

logger = logging.getLogger(__name__)

# Normalisation each family was trained with, for models built without a preprocessor file.
_FAMILY_MEAN_STD = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "dinov2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def load_hf(source: str, *, pretrained: bool, **kwargs: Any) -> BackboneSpec:
    """Load ``hf:MODEL_ID_OR_DIR`` with transformers' own loaders (config only when ``pretrained=False``)."""
    import transformers as tf

    try:
        config = tf.AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise UnknownBackboneError(
            f"cannot load a transformers config for {source!r}: {exc}. Pass a Hub id that is cached or "
            "downloadable, or a local directory saved with save_pretrained()."
        ) from exc
    archs = getattr(config, "architectures", None) or []
    model: nn.Module
    if config.model_type in ("clip", "siglip") and not any(
        a.endswith("ForImageClassification") for a in archs
    ):
        # The dual-encoder classes, so the image-embedding head comes along; they have no from_config.
        dual = tf.CLIPModel if config.model_type == "clip" else tf.SiglipModel
        model = dual.from_pretrained(source, config=config) if pretrained else dual(config)
    else:
        auto = (
            tf.AutoModelForImageClassification
            if any(a.endswith("ForImageClassification") for a in archs)
            else tf.AutoModel
        )
        model = auto.from_pretrained(source, config=config) if pretrained else auto.from_config(config)
    processor = None
    try:
        processor = tf.AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError):
        logger.warning(
            "no image processor found for %s; using the family's default preprocessing",
            escape_control(source),
        )
    return hf_spec(model, processor=processor, backbone_id=f"hf:{source}")


def hf_spec(model: nn.Module, *, processor: Any = None, backbone_id: str) -> BackboneSpec:
    """Describe a transformers vision model (optionally with its image processor)."""
    layers_path, layers = _find_layers(model)
    # The vision root holds `embeddings`: "encoder.layers" -> "", "vision_model.encoder.layers" -> "vision_model".
    parts = layers_path.split(".")[:-1]
    vision_path = ".".join(parts[:-1] if parts and parts[-1] == "encoder" else parts)
    vision = model.get_submodule(vision_path) if vision_path else model
    # A transformers PretrainedConfig: which fields it has depends on the model family.
    config: Any = getattr(vision, "config", None) or getattr(model, "config", None)
    config = getattr(config, "vision_config", config)
    embeddings = vision.get_submodule("embeddings")
    has_cls = any(getattr(embeddings, a, None) is not None for a in ("class_embedding", "cls_token"))
    layout = TokenLayout(
        image_size=_pair(config.image_size),
        patch_size=_pair(config.patch_size),
        has_cls=has_cls,
        n_registers=int(getattr(config, "num_register_tokens", 0) or 0),
    )
    family = next((f for f in ("siglip", "clip", "dinov2", "vit") if f in config.model_type), "vit")
    transform, preprocessing = _preprocessing(processor, layout, family)
    is_classifier = hasattr(model, "classifier")
    final_norm = next(
        (
            getattr(vision, a)
            for a in ("layernorm", "post_layernorm")
            if isinstance(getattr(vision, a, None), nn.Module)
        ),
        None,
    )
    if family == "clip":
        final_norm = None  # CLIP's post_layernorm normalises only the pooled CLS vector
    pre_norm = getattr(vision, "pre_layrnorm", None)  # CLIP's (sic) norm between embedding and block 0
    pre_norm = pre_norm if isinstance(pre_norm, nn.Module) else None
    return BackboneSpec(
        backbone_id=backbone_id,
        model=model,
        blocks=list(layers),
        block_sites=_block_sites(layers[0]),
        layout=layout,
        transform=transform,
        preprocessing=preprocessing,
        call=_call_for(model),
        output_tensor=_output_tensor,
        output_kind="logits" if is_classifier else "embedding",
        pos_embed=None if pre_norm is not None else _pos_embed(embeddings, layout),
        pre_norm=pre_norm,
        final_norm=ModuleSite(final_norm) if final_norm is not None else None,
        readout=_readout(model, layout) if final_norm is not None and family == "vit" else None,
        pooled=_pooled_site(model, vision, family),
        d_model=int(config.hidden_size),
        d_mlp=_d_mlp(layers[0]) or int(getattr(config, "intermediate_size", 0) or 0) or None,
        n_heads=int(getattr(config, "num_attention_heads", 0) or 0) or None,
    )


def _find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    for name, module in model.named_modules():
        if "text" in name:
            continue
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in ("layers", "layer") and len(module):
            return name, module
    raise UnknownBackboneError(
        f"could not find the transformer layers of {type(model).__name__}; "
        "use HookedSAEViT.from_module(model, blocks=...) and name them."
    )


def _pos_embed(embeddings: nn.Module, layout: TokenLayout) -> PositionEmbedding | None:
    """CLIP / SigLIP hold an ``nn.Embedding`` over all tokens, ViT / DINOv2 a parameter over CLS and
    patches (DINOv2's registers are inserted after CLS with no position)."""
    if isinstance(getattr(embeddings, "position_embedding", None), nn.Embedding):

        def weight() -> torch.Tensor:
            return cast(nn.Embedding, embeddings.get_submodule("position_embedding")).weight

    elif isinstance(getattr(embeddings, "position_embeddings", None), torch.Tensor):

        def weight() -> torch.Tensor:
            return cast(torch.Tensor, embeddings.position_embeddings)[0]

    else:
        return None
    n_rows, n_reg = weight().shape[0], layout.n_registers
    if n_rows == layout.n_tokens:
        return PositionEmbedding(weight=weight, token_index=range(layout.n_tokens))
    if n_reg and n_rows == layout.n_tokens - n_reg:
        return PositionEmbedding(weight=weight, token_index=[0, *range(1 + n_reg, layout.n_tokens)])
    return None


def _d_mlp(layer: nn.Module) -> int | None:
    # fc2's input is the hidden activation; DINOv2 sizes its MLP by mlp_ratio, not intermediate_size
    fc2 = getattr(getattr(layer, "mlp", None), "fc2", None)
    return int(fc2.in_features) if isinstance(fc2, nn.Linear) else None


def _readout(model: nn.Module, layout: TokenLayout) -> HeadReadout | None:
    """ViT classifiers read the final-normed CLS token (DINOv2's classifier also reads the patch mean: no)."""
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Linear) or not layout.has_cls:
        return None
    return HeadReadout(linear=lambda: (classifier.weight, classifier.bias), token_index=range(0, 1))


def _block_sites(layer: nn.Module) -> BlockSites:
    names = dict(layer.named_children())
    mlp = names.get("mlp")
    linear = {n: f"mlp.{n}" for n in ("fc1", "fc2") if isinstance(getattr(mlp, n, None), nn.Linear)}
    mlp_post = (
        "mlp.activation_fn"
        if mlp is not None and isinstance(getattr(mlp, "activation_fn", None), nn.Module)
        else None
    )
    mlp_in = "mlp" if mlp is not None else None
    if "layer_scale1" in names:  # DINOv2: norm1, attention, layer_scale1, norm2, mlp, layer_scale2
        return BlockSites(
            attn_out="layer_scale1",
            mlp_out="layer_scale2",
            resid_mid="norm2",
            mlp_post=mlp_post,
            mlp_in=mlp_in,
            attn="attention",
            ln1="norm1",
            ln2="norm2",
            ls1="layer_scale1",
            ls2="layer_scale2",
            **linear,
        )
    if "self_attn" in names:  # CLIP / SigLIP
        return BlockSites(
            attn_out="self_attn",
            mlp_out="mlp",
            resid_mid="layer_norm2",
            mlp_post=mlp_post,
            mlp_in=mlp_in,
            attn="self_attn",
            ln1="layer_norm1",
            ln2="layer_norm2",
            **linear,
        )
    if "layernorm_after" in names:  # ViT
        return BlockSites(
            attn_out="attention",
            mlp_out="mlp",
            resid_mid="layernorm_after",
            mlp_post=mlp_post,
            mlp_in=mlp_in,
            attn="attention",
            ln1="layernorm_before",
            ln2="layernorm_after",
            **linear,
        )
    logger.warning("unknown layer type %s: only resid_pre/resid_post sites", type(layer).__name__)
    return BlockSites()


def _call_for(model: nn.Module):
    if hasattr(model, "get_image_features") and hasattr(model, "text_model"):
        return lambda m, pixels, **kw: m.get_image_features(pixel_values=pixels, **kw)
    return lambda m, pixels, **kw: m(pixel_values=pixels, **kw)


def _output_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if getattr(out, "logits", None) is not None:
        return out.logits
    if getattr(out, "pooler_output", None) is not None:
        return out.pooler_output
    return out.last_hidden_state[:, 0]


def _pooled_site(model: nn.Module, vision: nn.Module, family: str) -> ModuleSite | None:
    if hasattr(model, "classifier"):
        return ModuleSite(model.get_submodule("classifier"), "input")
    if hasattr(model, "visual_projection"):
        return ModuleSite(model.get_submodule("visual_projection"))
    if family == "clip" and hasattr(vision, "post_layernorm"):
        return ModuleSite(vision.get_submodule("post_layernorm"))
    head = getattr(vision, "head", None) or getattr(vision, "pooler", None)
    return ModuleSite(head) if isinstance(head, nn.Module) else None


def _preprocessing(processor: Any, layout: TokenLayout, family: str):
    if processor is not None:

        def transform(img: Any) -> torch.Tensor:
            return processor(images=img, return_tensors="pt")["pixel_values"][0]

        size = getattr(processor, "size", {}) or {}
        return transform, {
            "library": "transformers",
            "processor": type(processor).__name__,
            "size": list(layout.image_size),
            "resize": size.get("shortest_edge") or [size.get("height"), size.get("width")],
            "crop": "center" if getattr(processor, "do_center_crop", False) else "none",
            "interpolation": str(getattr(processor, "resample", "")),
            "mean": list(processor.image_mean),
            "std": list(processor.image_std),
            "channels": 3,
        }
    from torchvision import transforms as T

    mean, std = _FAMILY_MEAN_STD[family]
    transform = T.Compose(
        [
            T.Resize(min(layout.image_size), interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(layout.image_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    return transform, {
        "library": "torchvision",
        "size": list(layout.image_size),
        "resize": min(layout.image_size),
        "crop": "center",
        "interpolation": "bicubic",
        "mean": list(mean),
        "std": list(std),
        "channels": 3,
    }


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))
