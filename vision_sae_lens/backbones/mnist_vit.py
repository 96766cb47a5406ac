"""The embedded demo backbone: a 4-block timm ViT trained on the shipped MNIST digits.

The weights live in ``assets/mnist_vit.safetensors`` (fp16) together with everything needed to rebuild
the model: the timm model name and kwargs, the normalisation it was trained with, the seed, the split
and the measured test accuracy (``scripts/train_demo_backbone.py`` writes them). ``demo_backbone()``
returns a plain timm ``VisionTransformer`` whose ``pretrained_cfg`` makes timm's own
``create_transform(**resolve_data_config(model=model))`` reproduce the training input for PIL "L" digits.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from torch import nn

from vision_sae_lens.backbones.embedded import ASSETS_DIR, build_embedded_vit, read_weights_info, weights_path

DEMO_BACKBONE_ID = "demo:mnist-vit"
WEIGHTS_FILE = "mnist_vit.safetensors"
_SCRIPT = "scripts/train_demo_backbone.py"

__all__ = ["ASSETS_DIR", "DEMO_BACKBONE_ID", "WEIGHTS_FILE", "demo_backbone", "demo_backbone_info"]


def demo_backbone(*, pretrained: bool = True) -> nn.Module:
    """The demo timm ViT in eval mode and float32: trained weights, or timm's random init if ``pretrained=False``.

    ``model.pretrained_cfg`` describes its preprocessing (input (1, 28, 28), the training mean/std,
    crop_pct 1.0, bilinear), so ``timm.data.resolve_data_config(model=model)`` gives the right transform.
    """
    info = demo_backbone_info()
    labels = [str(d) for d in range(int(info["model_kwargs"]["num_classes"]))]
    weights = weights_path(WEIGHTS_FILE, script=_SCRIPT) if pretrained else None
    return build_embedded_vit(info, weights, label_names=labels, source=DEMO_BACKBONE_ID)


def demo_backbone_info() -> dict[str, Any]:
    """What the weights file records: model name and kwargs, seed, split, mean/std, accuracy, script, versions.

    JSON-encoded fields are decoded; numbers are numbers. Returns a fresh copy each call.
    """
    return copy.deepcopy(_read_info())


@lru_cache(maxsize=1)
def _read_info() -> dict[str, Any]:
    required = {"model_name", "model_kwargs", "mean", "std", "test_accuracy"}
    return read_weights_info(WEIGHTS_FILE, backbone_id=DEMO_BACKBONE_ID, required=required, script=_SCRIPT)
