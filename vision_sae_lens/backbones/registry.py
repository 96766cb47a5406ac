"""Backbone ids -> BackboneSpec, and the list of supported families.

Id syntax (``library:rest``):

* ``timm:NAME`` — any timm ViT (``timm:vit_base_patch16_clip_224.openai``, ``timm:vit_small_patch14_reg4_dinov2``),
  also ``timm:local-dir:DIR`` and ``timm:hf-hub:ORG/NAME``;
* ``open_clip:ARCH/TAG`` — an open_clip model and pretrained tag (``open_clip:ViT-B-16/openai``);
* ``hf:MODEL_ID_OR_DIR`` — a transformers model (``hf:facebook/dinov2-small``, ``hf:openai/clip-vit-base-patch16``);
* ``demo:mnist-vit`` — the small MNIST ViT shipped in the package; ``demo:shapes-vit`` — the benchmark's ViT;
  ``demo:shapes-clip`` — an open_clip CLIP of the benchmark's shapes world (the offline namer of its latents);
* a local directory: saved by ``timm.models.save_for_hf`` or transformers' ``save_pretrained``.

Weights from a local file: ``weights="/path/to/file.pt"`` (CLI ``--weights PATH``) with a ``timm:`` or
``open_clip:`` architecture id, e.g. ``("open_clip:ViT-B-32", weights="ckpt.pt")``. The id stays
the architecture; ``spec.weights`` records the file's name and sha256 (never its path).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vision_sae_lens import fsutil
from vision_sae_lens.backbones.spec import BackboneSpec
from vision_sae_lens.errors import ConfigError, DataFileNotFoundError, UnknownBackboneError

PREFIXES = ("timm", "open_clip", "hf", "demo")


def load_backbone_spec(
    backbone_id: str, *, pretrained: bool = True, weights: str | Path | None = None, **kwargs: Any
) -> BackboneSpec:
    """Resolve an id to a BackboneSpec with the owning library's own loading code.

    ``weights``: a local weights file for a ``timm:`` or ``open_clip:`` architecture (see the module doc).
    The spec's ``build`` records how it was built (pretrained, random or file weights; the keyword
    arguments), so that a store recorded from it can rebuild it (:mod:`vision_sae_lens.backbones.recorded`).
    """
    spec = _load_spec(backbone_id, pretrained=pretrained, weights=weights, **kwargs)
    source = "file" if spec.weights is not None else "pretrained" if pretrained else "random-init"
    try:
        spec.build = {"weights": source, "kwargs": json.loads(json.dumps(kwargs, allow_nan=False))}
    except (TypeError, ValueError):  # a module or callable among the kwargs: it cannot be rebuilt from text
        spec.build = None
    return spec


def _load_spec(
    backbone_id: str, *, pretrained: bool, weights: str | Path | None, **kwargs: Any
) -> BackboneSpec:
    if not isinstance(backbone_id, str) or not backbone_id:
        raise UnknownBackboneError(f"a backbone id must be a non-empty string, got {backbone_id!r}")
    prefix, _, rest = backbone_id.partition(":")
    hub_or_dir = rest.startswith(("hf-hub:", "local-dir:"))
    if (
        weights is None
        and prefix == "open_clip"
        and not hub_or_dir
        and _is_weights_file(rest.partition("/")[2])
    ):
        # The older ``open_clip:ARCH/<file>`` form: same load, but the path stays out of the id.
        rest, weights = rest.partition("/")[0], rest.partition("/")[2]
    if weights is not None:
        return _load_weights_file(prefix, rest, backbone_id, weights, pretrained=pretrained, **kwargs)
    local = Path(backbone_id)
    if local.is_dir():
        return _load_local_dir(local, pretrained=pretrained, **kwargs)
    prefix, sep, rest = backbone_id.partition(":")
    if not sep or prefix not in PREFIXES or not rest:
        raise UnknownBackboneError(
            f"unknown backbone id {backbone_id!r}: use one of "
            + ", ".join(f"'{p}:...'" for p in PREFIXES)
            + " or a local directory (see list_backbones())."
        )
    if prefix == "timm":
        from vision_sae_lens.backbones.timm_adapter import load_timm

        return load_timm(rest, pretrained=pretrained, **kwargs)
    if prefix == "open_clip":
        from vision_sae_lens.backbones.open_clip_adapter import load_open_clip

        return load_open_clip(rest, pretrained=pretrained, **kwargs)
    if prefix == "hf":
        from vision_sae_lens.backbones.hf_adapter import load_hf

        return load_hf(rest, pretrained=pretrained, **kwargs)
    return _load_demo(rest, pretrained=pretrained)


def list_backbones() -> list[dict[str, str]]:
    """Supported backbone families with their id syntax, examples and site notes."""
    return [
        {
            "family": "timm",
            "id": "timm:NAME",
            "examples": "timm:vit_base_patch16_clip_224.openai, timm:vit_small_patch14_reg4_dinov2, "
            "timm:vit_base_patch16_siglip_224, timm:deit_small_patch16_224, timm:eva02_base_patch14_224",
            "sites": "all block sites; mlp.hook_post absent for SwiGLU MLPs (EVA-02)",
        },
        {
            "family": "open_clip",
            "id": "open_clip:ARCH/TAG",
            "examples": "open_clip:ViT-B-16/openai, open_clip:ViT-B-16-SigLIP/webli, open_clip:ViT-L-14/laion2b_s32b_b82k",
            "sites": "all block sites; hook_pooled is the projected image embedding",
        },
        {
            "family": "transformers",
            "id": "hf:MODEL_ID_OR_DIR",
            "examples": "hf:openai/clip-vit-base-patch16, hf:facebook/dinov2-small, hf:facebook/dinov2-with-registers-small, "
            "hf:google/siglip-base-patch16-224, hf:google/vit-base-patch16-224",
            "sites": "all block sites; no ln_final.hook_normalized for CLIP (its final norm sees only the pooled CLS)",
        },
        {
            "family": "demo",
            "id": "demo:mnist-vit | demo:shapes-vit | demo:shapes-clip",
            "examples": "demo:mnist-vit, demo:shapes-vit, demo:shapes-clip",
            "sites": "all block sites (4-block ViTs shipped in the package: 28x28 digits; the 32x32 "
            "synthetic shapes world of the benchmark, multi-label; an open_clip CLIP of that world, the "
            "offline namer of its latents)",
        },
        {
            "family": "module",
            "id": "HookedSAEViT.from_module(model, ...)",
            "examples": "your fine-tuned timm / open_clip / transformers model object, or any ViT given its blocks",
            "sites": "as its library; for other modules hook_resid_pre/hook_resid_post per block",
        },
    ]


WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def _is_weights_file(tag: str) -> bool:
    return bool(tag) and (tag.endswith(WEIGHT_SUFFIXES) or "/" in tag or Path(tag).is_file())


def _load_weights_file(
    prefix: str, rest: str, backbone_id: str, weights: str | Path, *, pretrained: bool, **kwargs: Any
) -> BackboneSpec:
    path = Path(weights).expanduser()
    if prefix not in ("timm", "open_clip") or not rest:
        raise UnknownBackboneError(
            f"weights= needs a timm: or open_clip: architecture id (e.g. 'open_clip:ViT-B-32'), got {backbone_id!r}; "
            "for transformers models save the model with save_pretrained() and pass the directory."
        )
    if not pretrained:
        raise ConfigError("weights= loads a weights file; it cannot be combined with pretrained=False")
    if not path.is_file():
        raise DataFileNotFoundError(f"backbone weights file {path} does not exist")
    if prefix == "timm":
        import timm.models

        from vision_sae_lens.backbones.timm_adapter import load_timm

        # Built at the requested shape, then loaded strictly: a fine-tuned file is used as it is (timm's
        # pretrained path would re-initialise a head whose size differs from the original config's).
        spec = load_timm(rest, pretrained=False, **kwargs)
        timm.models.load_checkpoint(spec.model, str(path), strict=True, weights_only=True)
        spec.model.eval()
    else:
        from vision_sae_lens.backbones.open_clip_adapter import load_open_clip

        spec = load_open_clip(rest.partition("/")[0], pretrained=True, weights=str(path), **kwargs)
    spec.weights = {"file": path.name, "sha256": file_sha256(path)}
    return spec


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def open_clip_alias(backbone_id: str) -> str:
    """The open_clip id an embedded image-text model stands for (``demo:shapes-clip`` ->
    ``open_clip:local-dir:<its folder>``); any other id unchanged."""
    from vision_sae_lens.backbones.shapes_clip import SHAPES_CLIP_ID, shapes_clip_open_clip_id

    return shapes_clip_open_clip_id() if backbone_id == SHAPES_CLIP_ID else backbone_id


def local_dir_family(path: Path) -> str | None:
    """Which library saved the model folder ``path``: ``open_clip``, ``timm``, ``hf`` (transformers), or None."""
    if (path / "open_clip_config.json").is_file():
        return "open_clip"
    config_file = path / "config.json"
    if not config_file.is_file():
        return None
    config = fsutil.read_json(config_file)
    return "timm" if "architecture" in config and "model_type" not in config else "hf"


def _load_local_dir(path: Path, *, pretrained: bool, **kwargs: Any) -> BackboneSpec:
    family = local_dir_family(path)
    if family == "open_clip":
        from vision_sae_lens.backbones.open_clip_adapter import load_open_clip

        return load_open_clip(f"local-dir:{path}", pretrained=pretrained, **kwargs)
    if family == "timm":
        from vision_sae_lens.backbones.timm_adapter import load_timm

        return load_timm(f"local-dir:{path}", pretrained=pretrained, **kwargs)
    if family == "hf":
        from vision_sae_lens.backbones.hf_adapter import load_hf

        return load_hf(str(path), pretrained=pretrained, **kwargs)
    raise UnknownBackboneError(
        f"{path} has no config.json or open_clip_config.json; save the model with timm.models.save_for_hf "
        "or save_pretrained(), or load it yourself and use HookedSAEViT.from_module(model)."
    )


def _load_demo(name: str, *, pretrained: bool) -> BackboneSpec:
    from vision_sae_lens.backbones.mnist_vit import DEMO_BACKBONE_ID, demo_backbone
    from vision_sae_lens.backbones.shapes_clip import SHAPES_CLIP_ID, load_shapes_clip
    from vision_sae_lens.backbones.shapes_vit import SHAPES_BACKBONE_ID, shapes_backbone
    from vision_sae_lens.backbones.timm_adapter import timm_spec

    if f"demo:{name}" == SHAPES_BACKBONE_ID:
        return timm_spec(shapes_backbone(pretrained=pretrained), backbone_id=SHAPES_BACKBONE_ID)
    if f"demo:{name}" == SHAPES_CLIP_ID:
        return load_shapes_clip(pretrained=pretrained)
    if f"demo:{name}" != DEMO_BACKBONE_ID:
        raise UnknownBackboneError(
            f"unknown demo backbone 'demo:{name}'; the shipped ones are {DEMO_BACKBONE_ID!r}, "
            f"{SHAPES_BACKBONE_ID!r} and {SHAPES_CLIP_ID!r}"
        )
    return timm_spec(demo_backbone(pretrained=pretrained), backbone_id=DEMO_BACKBONE_ID)
