"""The embedded demo: real MNIST digits and a small timm ViT trained on them, shipped in the package.

``load_demo_digits(split)`` gives the images (PIL "L", 28x28, with labels), ``demo_backbone()`` the
timm model (``demo:mnist-vit``), ``demo_backbone_info()`` what its weights file records (accuracy, seed, ...).
Both assets are produced by ``scripts/train_demo_backbone.py`` (see docs/demo.md).
"""

from vision_sae_lens.demo.backbone import DEMO_BACKBONE_ID, demo_backbone, demo_backbone_info
from vision_sae_lens.demo.digits import DemoDigits, load_demo_digits

__all__ = ["DEMO_BACKBONE_ID", "DemoDigits", "demo_backbone", "demo_backbone_info", "load_demo_digits"]
