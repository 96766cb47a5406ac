"""Hooked vision backbones: timm, open_clip and transformers ViTs with TransformerLens hook points."""

from typing import TYPE_CHECKING

from vision_sae_lens._lazy import lazy_exports

__all__ = [
    "HookedSAEViT",
    "TokenLayout",
    "TokenSelection",
    "TOKEN_SELECTIONS",
    "list_backbones",
    "load_backbone_spec",
    "BackboneSpec",
    "BlockSites",
    "ModuleSite",
    "class_text_embeddings",
]

if TYPE_CHECKING:
    from vision_sae_lens.backbones.hooked import HookedSAEViT
    from vision_sae_lens.backbones.registry import list_backbones, load_backbone_spec
    from vision_sae_lens.backbones.spec import BackboneSpec, BlockSites, ModuleSite
    from vision_sae_lens.backbones.text_tower import class_text_embeddings
    from vision_sae_lens.layout import TOKEN_SELECTIONS, TokenLayout, TokenSelection

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "HookedSAEViT": "vision_sae_lens.backbones.hooked",
        "TokenLayout": "vision_sae_lens.layout",
        "TokenSelection": "vision_sae_lens.layout",
        "TOKEN_SELECTIONS": "vision_sae_lens.layout",
        "list_backbones": "vision_sae_lens.backbones.registry",
        "load_backbone_spec": "vision_sae_lens.backbones.registry",
        "BackboneSpec": "vision_sae_lens.backbones.spec",
        "BlockSites": "vision_sae_lens.backbones.spec",
        "ModuleSite": "vision_sae_lens.backbones.spec",
        "class_text_embeddings": "vision_sae_lens.backbones.text_tower",
    },
)
