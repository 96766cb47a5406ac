"""The embedded demo: real MNIST digits and a small timm ViT trained on them, shipped in the package.

``load_demo_digits(split)`` gives the images (PIL "L", 28x28, with labels), ``demo_backbone()`` the
timm model (``demo:mnist-vit``), ``demo_backbone_info()`` what its weights file records (accuracy, seed, ...).
Both assets are produced by ``scripts/train_demo_backbone.py`` (see docs/demo.md).
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
    from vision_sae_lens.demo.backbone import DEMO_BACKBONE_ID, demo_backbone, demo_backbone_info
    from vision_sae_lens.demo.digits import DemoDigits, load_demo_digits

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "DEMO_BACKBONE_ID": "vision_sae_lens.demo.backbone",
        "DemoDigits": "vision_sae_lens.demo.digits",
        "demo_backbone": "vision_sae_lens.demo.backbone",
        "demo_backbone_info": "vision_sae_lens.demo.backbone",
        "load_demo_digits": "vision_sae_lens.demo.digits",
    },
)
