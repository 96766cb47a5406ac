"""Read saev activation shards and convert them to this package's activation store.

saev's shard directory (its ``protocol.md``): ``metadata.json``, ``shards.json`` (one entry per
shard with its image count) and raw float32 ``acts%06d.bin`` files shaped (images, layers, tokens,
d_model), tokens = [CLS] + patches (registers are dropped by saev). Field names changed between
protocol 1.0 (``vit_family``, ``vit_ckpt``, ``n_patches_per_img``, ``d_vit``, ``n_imgs``) and 2.x
(``family``, ``ckpt``, ``content_tokens_per_example``, ``d_model``, ``n_examples``); both are read.
The ``data`` field of 2.x is a base64 *pickle* of the dataset and is never unpickled.

:func:`read_saev_shards` yields rows with provenance (image index, token position in saev's stored
sequence); :func:`convert_saev_shards` writes them with :class:`~vision_sae_lens.store.StoreWriter`,
one site ``blocks.{layer}.hook_resid_post`` per saev layer.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vision_sae_lens.errors import ConversionError
from vision_sae_lens.fsutil import read_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SaevShardInfo:
    """What a saev shard directory holds."""

    family: str
    """saev's backbone family (clip, siglip, dinov2, dinov3, ...)."""
    ckpt: str
    """saev's backbone checkpoint name."""
    layers: tuple[int, ...]
    """saev layer indices recorded (block outputs; may be negative)."""
    n_patches: int
    """Patch tokens per image."""
    cls_token: bool
    """Whether token 0 of each stored image is CLS."""
    d_model: int
    """Activation width."""
    n_images: int
    """Images in the directory."""
    shard_images: tuple[int, ...]
    """Images in each shard file, in order."""

    @property
    def n_tokens(self) -> int:
        """Stored tokens per image (CLS + patches)."""
        return self.n_patches + int(self.cls_token)


@dataclass(frozen=True)
class SaevRows:
    """A block of saev rows of one image range: acts per layer and their provenance."""

    acts_by_layer: dict[int, np.ndarray]
    """layer -> (n, d_model) float32 rows in (image, token) order."""
    image_idx: np.ndarray
    """(n,) image index of each row."""
    token_idx: np.ndarray
    """(n,) position of each row in saev's stored sequence (0 = CLS when stored)."""


def read_saev_shard_info(path: str | Path) -> SaevShardInfo:
    """Parse ``metadata.json`` and ``shards.json`` of a saev shard directory (either protocol).

    Every field is checked before it is used (a foreign header decides sizes and site names): counts
    are positive integers within :data:`LIMITS` (``"2e9"`` or ``-2`` are refused), layers distinct
    integers (``1.5`` or ``"../x"`` would become a site name), names plain strings; a
    :class:`~vision_sae_lens.errors.ConversionError` names the file and the field.
    """
    path = Path(path)
    try:
        md = read_json(path / "metadata.json")
        shards = read_json(path / "shards.json")
    except FileNotFoundError as exc:
        raise ConversionError(f"{path} is not a saev shard directory: {exc.filename} is missing") from exc
    except ValueError as exc:
        raise ConversionError(f"{path}: cannot read saev's metadata.json / shards.json: {exc}") from exc
    if not isinstance(md, dict) or not isinstance(shards, list):
        raise ConversionError(f"{path}: metadata.json must hold a JSON object and shards.json a list")
    where = f"{path}/metadata.json"
    get = lambda *keys: next((md[k] for k in keys if k in md), None)  # noqa: E731
    if md.get("dtype", "float32") != "float32":
        raise ConversionError(f"{where} field dtype={md['dtype']!r}; only float32 shards are known")
    n_images = _count(get("n_examples", "n_imgs"), f"{where} field n_examples (n_imgs)", LIMITS["n_images"])
    counts = tuple(
        _count(
            s.get("n_examples", s.get("n_imgs")) if isinstance(s, dict) else s,
            f"{path}/shards.json entry {i} field n_examples (n_imgs)",
            LIMITS["n_images"],
        )
        for i, s in enumerate(shards)
    )
    if sum(counts) != n_images:
        raise ConversionError(f"{path}: shards.json counts {sum(counts)} images, metadata.json {n_images}")
    cls_token = get("cls_token")
    if not isinstance(cls_token, bool):
        raise ConversionError(f"{where} field cls_token must be true or false, got {cls_token!r}")
    return SaevShardInfo(
        family=_text(get("family", "vit_family"), f"{where} field family (vit_family)"),
        ckpt=_text(get("ckpt", "vit_ckpt"), f"{where} field ckpt (vit_ckpt)"),
        layers=_layers(get("layers"), f"{where} field layers"),
        n_patches=_count(
            get("content_tokens_per_example", "n_patches_per_img"),
            f"{where} field content_tokens_per_example (n_patches_per_img)",
            LIMITS["n_patches"],
        ),
        cls_token=cls_token,
        d_model=_count(get("d_model", "d_vit"), f"{where} field d_model (d_vit)", LIMITS["d_model"]),
        n_images=n_images,
        shard_images=counts,
    )


LIMITS = {"n_images": 10**10, "n_patches": 2**16, "d_model": 2**16, "layers": 1024}
"""Largest values read from a saev header (far above any real one: a bigger one is a damaged header)."""


