"""The embedded demo: the whole pipeline, offline, on real MNIST digits and a small timm ViT trained on them.

This stage only orchestrates (``run_demo``, ``vision-sae-lens demo``). The assets belong to the stages
that use them: the digits to ``data/`` (``demo:mnist`` images, :mod:`vision_sae_lens.data.demo_digits`),
the ViT to ``backbones/`` (``demo:mnist-vit``, :mod:`vision_sae_lens.backbones.mnist_vit`); both are
produced by ``scripts/train_demo_backbone.py`` (see docs/demo.md) and re-exported here for convenience.
"""

from typing import TYPE_CHECKING

from vision_sae_lens._lazy import lazy_exports

__all__ = [
    "DEMO_BACKBONE_ID",
    "DemoDigits",
    "demo_backbone",
    "demo_backbone_info",
    "load_demo_digits",
]

if TYPE_CHECKING:
    from vision_sae_lens.backbones.mnist_vit import DEMO_BACKBONE_ID, demo_backbone, demo_backbone_info
    from vision_sae_lens.data.demo_digits import DemoDigits, load_demo_digits

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "DEMO_BACKBONE_ID": "vision_sae_lens.backbones.mnist_vit",
        "DemoDigits": "vision_sae_lens.data.demo_digits",
        "demo_backbone": "vision_sae_lens.backbones.mnist_vit",
        "demo_backbone_info": "vision_sae_lens.backbones.mnist_vit",
        "load_demo_digits": "vision_sae_lens.data.demo_digits",
    },
)
