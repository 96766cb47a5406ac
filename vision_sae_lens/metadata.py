"""Vision facts stored in an SAE's own metadata (``cfg.json`` -> ``metadata``).

SAELens keeps unknown keys of ``SAEMetadata`` through save and load, provided that
``metadata.sae_lens_version`` is a 6.x version (older or missing versions make SAELens rebuild the
metadata from its LLM keys and drop ours). Everything needed to use an SAE on images without
guessing lives under the flat keys below.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import sae_lens

from vision_sae_lens.layout import Layout, RowLayout, TokenLayout, check_token_selection


@dataclass(frozen=True)
class VisionFacts:
    """What an SAE needs to know about the images and model it was trained on."""

    backbone: str
    """Backbone id, e.g. ``timm:vit_base_patch16_clip_224.openai`` (see ``list_backbones()``)."""
    hook_name: str
    """Site the SAE reads and writes, e.g. ``blocks.10.hook_resid_post``."""
    tokens: str
    """Token selection the SAE was trained on: patches, cls, registers or all."""
    layout: Layout
    """Token layout of the backbone (image size, patch size, CLS, registers), or ``RowLayout`` for an
    SAE trained on plain rows (its metadata then says ``modality: "rows"`` and holds no image keys, so
    :meth:`from_metadata` reads no vision facts back and nothing treats it as a ViT SAE)."""
    preprocessing: dict[str, Any] = field(default_factory=dict)
    """Preprocessing of the backbone (mean, std, resize, crop, interpolation)."""
    dataset: dict[str, Any] = field(default_factory=dict)
    """Description of the images the activations came from."""
    store_fingerprint: str | None = None
    """Fingerprint of the activation store the SAE was trained on."""
    training_tokens: int | None = None
    """Number of activation rows (tokens) seen in training."""
    backbone_weights_file: dict[str, str] | None = None
    """The local weights file of the backbone, ``{"file": name, "sha256": hex}`` (never its path), or None
    when the weights came from the id itself (a tag, the Hub, the package)."""
    input_normalization: dict[str, Any] | None = None
    """The input normalisation of training (``z = (x - mean) * scale``, already folded into the
    weights; see :mod:`vision_sae_lens.normalization`), or None."""

    def __post_init__(self) -> None:
        check_token_selection(self.tokens)

    def to_metadata(self) -> dict[str, Any]:
        """Flat keys for ``SAEMetadata`` (merge into ``cfg.metadata``)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "layout"}
        lay = self.layout.to_dict()
        if isinstance(self.layout, RowLayout):
            d.update(
                model_name=self.backbone,
                context_size=lay["n_tokens"],
                n_prefix_tokens=lay["n_prefix"],
                modality="rows",
                sae_lens_version=sae_lens.__version__,
            )
            return d
        d.update(
            model_name=self.backbone,
            image_size=lay["image_size"],
            patch_size=lay["patch_size"],
            grid=lay["grid"],
            has_cls=lay["has_cls"],
            n_registers=lay["n_registers"],
            n_prefix_tokens=lay["n_prefix"],
            context_size=lay["n_tokens"],
            modality="vision",
            # Without a 6.x version here SAELens treats the cfg as legacy and drops these keys.
            sae_lens_version=sae_lens.__version__,
        )
        return d

    @classmethod
    def from_metadata(cls, metadata: Any) -> VisionFacts | None:
        """Read the facts back from an SAE's ``cfg.metadata`` (None if it is not a vision SAE)."""
        get = metadata.get if hasattr(metadata, "get") else (lambda k, d=None: getattr(metadata, k, d))
        if get("modality") != "vision" or get("image_size") is None:
            return None
        layout = TokenLayout(
            image_size=tuple(get("image_size")),
            patch_size=tuple(get("patch_size")),
            has_cls=bool(get("has_cls")),
            n_registers=int(get("n_registers") or 0),
        )
        return cls(
            backbone=get("backbone") or get("model_name"),
            hook_name=get("hook_name"),
            tokens=get("tokens") or "all",
            layout=layout,
            preprocessing=dict(get("preprocessing") or {}),
            dataset=dict(get("dataset") or {}),
            store_fingerprint=get("store_fingerprint"),
            training_tokens=get("training_tokens"),
            backbone_weights_file=get("backbone_weights_file"),
            input_normalization=get("input_normalization"),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (layout nested)."""
        d = asdict(self)
        d["layout"] = self.layout.to_dict()
        return d


def apply_vision_facts(sae: sae_lens.SAE, facts: VisionFacts) -> None:
    """Write ``facts`` into ``sae.cfg.metadata`` in place (SAELens saves them in cfg.json)."""
    for key, value in facts.to_metadata().items():
        setattr(sae.cfg.metadata, key, value)


def vision_facts_of(sae: sae_lens.SAE) -> VisionFacts | None:
    """The vision facts of an SAE, or None for an SAE without them (e.g. an LLM SAE)."""
    return VisionFacts.from_metadata(sae.cfg.metadata)
