"""The namer: a CLIP-like image-text model's image and concept embeddings, as unit vectors.

Any model the backbone registry loads with a text side works (``open_clip:ARCH/TAG``,
``hf:openai/clip-vit-base-patch16``, a SigLIP, ``demo:shapes-clip``, a local folder, or a model object):
the image side is the hooked model's own output (open_clip's ``encode_image``, transformers'
``get_image_features``) on its own preprocessing, the text side
:func:`vision_sae_lens.backbones.text_tower.class_text_embeddings` (the same weights, checked). The namer
need not be the backbone the SAE reads: the probe images are simply run through it too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vision_sae_lens.backbones.recorded import portable_backbone_id
from vision_sae_lens.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from vision_sae_lens.backbones import HookedSAEViT

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATES: tuple[str, ...] = ("{}",)
"""Concepts are embedded as they are written, as CLIP-Dissect does; pass templates such as
``("a photo of a {}.",)`` to put them in prompts (several are averaged, open_clip's zero-shot way)."""


class ImageTextNamer:
    """Image and text embeddings of one CLIP-like model in their shared space."""

    def __init__(
        self,
        model: str | HookedSAEViT | nn.Module,
        *,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        device: str | torch.device | None = None,
        weights: str | Path | None = None,
    ) -> None:
        from vision_sae_lens.backbones import HookedSAEViT

        if isinstance(model, str):
            extra: dict[str, Any] = {} if weights is None else {"weights": str(weights)}
            model = HookedSAEViT.from_pretrained(model, device=device, **extra)
        elif not isinstance(model, HookedSAEViT):
            model = HookedSAEViT.from_module(model)
        if model.output_kind != "embedding":
            raise ConfigError(
                f"{model.backbone_id} outputs {model.output_kind}, not an image embedding: the namer must be "
                "an image-text model (CLIP, SigLIP: open_clip:ARCH/TAG, hf:openai/clip-vit-base-patch16, "
                "demo:shapes-clip)"
            )
        self.model, self.templates, self.weights = model.eval(), tuple(templates), weights
        self.id = portable_backbone_id(model.backbone_id)  # it is written to names.json and model cards

    @torch.no_grad()
    def image_embeddings(
        self, images: Any, indices: np.ndarray, *, batch_size: int = 64, progress: bool = True
    ) -> torch.Tensor:
        """``(len(indices), e)`` float32 unit embeddings of ``images[i]`` (an image source) on the CPU."""
        out = []
        for lo in tqdm(
            range(0, len(indices), batch_size), desc="namer images", unit="batch", disable=not progress
        ):
            batch = [_image(images[int(i)]) for i in indices[lo : lo + batch_size]]
            out.append(F.normalize(self.model.output_tensor(self.model(batch)).float(), dim=-1).cpu())
        if not out:
            raise ConfigError("no probe images to embed")
        return torch.cat(out)

    def text_embeddings(self, concepts: Sequence[str], *, progress: bool = False) -> torch.Tensor:
        """``(len(concepts), e)`` float32 unit embeddings of the concepts (through ``templates``) on the CPU."""
        from vision_sae_lens.backbones.text_tower import class_text_embeddings

        text = class_text_embeddings(
            self.model, list(concepts), templates=self.templates, weights=self.weights, progress=progress
        )
        if text is None:
            raise ConfigError(
                f"{self.id} has no text tower, so it cannot name latents: choose an image-text model as the "
                "namer (open_clip:ViT-B-16/openai, hf:openai/clip-vit-base-patch16, demo:shapes-clip), or name "
                "latents by the dataset's labels (no namer)"
            )
        text = F.normalize(text.float(), dim=-1).cpu()
        _warn_on_identical(text, concepts)
        return text


def _image(item: Any) -> Any:
    return item[0] if isinstance(item, tuple) else item


def _warn_on_identical(text_ce: torch.Tensor, concepts: Sequence[str]) -> None:
    """Concepts the text tower cannot tell apart (e.g. words outside its vocabulary) get one warning."""
    _, inverse, counts = torch.unique(text_ce, dim=0, return_inverse=True, return_counts=True)
    shared = counts[inverse] > 1
    if bool(shared.any()):
        examples = [concepts[i] for i in shared.nonzero().flatten()[:6].tolist()]
        logger.warning(
            "%d of %d concepts share their text embedding with another concept (e.g. %s): the namer cannot tell "
            "them apart (outside its vocabulary?) and they tie wherever they win",
            int(shared.sum()),
            len(concepts),
            ", ".join(repr(e) for e in examples),
        )
