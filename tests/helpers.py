"""Helpers shared by the test suite (import them with ``from helpers import ...``; fixtures live in conftest.py).

One tiny-ViT builder for every stage, small image sets, small activation stores and SAELens folders.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

from vision_sae_lens.backbones import HookedSAEViT
from vision_sae_lens.fsutil import MAX_JSON_BYTES, seal_sae_folder
from vision_sae_lens.layout import TokenLayout
from vision_sae_lens.metadata import VisionFacts, apply_vision_facts
from vision_sae_lens.store import StoreWriter

# --- the tiny ViT --------------------------------------------------------------------------------

TINY_ID = "timm:vit_tiny_patch16_224"
TINY_KWARGS = dict(img_size=32, patch_size=8, depth=3, num_classes=10)
"""A 3-block timm ViT at 32 px: CLS + 4x4 patches, d_model 192, 10 classes."""


def build_tiny(seed: int = 0, **overrides) -> HookedSAEViT:
    """The tiny timm ViT with random weights (the same weights for the same seed); ``overrides``
    change its timm kwargs (e.g. ``depth=2``) or pass HookedSAEViT options (``attention="eager"``)."""
    torch.manual_seed(seed)
    return HookedSAEViT.from_pretrained(TINY_ID, pretrained=False, **{**TINY_KWARGS, **overrides})


def random_images(n: int, seed: int = 0, size: tuple[int, int] = (32, 32)) -> list[Image.Image]:
    """``n`` RGB noise images."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]


# --- image folders and stores --------------------------------------------------------------------

SITES = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
"""Two sites of the tiny ViT that the store tests record."""


