"""Hook a model object the user already has (a fine-tuned checkpoint, or any ViT given its blocks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from vision_sae_lens.backbones.attention import n_heads_of
from vision_sae_lens.backbones.spec import BackboneSpec, BlockSites
from vision_sae_lens.errors import UnknownBackboneError
from vision_sae_lens.layout import TokenLayout


def spec_from_module(
    module: nn.Module,
    *,
    backbone_id: str | None = None,
    blocks: str | Sequence[nn.Module] | None = None,
    layout: TokenLayout | None = None,
    transform: Callable[[Any], torch.Tensor] | None = None,
    preprocessing: dict[str, Any] | None = None,
    output_kind: str = "embedding",
    processor: Any = None,
    block_sites: BlockSites | None = None,
) -> BackboneSpec:
    """A BackboneSpec for ``module``.

    timm ViTs, open_clip CLIP models and transformers vision models are recognised and described by
    their adapter. Any other module needs ``blocks`` (the transformer blocks, or their attribute path
    such as ``"encoder.blocks"``; each block maps (b, t, d) to (b, t, d)) and ``layout``. ``d_model`` is
    read from the module (``embed_dim``, ``hidden_size``, ...) or else from the blocks' first norm or
    linear layer.

    ``transform`` contract: a callable taking one PIL image (already converted to "RGB", or "L" when
    ``preprocessing["channels"] == 1``) and returning a float tensor (channels, height, width) at
    ``layout.image_size``, normalised as the model expects. It is checked here on a blank image. Without
    it the model takes only preprocessed float tensors (PIL images and paths raise a clear error).

    ``block_sites`` names the sub-modules of a block that carry its inner sites (``attn_out``, ``attn``,
    ``ln1``, ``mlp_out``, ... paths relative to a block, see :class:`BlockSites`); without it only
    ``hook_resid_pre`` / ``hook_resid_post`` exist.
    """
    name = backbone_id or f"module:{type(module).__name__}"
    if blocks is None:
        if type(module).__module__.startswith("timm.") or (
            hasattr(module, "patch_embed") and hasattr(module, "blocks")
        ):
            from vision_sae_lens.backbones.timm_adapter import timm_spec

            return timm_spec(module, backbone_id=name)
        if hasattr(module, "visual") and hasattr(module, "encode_image"):
            from vision_sae_lens.backbones.open_clip_adapter import open_clip_spec

            return open_clip_spec(module, backbone_id=name)
        if type(module).__module__.startswith("transformers."):
            from vision_sae_lens.backbones.hf_adapter import hf_spec

            return hf_spec(module, processor=processor, backbone_id=name)
        raise UnknownBackboneError(
            f"{type(module).__name__} is not a timm, open_clip or transformers model; pass blocks= (the list "
            "of transformer blocks or their attribute path) and layout=TokenLayout(...)."
        )
    if isinstance(blocks, str):
        container = module.get_submodule(blocks)
        if not isinstance(container, (nn.ModuleList, nn.Sequential)):
            raise UnknownBackboneError(
                f"blocks={blocks!r} is a {type(container).__name__}, not a list of blocks "
                "(nn.ModuleList / nn.Sequential); name the module that holds the transformer blocks."
            )
        block_list = list(container)
    else:
        block_list = list(blocks)
    if not block_list:
        raise UnknownBackboneError("blocks is empty: pass the model's transformer blocks")
    if layout is None:
        raise UnknownBackboneError("pass layout=TokenLayout(image_size=..., patch_size=..., has_cls=...)")

    def no_transform(_img: Any) -> torch.Tensor:
        raise UnknownBackboneError(
            f"{name} was hooked without a transform: pass preprocessed float tensors, or give "
            "HookedSAEViT.from_module(..., transform=...)"
        )

    channels = int((preprocessing or {}).get("channels", 3))
    if transform is not None:
        _check_transform(transform, layout, channels)
    d_model = _guess_d_model(module) or _d_model_from_blocks(block_list)
    if not d_model:
        raise UnknownBackboneError(
            f"cannot tell the residual width of {name}: give the module an embed_dim attribute or pass "
            "blocks whose first layer is a LayerNorm or Linear."
        )
    sites = block_sites or BlockSites()
    attn = block_list[0].get_submodule(sites.attn) if sites.attn is not None else None
    return BackboneSpec(
        backbone_id=name,
        model=module,
        blocks=block_list,
        block_sites=sites,
        n_heads=n_heads_of(attn) if attn is not None else None,
        layout=layout,
        transform=transform or no_transform,
        preprocessing=preprocessing or {"size": list(layout.image_size), "channels": channels},
        output_kind=output_kind,  # type: ignore[arg-type]
        d_model=d_model,
    )


def _guess_d_model(module: nn.Module) -> int:
    for attr in ("embed_dim", "hidden_size", "width", "d_model"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return 0


def _d_model_from_blocks(blocks: list[nn.Module]) -> int:
    """The residual width from a block's first norm (normalized_shape) or first linear (in_features)."""
    for module in blocks[0].modules():
        if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and module.normalized_shape:
            return int(module.normalized_shape[-1])
        if isinstance(module, nn.Linear):
            return int(module.in_features)
    return 0


def _check_transform(transform: Any, layout: TokenLayout, channels: int) -> None:
    """Run ``transform`` on one blank image and check it honours the contract."""
    from PIL import Image

    if not callable(transform):
        raise UnknownBackboneError(
            f"transform must be callable (PIL image -> tensor), got {type(transform).__name__}"
        )
    height, width = layout.image_size
    blank = Image.new("L" if channels == 1 else "RGB", (width, height), 128)
    try:
        out = transform(blank)
    except Exception as exc:
        raise UnknownBackboneError(f"transform failed on a blank {width}x{height} PIL image: {exc}") from exc
    if (
        not isinstance(out, torch.Tensor)
        or not out.is_floating_point()
        or tuple(out.shape)
        != (
            channels,
            height,
            width,
        )
    ):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UnknownBackboneError(
            f"transform must return a float tensor ({channels}, {height}, {width}) for one PIL image "
            f"(layout.image_size {layout.image_size}); got {got}."
        )
