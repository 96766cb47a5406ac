"""The embedded demo backbone: a 4-block timm ViT trained on the shipped MNIST digits.

The weights live in ``assets/mnist_vit.safetensors`` (fp16) together with everything needed to rebuild
the model: the timm model name and kwargs, the normalisation it was trained with, the seed, the split
and the measured test accuracy (``scripts/train_demo_backbone.py`` writes them). ``demo_backbone()``
returns a plain timm ``VisionTransformer`` whose ``pretrained_cfg`` makes timm's own
``create_transform(**resolve_data_config(model=model))`` reproduce the training input for PIL "L" digits.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch import nn

DEMO_BACKBONE_ID = "demo:mnist-vit"
WEIGHTS_FILE = "mnist_vit.safetensors"
ASSETS_DIR = Path(__file__).resolve().parent / "assets"


def demo_backbone(*, pretrained: bool = True) -> nn.Module:
    """The demo timm ViT in eval mode and float32: trained weights, or timm's random init if ``pretrained=False``.

    ``model.pretrained_cfg`` describes its preprocessing (input (1, 28, 28), the training mean/std,
    crop_pct 1.0, bilinear), so ``timm.data.resolve_data_config(model=model)`` gives the right transform.
    """
    import timm

    info = demo_backbone_info()
    model = timm.create_model(info["model_name"], pretrained=False, **info["model_kwargs"])
    if pretrained:
        from safetensors.torch import load_file

        state = load_file(str(_weights_path()))
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model = model.float().eval()
    # timm reads these plain attributes (create_transform, resolve_data_config), as its own builder sets them.
    cfg = _pretrained_cfg(model, info)
    model.pretrained_cfg = cfg  # type: ignore[assignment]  # nn.Module.__setattr__ is typed Tensor | Module, yet keeps any value
    model.default_cfg = cfg  # type: ignore[assignment]  # nn.Module.__setattr__ is typed Tensor | Module, yet keeps any value
    return model


def demo_backbone_info() -> dict[str, Any]:
    """What the weights file records: model name and kwargs, seed, split, mean/std, accuracy, script, versions.

    JSON-encoded fields are decoded; numbers are numbers. Returns a fresh copy each call.
    """
    return copy.deepcopy(_read_info())


@lru_cache(maxsize=1)
def _read_info() -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(_weights_path()), framework="pt") as f:
        raw = dict(f.metadata() or {})
    missing = {"model_name", "model_kwargs", "mean", "std", "test_accuracy"} - raw.keys()
    if missing:
        raise ValueError(
            f"{WEIGHTS_FILE} lacks metadata {sorted(missing)}; regenerate it with scripts/train_demo_backbone.py"
        )
    info: dict[str, Any] = {"backbone_id": DEMO_BACKBONE_ID, "weights_file": WEIGHTS_FILE}
    for key, value in raw.items():
        if key in {"model_kwargs", "split", "mean", "std", "preprocessing"}:
            info[key] = json.loads(value)
        elif key in {"seed", "epochs", "batch_size", "threads"}:
            info[key] = int(value)
        elif key in {"test_accuracy", "train_accuracy", "training_seconds", "lr"}:
            info[key] = float(value)
        else:
            info[key] = value
    return info


def _weights_path() -> Path:
    path = ASSETS_DIR / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"the demo backbone weights are missing at {path}; reinstall vision_sae_lens or regenerate them "
            "with `python scripts/train_demo_backbone.py`"
        )
    return path


def _pretrained_cfg(model: nn.Module, info: dict[str, Any]) -> dict[str, Any]:
    kwargs = info["model_kwargs"]
    size = int(kwargs["img_size"])
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    # Drop the ImageNet-era entries of the architecture's config: nothing here comes from the Hub.
    for key in ("hf_hub_id", "url", "file", "test_input_size", "test_crop_pct", "license", "tag"):
        cfg.pop(key, None)
    cfg.update(
        architecture=info["model_name"],
        input_size=(int(kwargs["in_chans"]), size, size),
        mean=tuple(float(m) for m in info["mean"]),
        std=tuple(float(s) for s in info["std"]),
        crop_pct=1.0,
        crop_mode="center",
        interpolation="bilinear",
        num_classes=int(kwargs["num_classes"]),
        first_conv="patch_embed.proj",
        classifier="head",
        label_names=[str(d) for d in range(int(kwargs["num_classes"]))],
        source=DEMO_BACKBONE_ID,
    )
    return cfg
