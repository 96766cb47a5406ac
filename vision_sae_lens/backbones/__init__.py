"""Hooked vision backbones: timm, open_clip and transformers ViTs with TransformerLens hook points."""

from vision_sae_lens.backbones.hooked import HookedSAEViT
from vision_sae_lens.backbones.layout import TOKEN_SELECTIONS, TokenLayout, TokenSelection
from vision_sae_lens.backbones.registry import list_backbones, load_backbone_spec
from vision_sae_lens.backbones.spec import BackboneSpec, BlockSites, ModuleSite

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
]
