"""vision_sae_lens: SAELens for vision transformers.

Hooked timm / open_clip / transformers ViTs with SAELens' SAE splicing API, activation stores,
SAE training through SAELens, Hub releases, and analysis tools for images.
"""

from vision_sae_lens.backbones import HookedSAEViT, TokenLayout, list_backbones
from vision_sae_lens.metadata import VisionFacts, apply_vision_facts, vision_facts_of

__version__ = "0.1.0"

__all__ = [
    "HookedSAEViT",
    "TokenLayout",
    "list_backbones",
    "VisionFacts",
    "apply_vision_facts",
    "vision_facts_of",
    "__version__",
]
