"""The embedded image-text model ``demo:shapes-clip``: a small open_clip CLIP for the synthetic shapes world.

It names latents of SAEs trained on the shapes world offline, so naming can be checked against the
world's exact factors. It is an ordinary open_clip ``local-dir`` folder in ``assets/shapes_clip/``
(``open_clip_config.json``, fp16 ``open_clip_model.safetensors``, a word-level tokenizer open_clip reads
with its ``HFTokenizer``), written by ``scripts/train_shapes_clip.py``, whose safetensors metadata
records the seed, the splits and the retrieval accuracy it measured. ``demo:shapes-clip`` is an alias of
``open_clip:local-dir:<that folder>`` that keeps the folder's path out of every record (store metadata,
names.json): image and text sides load through open_clip exactly as any other open_clip model.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any

from vision_sae_lens.backbones.embedded import ASSETS_DIR, read_weights_info, weights_path
from vision_sae_lens.backbones.spec import BackboneSpec

SHAPES_CLIP_ID = "demo:shapes-clip"
FOLDER = "shapes_clip"
WEIGHTS_FILE = f"{FOLDER}/open_clip_model.safetensors"
_SCRIPT = "scripts/train_shapes_clip.py"


def shapes_clip_dir() -> Path:
    """The open_clip ``local-dir`` folder of ``demo:shapes-clip`` (FileNotFoundError naming the script)."""
    return weights_path(WEIGHTS_FILE, script=_SCRIPT).parent


def shapes_clip_open_clip_id() -> str:
    """``open_clip:local-dir:<folder>``: the id open_clip itself loads ``demo:shapes-clip`` from."""
    return f"open_clip:local-dir:{shapes_clip_dir()}"


def load_shapes_clip(*, pretrained: bool = True) -> BackboneSpec:
    """The image tower of ``demo:shapes-clip`` as a BackboneSpec (``pretrained=False``: random weights)."""
    from vision_sae_lens.backbones.open_clip_adapter import load_open_clip

    spec = load_open_clip(f"local-dir:{shapes_clip_dir()}", pretrained=pretrained)
    spec.backbone_id = SHAPES_CLIP_ID
    return spec


def shapes_clip_info() -> dict[str, Any]:
    """What the weights file records (model config, seed, splits, mean/std, retrieval accuracy, ...)."""
    return copy.deepcopy(_read_info())


@lru_cache(maxsize=1)
def _read_info() -> dict[str, Any]:
    required = {"model_cfg", "mean", "std", "image_to_text_top1", "text_to_image_top1", "concept_auroc"}
    return read_weights_info(WEIGHTS_FILE, backbone_id=SHAPES_CLIP_ID, required=required, script=_SCRIPT)


__all__ = ["ASSETS_DIR", "SHAPES_CLIP_ID", "load_shapes_clip", "shapes_clip_dir", "shapes_clip_info"]
