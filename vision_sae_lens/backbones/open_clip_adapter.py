"""open_clip image towers as a BackboneSpec: native ViTs and towers that wrap a timm trunk (SigLIP, EVA).

Only the image tower is built or kept: random weights build it alone (the same weights as inside the
full CLIP for the same seed); a pretrained tag or weights file builds it alone and loads the
checkpoint's ``visual.*`` entries (memory-mapped, so the text tower's are never read), and only a
layout that needs open_clip's own converting loader builds the full CLIP, of which the ``visual`` is
kept. Neither recording nor the store fingerprint spends memory or time on weights that never touch
an image.
"""

from __future__ import annotations

import pickle
from typing import Any

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


def load_open_clip(
    arch_and_tag: str, *, pretrained: bool, weights: str | None = None, **kwargs: Any
) -> BackboneSpec:
    """Create ``open_clip:ARCH[/TAG]`` with open_clip's loader; ``weights`` is a local weights file
    (the id is then ``open_clip:ARCH``, without the path)."""
    import open_clip

    schema = arch_and_tag.startswith(("hf-hub:", "local-dir:"))
    # A schema id carries a repo or a path, whose "/" is not the ARCH/TAG separator.
    arch, _, tag = (arch_and_tag, "", "") if schema else arch_and_tag.partition("/")
    if weights is not None:
        tag, arch_and_tag = weights, arch
    if not arch.startswith(("hf-hub:", "local-dir:")) and arch not in open_clip.list_models():
        raise UnknownBackboneError(
            f"open_clip has no architecture {arch!r}.{close_matches(arch, open_clip.list_models())} "
            "List them with open_clip.list_models()."
        )
    if pretrained and not tag and not arch.startswith(("hf-hub:", "local-dir:")):
        raise UnknownBackboneError(
            f"open_clip:{arch} needs a pretrained tag (e.g. open_clip:{arch}/openai); "
            f"known tags: {', '.join(t for a, t in open_clip.list_pretrained() if a == arch) or 'none'}; "
            "or pass pretrained=False for random weights."
        )
    backbone_id = f"open_clip:{arch_and_tag}"
    built_in = not kwargs and not arch.startswith(("hf-hub:", "local-dir:"))
    if built_in:
        if not pretrained or weights is not None:
            tower = _tower_alone(arch, weights if pretrained else None)
        else:
            tower = _tagged_tower_alone(arch, tag)
        if tower is not None:
            return open_clip_spec(tower, backbone_id=backbone_id)
    if not pretrained and arch.startswith(("hf-hub:", "local-dir:")):
        kwargs = {
            "load_weights": False,
            **kwargs,
        }  # these schemas load the folder's weights unless told not to
    model, _, preprocess = open_clip.create_model_and_transforms(
        arch, pretrained=(tag or None) if pretrained else None, **kwargs
    )
    return open_clip_spec(ImageTower(model.visual), preprocess=preprocess, backbone_id=backbone_id)


def _tagged_tower_alone(arch: str, tag: str) -> ImageTower | None:
    """The image tower of ``open_clip.create_model(arch, pretrained=tag)``, built and loaded alone from the
    tag's checkpoint file (open_clip's own download / cache) with the tag's preprocessing. None when the
    tag is unknown, its file cannot be fetched or is in a layout only open_clip's loader converts (an
    old TorchScript archive, a resized position embedding): the full loader then runs, or says why not."""
    import open_clip

    pretrained_cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not pretrained_cfg:
        return None
    try:
        path = open_clip.download_pretrained(pretrained_cfg)
    except Exception:  # offline, missing: open_clip's create_model raises its own, clearer error
        return None
    if not path:
        return None
    try:
        return _tower_alone(arch, path, pretrained_cfg)
    except (RuntimeError, pickle.UnpicklingError):  # not a plain state dict (e.g. TorchScript)
        return None


def _tower_alone(arch: str, weights: str | None, pretrained_cfg: dict | None = None) -> ImageTower | None:
    """The image tower built alone (random, or loaded from the ``visual.*`` entries of a local open_clip
    state dict); None when the file is in another layout, which open_clip's full loader then converts."""
    from vision_sae_lens.compat import build_open_clip_visual

    tower = ImageTower(build_open_clip_visual(arch, pretrained_cfg))
    if weights is None:
        return tower
    state = _read_state_dict(weights)
    visual = {k: v for k, v in state.items() if k.startswith("visual.")}
    del state  # the text tower's tensors are freed before anything else is allocated
    if not visual:
        return None
    try:
        tower.load_state_dict(visual, strict=True)
    except RuntimeError:  # other shapes (e.g. a resized position embedding): open_clip's loader adapts
        return None
    return tower


def _read_state_dict(path: str) -> dict[str, Any]:
    """The checkpoint's tensors, memory-mapped where the format allows: the text tower's entries are
    then never read into memory, only the image tower's when they are copied into it."""
    import zipfile

    import torch

    if str(path).endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as f:
            names = [k for k in f.keys() if k.startswith(("visual.", "module.visual."))]  # noqa: SIM118 (no __iter__)
            state: Any = {k: f.get_tensor(k) for k in names}
    else:
        # torch.save's zip format can be memory-mapped; the legacy format cannot
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        return {}
    if state and next(iter(state)).startswith("module."):  # saved from DistributedDataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


class ImageTower(nn.Module):
    """An open_clip image tower on its own, with CLIP's ``encode_image``; holding it keeps no text tower."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def encode_image(self, image, normalize: bool = False):
        """CLIP's image embedding (``open_clip.CLIP.encode_image``)."""
        features = self.visual(image)
        return nn.functional.normalize(features, dim=-1) if normalize else features

    def forward(self, image):
        """The image embedding."""
        return self.encode_image(image)