def _count(value: object, field: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
        raise ConversionError(f"{field} must be a positive integer of at most {limit:,}, got {value!r}")
    return value


def _layers(value: object, field: str) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or not value
        or any(isinstance(x, bool) or not isinstance(x, int) for x in value)
        or len(set(value)) != len(value)
    ):
        raise ConversionError(f"{field} must be a non-empty list of distinct integers, got {value!r}")
    if any(abs(x) >= LIMITS["layers"] for x in value):
        raise ConversionError(f"{field} holds a layer beyond {LIMITS['layers']} blocks: {value!r}")
    return tuple(value)


def _text(value: object, field: str) -> str:
    if not isinstance(value, str) or not value or any(unicodedata.category(c) == "Cc" for c in value):
        raise ConversionError(f"{field} must be a non-empty string without control characters, got {value!r}")
    return value


def read_saev_shards(
    path: str | Path, *, layers: list[int] | None = None, images_per_block: int = 64
) -> Iterator[SaevRows]:
    """Yield saev rows, ``images_per_block`` images at a time, memory-mapped (nothing loaded whole)."""
    path = Path(path)
    info = read_saev_shard_info(path)
    layers = list(info.layers) if layers is None else layers
    unknown = [layer for layer in layers if layer not in info.layers]
    if unknown:
        raise ConversionError(f"layers {unknown} are not in this saev directory (it has {list(info.layers)})")
    T, D, L = info.n_tokens, info.d_model, len(info.layers)
    first_image = 0
    for i, n_img in enumerate(info.shard_images):
        file = path / f"acts{i:06d}.bin"
        expected = n_img * L * T * D * 4
        if not file.exists() or file.stat().st_size < expected:
            raise ConversionError(
                f"{file} is missing or shorter than the {expected} bytes shards.json implies"
            )
        acts = np.memmap(file, dtype=np.float32, mode="r", shape=(n_img, L, T, D))
        for start in range(0, n_img, images_per_block):
            stop = min(start + images_per_block, n_img)
            n = (stop - start) * T
            yield SaevRows(
                acts_by_layer={
                    layer: np.array(acts[start:stop, info.layers.index(layer)]).reshape(n, D)
                    for layer in layers
                },
                image_idx=np.repeat(np.arange(first_image + start, first_image + stop), T),
                token_idx=np.tile(np.arange(T), stop - start),
            )
        first_image += n_img


def convert_saev_shards(
    path: str | Path,
    *,
    out_dir: str | Path,
    layer: int | None = None,
    backbone: str | None = None,
    patch_size: int | None = None,
    n_layers: int | None = None,
    dtype: str = "float32",
):
    """Convert a saev shard directory to an :class:`~vision_sae_lens.store.ActivationStore`.

    The store's layout describes saev's *stored* sequence ([CLS] + patches, registers dropped),
    so token indices match saev's. ``patch_size`` is guessed from saev's checkpoint name
    (``ViT-B-16``, ``vitb14``, ...) when not given; negative saev layers need ``n_layers``.
    """
    from vision_sae_lens.layout import TokenLayout
    from vision_sae_lens.store import StoreWriter

    info = read_saev_shard_info(path)
    layers = list(info.layers) if layer is None else [layer]
    if layer is not None and (isinstance(layer, bool) or layer not in info.layers):
        raise ConversionError(f"layer {layer!r} is not in this saev directory (it has {list(info.layers)})")
    grid = math.isqrt(info.n_patches)
    if grid * grid != info.n_patches:
        raise ConversionError(
            f"{info.n_patches} patches per image is not a square grid; pass a layout yourself"
        )
    patch = patch_size or _guess_patch(info.ckpt)
    if patch is None:
        raise ConversionError(f"cannot tell the patch size from saev ckpt {info.ckpt!r}; pass patch_size=")
    sites = {}
    for saev_layer in layers:
        block = saev_layer if saev_layer >= 0 else (None if n_layers is None else n_layers + saev_layer)
        if block is None:
            raise ConversionError(
                f"saev layer {saev_layer} is negative; pass n_layers= (blocks in the backbone)"
            )
        if n_layers is not None and not 0 <= block < n_layers:
            raise ConversionError(f"saev layer {saev_layer} is outside a backbone of {n_layers} blocks")
        sites[saev_layer] = f"blocks.{block}.hook_resid_post"
    layout = TokenLayout(image_size=(grid * patch,) * 2, patch_size=(patch, patch), has_cls=info.cls_token)
    writer = StoreWriter(
        out_dir,
        backbone_id=backbone or f"saev:{info.family}/{info.ckpt}",
        sites=list(sites.values()),
        d_model=info.d_model,
        layout=layout,
        tokens="all" if info.cls_token else "patches",
        dtype=dtype,
        dataset={"source": "saev", "saev_dir": Path(path).name},
        extra={"converted_from": "saev", "saev_layers": layers, "saev_registers_dropped": True},
    )
    try:
        for rows in read_saev_shards(path, layers=layers):
            writer.append(
                {sites[k]: v for k, v in rows.acts_by_layer.items()}, rows.image_idx, rows.token_idx
            )
        return writer.finish(n_images=info.n_images)
    except BaseException:
        writer.abort()
        raise


def _guess_patch(ckpt: str) -> int | None:
    m = re.search(r"(?:ViT-[A-Za-z]+-|vit[a-z]|patch)(\d{1,2})(?!\d)", ckpt, flags=re.IGNORECASE)
    return int(m.group(1)) if m else None


def describe(info: SaevShardInfo) -> dict[str, Any]:
    """JSON-ready summary of a saev shard directory."""
    return {k: getattr(info, k) for k in SaevShardInfo.__dataclass_fields__} | {"n_tokens": info.n_tokens}