def make_folder(root: Path) -> Path:
    """An image folder with two classes, odd modes and sizes, and one corrupt file."""
    imgs = random_images(10, seed=3)
    for i, img in enumerate(imgs):
        cls = root / ("cat" if i % 2 else "dog")
        cls.mkdir(parents=True, exist_ok=True)
        if i == 3:
            img = img.convert("RGBA")
        if i == 5:
            img = img.resize((50, 20)).convert("P")
        if i == 7:
            img = Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 200)
        img.save(cls / f"img{i:02d}.png")
    (root / "dog" / "img99_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root


# --- small stores of synthetic rows (training tests) ----------------------------------------------

D_IN = 32
LAYOUT = TokenLayout(image_size=(32, 32), patch_size=(8, 8), has_cls=True)  # 16 patches + CLS
SITE = "blocks.1.hook_resid_post"
OTHER_SITE = "blocks.0.hook_resid_post"


def synthetic_rows(n_rows: int, d: int, seed: int = 0) -> np.ndarray:
    """Sparse combinations of a fixed dictionary plus noise: what an SAE can learn."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(96, d, generator=g)
    dictionary /= dictionary.norm(dim=-1, keepdim=True)
    active = torch.rand(n_rows, 96, generator=g) < 0.05
    coef = torch.rand(n_rows, 96, generator=g) * 3 * active
    return (coef @ dictionary + 0.05 * torch.randn(n_rows, d, generator=g) + 0.5).numpy()


def write_store(
    path: Path, site_rows: dict[str, np.ndarray], *, layout=LAYOUT, backbone="timm:test_vit"
) -> object:
    """A real ActivationStore of patch rows (16 per image) built with the store's public writer."""
    n_rows = len(next(iter(site_rows.values())))
    per_image = layout.n_patches
    image_idx = np.repeat(np.arange(n_rows // per_image), per_image)
    token_idx = np.tile(np.arange(layout.n_prefix, layout.n_tokens), n_rows // per_image)
    d = next(iter(site_rows.values())).shape[1]
    writer = StoreWriter(
        path,
        backbone_id=backbone,
        sites={s: a.shape[1] for s, a in site_rows.items()},
        d_model=d,
        layout=layout,
        tokens="patches",
        dtype="float32",
        dataset={"name": "synthetic", "n_images": n_rows // per_image},
        preprocessing={"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "size": [32, 32]},
        shard_rows=4096,
    )
    writer.append(site_rows, image_idx, token_idx)
    return writer.finish()


class CountingStore:
    """Proxy of a store that counts the training batches read (and can crash after some)."""

    def __init__(self, inner, crash_after: int | None = None, corrupt_at: int | None = None):
        self.inner, self.crash_after, self.corrupt_at = inner, crash_after, corrupt_at
        self.batches_read = 0
        self.path = inner.path

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def shuffled(self, site, batch_size, **kwargs):
        for batch in self.inner.shuffled(site, batch_size, **kwargs):
            if self.crash_after is not None and self.batches_read >= self.crash_after:
                raise RuntimeError("simulated crash while reading")
            if self.corrupt_at is not None and self.batches_read == self.corrupt_at:
                batch = batch.clone()
                batch[3, 5] = float("nan")
            self.batches_read += 1
            yield batch

    def ordered(self, *args, **kwargs):
        return self.inner.ordered(*args, **kwargs)


def reseal_store(path: Path, *, metadata: dict | None = None, rows: dict | None = None) -> None:
    """Edit a store as anyone holding it could, every checksum recomputed so that only meaning checks can
    catch it: ``metadata`` keys replaced, ``rows`` ``{(site, shard): fn(rows_nd) -> rows_nd}`` applied to
    shard files (float32 / float16 stores; site ``_provenance`` edits the (n, 2) provenance)."""
    import hashlib

    from vision_sae_lens.store import format as fmt

    meta = fmt.read_json(path / fmt.METADATA_FILE)
    manifest = fmt.read_json(path / fmt.MANIFEST_FILE)
    for (site, k), edit in (rows or {}).items():
        shard = manifest["shards"][k]
        if site == fmt.PROVENANCE:
            entry, storage, width = shard["provenance"], fmt.PROVENANCE_DTYPE, 2
        else:
            entry, storage, width = (
                shard["files"][site],
                fmt.NUMPY_STORAGE[meta["dtype"]],
                meta["site_dims"][site],
            )
        file = path / entry["path"]
        data = edit(np.fromfile(file, dtype=storage).reshape(-1, width).copy())
        file.write_bytes(np.ascontiguousarray(data, dtype=storage).tobytes())
        if "block_sha256" in entry:  # format 2: a sha256 per block
            from vision_sae_lens.store.integrity import BlockHasher

            hasher = BlockHasher(int(manifest["block_bytes"]))
            hasher.update(file.read_bytes())
            entry["block_sha256"] = hasher.hexdigests()
        else:
            entry["sha256"] = fmt.sha256_file(file)
    text = fmt.canonical_json(manifest)
    (path / fmt.MANIFEST_FILE).write_text(text)
    meta["manifest_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    meta.update(metadata or {})
    meta["fingerprint"] = fmt.fingerprint_of(meta)
    (path / fmt.METADATA_FILE).write_text(fmt.canonical_json(meta))


def take(iterator, n):
    return list(itertools.islice(iterator, n))


# --- SAELens folders (Hub tests) -------------------------------------------------------------------

TOKEN = "hf_testtokenABCDEFGH12345678"


def vision_facts(hook_name: str = "blocks.1.hook_resid_post") -> VisionFacts:
    return VisionFacts(
        backbone="timm:vit_tiny_patch16_224",
        hook_name=hook_name,
        tokens="patches",
        layout=TokenLayout(image_size=(32, 32), patch_size=(8, 8), has_cls=True),
        dataset={"name": "demo:mnist"},
    )


def make_checkpoint(
    folder: Path,
    *,
    hook_name: str = "blocks.1.hook_resid_post",
    arch: str = "standard",
    seed: int = 0,
    eval_json: dict | None = None,
    facts: bool = True,
) -> Path:
    """Write a tiny SAELens checkpoint folder (random weights, vision facts, optional eval.json)."""
    torch.manual_seed(seed)
    if arch == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=16, d_sae=32, k=4))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=16, d_sae=32))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    if facts:
        apply_vision_facts(sae, vision_facts(hook_name))
    folder.mkdir(parents=True, exist_ok=True)
    sae.save_model(str(folder))
    if eval_json is not None:
        (folder / "eval.json").write_text(json.dumps(eval_json))
    seal_sae_folder(folder)  # what train_sae and the importers write last (eval.json is sealed too)
    return folder


# --- files a reader of regular files must refuse ----------------------------------------------------

SPECIAL_FILES = {
    "fifo": "not a regular file",
    "/dev/zero": "not a regular file",
    "folder": "not a regular file",
    "huge": "larger than",
}
"""What :func:`plant_special_file` can put at a name, and the words of the error a reader must raise."""


def plant_special_file(path: Path, kind: str) -> None:
    """Put at ``path`` a FIFO (an open that waits for a writer would hang), a link to ``/dev/zero``, a folder,
    or a sparse file one byte over ``MAX_JSON_BYTES`` (no disk used)."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "huge":
        with open(path, "wb") as f:
            f.truncate(MAX_JSON_BYTES + 1)
    else:
        path.symlink_to(kind)