def open_clip_spec(model: nn.Module, *, preprocess: Any = None, backbone_id: str) -> BackboneSpec:
    """Describe an open_clip CLIP model (its ``visual`` tower); ``preprocess`` defaults to open_clip's eval transform."""
    import open_clip

    visual: Any = model.visual  # open_clip's VisionTransformer or TimmModel (typed loosely by torch)
    if preprocess is None:
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        preprocess = open_clip.image_transform(
            visual.image_size,
            is_train=False,
            mean=cfg.get("mean"),
            std=cfg.get("std"),
            resize_mode=cfg.get("resize_mode"),
            interpolation=cfg.get("interpolation"),
        )
    if hasattr(visual, "trunk"):
        from vision_sae_lens.backbones.timm_adapter import timm_spec

        spec = timm_spec(visual.trunk, backbone_id=backbone_id)
        spec.final_norm = (
            None if not isinstance(getattr(visual.trunk, "norm", None), nn.Module) else spec.final_norm
        )
        spec.readout = None  # the tower's own head (projection) follows the trunk's pooling
    elif hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
        spec = _native_spec(visual, backbone_id)
    else:
        raise UnknownBackboneError(
            f"unsupported open_clip image tower {type(visual).__name__} (not a ViT); "
            "only ViT towers (native or timm trunks) can be hooked."
        )
    spec.model = model
    spec.transform = preprocess
    spec.preprocessing = _describe(visual, spec.layout)
    spec.call = lambda m, pixels, **kw: m.encode_image(pixels, **kw)
    spec.output_tensor = lambda out: out
    spec.output_kind = "embedding"
    spec.pooled = ModuleSite(visual)
    return spec


def _native_spec(visual: Any, backbone_id: str) -> BackboneSpec:
    blocks = list(visual.transformer.resblocks)
    if not getattr(visual.transformer, "batch_first", True):
        raise UnknownBackboneError(
            "sequence-first open_clip transformers are not supported; upgrade open_clip"
        )
    has_cls = getattr(visual, "class_embedding", None) is not None
    layout = TokenLayout(
        image_size=_pair(visual.image_size), patch_size=_pair(visual.patch_size), has_cls=has_cls
    )
    mlp = blocks[0].mlp
    ln_pre = getattr(visual, "ln_pre", None)
    pre_norm = ln_pre if isinstance(ln_pre, nn.Module) and not isinstance(ln_pre, nn.Identity) else None
    tokens_normed = getattr(visual, "attn_pool", None) is None and not getattr(
        visual, "final_ln_after_pool", False
    )
    return BackboneSpec(
        backbone_id=backbone_id,
        model=visual,
        blocks=blocks,
        block_sites=BlockSites(
            attn_out="ls_1",
            mlp_out="ls_2",
            resid_mid="ln_2",
            mlp_post="mlp.gelu" if hasattr(mlp, "gelu") else None,
            mlp_in="mlp",
            attn="attn",
            ln1="ln_1",
            ln2="ln_2",
            fc1="mlp.c_fc" if isinstance(getattr(mlp, "c_fc", None), nn.Linear) else None,
            fc2="mlp.c_proj" if isinstance(getattr(mlp, "c_proj", None), nn.Linear) else None,
            ls1="ls_1",
            ls2="ls_2",
        ),
        layout=layout,
        transform=lambda img: img,
        preprocessing={},
        pos_embed=None if pre_norm is not None else _pos_embed(visual, layout),
        pre_norm=pre_norm,
        final_norm=ModuleSite(visual.ln_post) if tokens_normed else None,
        readout=_readout(visual, layout) if tokens_normed else None,
        d_model=int(visual.transformer.width),
        d_mlp=int(mlp.c_fc.out_features) if hasattr(mlp, "c_fc") else None,
        n_heads=n_heads_of(blocks[0].attn),
    )


def _pos_embed(visual: Any, layout: TokenLayout) -> PositionEmbedding | None:
    pos = getattr(visual, "positional_embedding", None)
    if not isinstance(pos, torch.Tensor) or pos.shape[0] != layout.n_tokens:
        return None
    return PositionEmbedding(weight=lambda: visual.positional_embedding, token_index=range(layout.n_tokens))


def _readout(visual: Any, layout: TokenLayout) -> HeadReadout | None:
    """``pooled @ proj`` of the CLS token ('tok') or the mean of the patches ('avg')."""
    pool = getattr(visual, "pool_type", "tok")
    if getattr(visual, "attn_pool", None) is not None or pool not in ("tok", "avg"):
        return None
    if not isinstance(getattr(visual, "proj", None), torch.Tensor):
        return None
    tokens = range(0, 1) if pool == "tok" else range(layout.n_prefix, layout.n_tokens)
    return HeadReadout(linear=lambda: (visual.proj.T, None), token_index=tokens)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _describe(visual: nn.Module, layout: TokenLayout) -> dict[str, Any]:
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    mean = cfg.get("mean") or getattr(visual, "image_mean", None) or open_clip_default("mean")
    std = cfg.get("std") or getattr(visual, "image_std", None) or open_clip_default("std")
    return {
        "library": "open_clip",
        "size": list(layout.image_size),
        "resize": list(layout.image_size),
        "crop": "center",
        "resize_mode": cfg.get("resize_mode", "shortest"),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "mean": list(mean),
        "std": list(std),
        "channels": 3,
    }


def open_clip_default(which: str) -> tuple[float, ...]:
    """OpenAI CLIP normalisation, open_clip's default."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return OPENAI_DATASET_MEAN if which == "mean" else OPENAI_DATASET_STD
