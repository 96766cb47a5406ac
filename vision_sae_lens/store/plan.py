"""What a recording will do, decided before any image is read: :func:`make_plan` turns ``cache_activations``'
arguments, the model and the image source into a :class:`RecordingPlan`.

The plan's ``settings`` are exactly what the store's ``recording.json`` holds (canonical JSON): a re-run with
the same settings resumes the store, other settings are refused. Each site's row width comes from one
forward pass of a blank image, run only as deep as the recording will (``stop_at``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vision_sae_lens import fsutil
from vision_sae_lens.backbones.recorded import portable_backbone_id, weights_sha256
from vision_sae_lens.errors import ConfigError, ImageInputError
from vision_sae_lens.store import format as fmt

if TYPE_CHECKING:
    from vision_sae_lens.backbones import HookedSAEViT
    from vision_sae_lens.contracts import ImageSource

TARGET_SHARD_ROWS = 65536
"""Rows a shard holds by default (its images are ``TARGET_SHARD_ROWS / tokens per image``)."""
AUTOCAST_DTYPES = (None, "bfloat16", "float16")
"""Precisions the backbone's forward may run in while recording (None: the model's own)."""


@dataclass(frozen=True)
class RecordingPlan:
    """Everything derived from the arguments before recording: settings, shard ranges, stop layer."""

    settings: dict[str, Any]
    """The store settings as ``recording.json`` holds them (canonical JSON)."""
    sites: list[str]
    """Sites recorded, in order."""
    site_dims: dict[str, int]
    """Width of each site's rows."""
    tokens: str
    """Token selection (``patches``, ``cls``, ``registers``, ``all``)."""
    token_idx: np.ndarray
    """(t,) positions of the selected tokens in the full sequence."""
    dtype: str
    """Storage dtype of the shards."""
    batch_size: int
    """Images per forward pass."""
    shard_images: int
    """Images per shard (the last shard may hold fewer)."""
    n_images: int
    """Images in the source."""
    n_shards: int
    """Shards the store will hold."""
    stop_at: int | None
    """``stop_at_layer`` of the forward (None: the full model)."""
    channels: int
    """Input channels of the backbone."""
    autocast: str | None = None
    """``torch.autocast`` dtype of the forward (None: the model's own precision)."""

    def shard_range(self, k: int) -> range:
        """The image indices of shard ``k``."""
        return range(k * self.shard_images, min(self.n_images, (k + 1) * self.shard_images))


def make_plan(
    model: HookedSAEViT,
    source: ImageSource,
    sites: list[str],
    *,
    tokens: str,
    dtype: str,
    batch_size: int,
    shard_images: int | None,
    autocast: str | None = None,
) -> RecordingPlan:
    """The plan of recording ``sites`` of ``model`` on ``source`` (ConfigError for a site that is not a
    per-token site, ImageInputError for an empty source)."""
    token_idx = model.layout.token_indices(tokens).numpy()
    for site in sites:
        model.check_site(site)
        fsutil.check_name(site, what="site name")  # it becomes the folder shards/<site>/
    stop_at = _stop_layer(model, sites)
    channels = int(model.preprocessing.get("channels", 3))
    site_dims = _site_dims(model, sites, stop_at, channels)
    n_images = len(source)
    if n_images == 0:
        raise ImageInputError("the image source is empty")
    shard_images = int(
        shard_images if shard_images is not None else max(1, round(TARGET_SHARD_ROWS / len(token_idx)))
    )
    settings = {
        "backbone_id": portable_backbone_id(model.backbone_id),
        "backbone_weights_sha256": weights_sha256(model.backbone),
        "backbone_weights_file": model.spec.weights,
        "backbone_build": model.spec.build,
        "preprocessing": model.preprocessing,
        "layout": model.layout.to_dict(),
        "tokens": tokens,
        "token_indices": token_idx.tolist(),
        "sites": sites,
        "site_dims": site_dims,
        "d_model": int(model.d_model),
        "dtype": dtype,
        "dataset": source.description,
        "label_names": list(source.label_names) if source.label_names is not None else None,
        "recording": {
            "writer": "cache_activations",
            "batch_size": batch_size,
            "shard_images": shard_images,
            # absent when unset: stores recorded before autocast existed keep their settings (and resume)
            **({"autocast": autocast} if autocast else {}),
        },
    }
    return RecordingPlan(
        settings=json.loads(fmt.canonical_json(settings)),  # exactly what recording.json will hold
        sites=sites,
        site_dims=site_dims,
        tokens=tokens,
        token_idx=token_idx,
        dtype=dtype,
        batch_size=batch_size,
        shard_images=shard_images,
        n_images=n_images,
        n_shards=-(-n_images // shard_images),
        stop_at=stop_at,
        channels=channels,
        autocast=autocast,
    )


def _stop_layer(model: HookedSAEViT, sites: list[str]) -> int | None:
    """The ``stop_at_layer`` that computes every site (None: one of them needs the full forward)."""
    layers = [model.layer_of(site) for site in sites]
    known = [layer for layer in layers if layer is not None]
    return max(1, *known) if len(known) == len(layers) else None


def _site_dims(model: HookedSAEViT, sites: list[str], stop_at: int | None, channels: int) -> dict[str, int]:
    # One blank image tells every site's shape; only (batch, tokens, d) sites can be stored as rows.
    probe = torch.zeros(1, channels, *model.layout.image_size, device=model.device)
    with torch.inference_mode():
        _, cache = model.run_with_cache(
            probe, names_filter=sites, stop_at_layer=stop_at, return_cache_object=False
        )
    site_dims = {}
    for site in sites:
        shape = tuple(cache[site].shape)
        if len(shape) != 3 or shape[1] != model.layout.n_tokens:
            raise ConfigError(
                f"site {site!r} has shape {shape}, not (batch, {model.layout.n_tokens} tokens, d); only "
                "per-token sites can be recorded (e.g. blocks.N.hook_resid_post)."
            )
        site_dims[site] = int(shape[2])
    return site_dims
