"""The benchmark backbone ``demo:shapes-vit``: a 4-block timm ViT trained on the synthetic shapes world.

It predicts, for a 32x32 RGB image of ``synthetic:shapes``, which factors are present (one logit per
factor of :data:`vision_sae_lens.data.synthetic.FACTOR_NAMES`, multi-label). The fp16 weights ship in
``assets/shapes_vit.safetensors`` with what is needed to rebuild the model and what it measured
(``scripts/train_shapes_backbone.py`` writes them); ``shapes_backbone()`` returns a plain timm
``VisionTransformer`` whose ``pretrained_cfg`` makes timm's eval transform reproduce its training input.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from torch import nn

from vision_sae_lens.backbones.embedded import ASSETS_DIR, build_embedded_vit, read_weights_info, weights_path

SHAPES_BACKBONE_ID = "demo:shapes-vit"
WEIGHTS_FILE = "shapes_vit.safetensors"
_SCRIPT = "scripts/train_shapes_backbone.py"

__all__ = ["ASSETS_DIR", "SHAPES_BACKBONE_ID", "WEIGHTS_FILE", "shapes_backbone", "shapes_backbone_info"]


def shapes_backbone(*, pretrained: bool = True) -> nn.Module:
    """The shapes ViT in eval mode and float32: trained weights, or timm's random init if ``pretrained=False``."""
    info = shapes_backbone_info()
    weights = weights_path(WEIGHTS_FILE, script=_SCRIPT) if pretrained else None
    return build_embedded_vit(info, weights, label_names=list(info["label_names"]), source=SHAPES_BACKBONE_ID)


def shapes_backbone_info() -> dict[str, Any]:
    """What the weights file records (model name and kwargs, factor names, seed, mean/std, accuracies)."""
    return copy.deepcopy(_read_info())


@lru_cache(maxsize=1)
def _read_info() -> dict[str, Any]:
    required = {"model_name", "model_kwargs", "mean", "std", "label_names", "test_accuracy"}
    return read_weights_info(WEIGHTS_FILE, backbone_id=SHAPES_BACKBONE_ID, required=required, script=_SCRIPT)
