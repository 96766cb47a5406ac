"""The benchmark backbone ``demo:shapes-vit``: a 4-block timm ViT trained on the synthetic shapes world.

It predicts, for a 32x32 RGB image of ``synthetic:shapes``, which factors are present (one logit per
factor of :data:`vision_sae_lens.data.synthetic.FACTOR_NAMES`, multi-label). The fp16 weights ship in
``assets/shapes_vit.safetensors`` with what is needed to rebuild the model and what it measured
(``scripts/train_shapes_backbone.py`` writes them); ``shapes_backbone()`` returns a plain timm
``VisionTransformer`` whose ``pretrained_cfg`` makes timm's eval transform reproduce its training input.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch import nn

SHAPES_BACKBONE_ID = "demo:shapes-vit"
WEIGHTS_FILE = "shapes_vit.safetensors"
ASSETS_DIR = Path(__file__).resolve().parent / "assets"


def shapes_backbone(*, pretrained: bool = True) -> nn.Module:
    """The shapes ViT in eval mode and float32: trained weights, or timm's random init if ``pretrained=False``."""
    import timm

    info = shapes_backbone_info()
    model = timm.create_model(info["model_name"], pretrained=False, **info["model_kwargs"])
    if pretrained:
        from safetensors.torch import load_file

        state = load_file(str(_weights_path()))
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model = model.float().eval()
    kwargs = info["model_kwargs"]
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    for key in ("hf_hub_id", "url", "file", "test_input_size", "test_crop_pct", "license", "tag"):
        cfg.pop(key, None)
    cfg.update(
        architecture=info["model_name"],
        input_size=(int(kwargs["in_chans"]), int(kwargs["img_size"]), int(kwargs["img_size"])),
        mean=tuple(float(m) for m in info["mean"]),
        std=tuple(float(s) for s in info["std"]),
        crop_pct=1.0,
        crop_mode="center",
        interpolation="bilinear",
        num_classes=int(kwargs["num_classes"]),
        first_conv="patch_embed.proj",
        classifier="head",
        label_names=list(info["label_names"]),
        source=SHAPES_BACKBONE_ID,
    )
    # timm reads these plain attributes (create_transform, resolve_data_config), as its own builder sets them.
    model.pretrained_cfg = cfg  # type: ignore[assignment]  # nn.Module.__setattr__ is typed Tensor | Module, yet keeps any value
    model.default_cfg = cfg  # type: ignore[assignment]  # nn.Module.__setattr__ is typed Tensor | Module, yet keeps any value
    return model


def shapes_backbone_info() -> dict[str, Any]:
    """What the weights file records (model name and kwargs, factor names, seed, mean/std, accuracies)."""
    return copy.deepcopy(_read_info())


@lru_cache(maxsize=1)
def _read_info() -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(_weights_path()), framework="pt") as f:
        raw = dict(f.metadata() or {})
    missing = {"model_name", "model_kwargs", "mean", "std", "label_names", "test_accuracy"} - raw.keys()
    if missing:
        raise ValueError(
            f"{WEIGHTS_FILE} lacks metadata {sorted(missing)}; regenerate it with scripts/train_shapes_backbone.py"
        )
    info: dict[str, Any] = {"backbone_id": SHAPES_BACKBONE_ID, "weights_file": WEIGHTS_FILE}
    for key, value in raw.items():
        if key in {"model_kwargs", "split", "mean", "std", "label_names"}:
            info[key] = json.loads(value)
        elif key in {"seed", "epochs", "batch_size", "threads"}:
            info[key] = int(value)
        elif key in {"test_accuracy", "test_exact_match", "train_accuracy", "training_seconds", "lr"}:
            info[key] = float(value)
        else:
            info[key] = value
    return info


def _weights_path() -> Path:
    path = ASSETS_DIR / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"the shapes backbone weights are missing at {path}; reinstall vision_sae_lens or regenerate them "
            "with `python scripts/train_shapes_backbone.py`"
        )
    return path
