"""The embedded ViTs' common loader: a timm ViT rebuilt from a shipped safetensors file's own metadata.

Each embedded backbone (``demo:mnist-vit``, ``demo:shapes-vit``, and the weights of the open_clip model
``demo:shapes-clip``) ships fp16 weights in ``assets/`` with
the timm model name and kwargs, the normalisation it was trained with and what it measured, written by
its training script. :func:`build_embedded_vit` returns a plain timm ``VisionTransformer`` whose
``pretrained_cfg`` makes timm's own ``create_transform(**resolve_data_config(model=model))`` reproduce the
training input; :func:`read_weights_info` decodes the metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from vision_sae_lens.errors import ConfigError, DataFileNotFoundError

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
_JSON_KEYS = {
    "model_kwargs", "model_cfg", "split", "mean", "std", "preprocessing", "label_names", "concept_phrases",
    "concept_auroc_per_factor",
}  # fmt: skip
_INT_KEYS = {"seed", "epochs", "batch_size", "threads", "train_images"}
_FLOAT_KEYS = {
    "test_accuracy", "test_exact_match", "train_accuracy", "training_seconds", "lr", "image_to_text_top1",
    "text_to_image_top1", "concept_auroc", "concept_auroc_min",
}  # fmt: skip
# The architecture's ImageNet-era config entries: nothing of an embedded model comes from the Hub.
_HUB_KEYS = ("hf_hub_id", "url", "file", "test_input_size", "test_crop_pct", "license", "tag")


def weights_path(weights_file: str, *, script: str) -> Path:
    """The shipped weights file (FileNotFoundError naming the script that regenerates it)."""
    path = ASSETS_DIR / weights_file
    if not path.is_file():
        raise DataFileNotFoundError(
            f"the embedded backbone weights are missing at {path}; reinstall vision_sae_lens or regenerate "
            f"them with `python {script}`"
        )
    return path


def read_weights_info(
    weights_file: str, *, backbone_id: str, required: set[str], script: str
) -> dict[str, Any]:
    """The metadata of a shipped weights file, JSON fields decoded and numbers as numbers."""
    from safetensors import safe_open

    with safe_open(str(weights_path(weights_file, script=script)), framework="pt") as f:
        raw = dict(f.metadata() or {})
    missing = required - raw.keys()
    if missing:
        raise ConfigError(f"{weights_file} lacks metadata {sorted(missing)}; regenerate it with {script}")
    info: dict[str, Any] = {"backbone_id": backbone_id, "weights_file": weights_file}
    for key, value in raw.items():
        if key in _JSON_KEYS:
            info[key] = json.loads(value)
        elif key in _INT_KEYS:
            info[key] = int(value)
        elif key in _FLOAT_KEYS:
            info[key] = float(value)
        else:
            info[key] = value
    return info


def build_embedded_vit(
    info: dict[str, Any], weights: Path | None, *, label_names: list[str], source: str
) -> nn.Module:
    """The timm model ``info`` describes, in eval mode and float32, with ``weights`` loaded (None: random init)."""
    import timm

    model = timm.create_model(info["model_name"], pretrained=False, **info["model_kwargs"])
    if weights is not None:
        from safetensors.torch import load_file

        state = load_file(str(weights))
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model = model.float().eval()
    kwargs = info["model_kwargs"]
    size = int(kwargs["img_size"])
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    for key in _HUB_KEYS:
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
        label_names=label_names,
        source=source,
    )
    # timm reads these plain attributes (create_transform, resolve_data_config), as its own builder sets them.
    model.pretrained_cfg = cfg  # type: ignore[assignment]  # nn.Module.__setattr__ is typed Tensor | Module, yet keeps any value
    model.default_cfg = cfg  # type: ignore[assignment]  # nn.Module.__setattr__ is typed Tensor | Module, yet keeps any value
    return model
