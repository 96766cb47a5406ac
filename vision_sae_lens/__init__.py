"""vision_sae_lens: SAELens for vision transformers.

Hooked timm / open_clip / transformers ViTs with SAELens' SAE splicing API (``HookedSAEViT``),
activation stores (``cache_activations``, ``ActivationStore``), SAE training through SAELens
(``train_sae``), Hub releases (``push_to_hub``, importers) and image analysis (``analysis``).

Importing the package registers the vision releases with SAELens, so
``SAE.from_pretrained(release="saev-clip-vit-b-16-in1k", sae_id=...)`` works right after it.
"""

from vision_sae_lens import analysis
from vision_sae_lens.backbones import HookedSAEViT, TokenLayout, list_backbones
from vision_sae_lens.data import open_images
from vision_sae_lens.hub import (
    import_prisma,
    import_saev,
    list_vision_releases,
    load_saev_checkpoint,
    push_to_hub,
    register_vision_releases,
)
from vision_sae_lens.metadata import VisionFacts, apply_vision_facts, vision_facts_of
from vision_sae_lens.store import ActivationStore, StoreWriter, cache_activations
from vision_sae_lens.train import TrainConfig, evaluate_sae, train_sae

__version__ = "0.1.0"

__all__ = [
    "HookedSAEViT",
    "TokenLayout",
    "list_backbones",
    "open_images",
    "cache_activations",
    "ActivationStore",
    "StoreWriter",
    "TrainConfig",
    "train_sae",
    "evaluate_sae",
    "push_to_hub",
    "list_vision_releases",
    "register_vision_releases",
    "import_saev",
    "load_saev_checkpoint",
    "import_prisma",
    "analysis",
    "VisionFacts",
    "apply_vision_facts",
    "vision_facts_of",
    "__version__",
]

register_vision_releases()
