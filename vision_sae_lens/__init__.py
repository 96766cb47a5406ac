"""vision_sae_lens: SAELens for vision transformers.

Hooked timm / open_clip / transformers ViTs with SAELens' SAE splicing API (``HookedSAEViT``),
activation stores (``cache_activations``, ``ActivationStore``), SAE training through SAELens
(``train_sae``), Hub releases (``push_to_hub``, importers) and image analysis (``analysis``).

Importing the package registers the vision releases with SAELens, so
``SAE.from_pretrained(release="saev-clip-vit-b-16-in1k", sae_id=...)`` works right after it.
Both stay cheap: every public name loads its stage on first use (as huggingface_hub does), and the
releases are put into SAELens' directory only once SAELens itself is imported.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from vision_sae_lens._lazy import lazy_exports
from vision_sae_lens.hub.wiring import register_when_sae_lens_loads

try:
    __version__ = version("vision_sae_lens")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"

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
    "benchmark",
    "VisionFacts",
    "apply_vision_facts",
    "vision_facts_of",
    "__version__",
]

if TYPE_CHECKING:  # static checkers and IDEs see the real names
    from vision_sae_lens import analysis, benchmark
    from vision_sae_lens.backbones.hooked import HookedSAEViT
    from vision_sae_lens.backbones.registry import list_backbones
    from vision_sae_lens.data.sources import open_images
    from vision_sae_lens.hub.prisma import import_prisma
    from vision_sae_lens.hub.publish import push_to_hub
    from vision_sae_lens.hub.registry import list_vision_releases
    from vision_sae_lens.hub.saev import load_saev_checkpoint
    from vision_sae_lens.hub.saev_hub import import_saev
    from vision_sae_lens.hub.wiring import register_vision_releases
    from vision_sae_lens.layout import TokenLayout
    from vision_sae_lens.metadata import VisionFacts, apply_vision_facts, vision_facts_of
    from vision_sae_lens.store.reader import ActivationStore
    from vision_sae_lens.store.recorder import cache_activations
    from vision_sae_lens.store.writer import StoreWriter
    from vision_sae_lens.train.config import TrainConfig
    from vision_sae_lens.train.evaluate import evaluate_sae
    from vision_sae_lens.train.trainer import train_sae

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "HookedSAEViT": "vision_sae_lens.backbones.hooked",
        "TokenLayout": "vision_sae_lens.layout",
        "list_backbones": "vision_sae_lens.backbones.registry",
        "open_images": "vision_sae_lens.data.sources",
        "cache_activations": "vision_sae_lens.store.recorder",
        "ActivationStore": "vision_sae_lens.store.reader",
        "StoreWriter": "vision_sae_lens.store.writer",
        "TrainConfig": "vision_sae_lens.train.config",
        "train_sae": "vision_sae_lens.train.trainer",
        "evaluate_sae": "vision_sae_lens.train.evaluate",
        "push_to_hub": "vision_sae_lens.hub.publish",
        "list_vision_releases": "vision_sae_lens.hub.registry",
        "register_vision_releases": "vision_sae_lens.hub.wiring",
        "import_saev": "vision_sae_lens.hub.saev_hub",
        "load_saev_checkpoint": "vision_sae_lens.hub.saev",
        "import_prisma": "vision_sae_lens.hub.prisma",
        "analysis": "vision_sae_lens.analysis",
        "benchmark": "vision_sae_lens.benchmark",
        "VisionFacts": "vision_sae_lens.metadata",
        "apply_vision_facts": "vision_sae_lens.metadata",
        "vision_facts_of": "vision_sae_lens.metadata",
    },
)

register_when_sae_lens_loads()
