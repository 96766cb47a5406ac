"""Fixtures for the training tests: small real activation stores built from synthetic or model rows."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from vision_sae_lens.layout import TokenLayout
from vision_sae_lens.store import StoreWriter

# Tiny tensors: more intra-op threads only contend with the prefetch threads on a shared 2-core box.
torch.set_num_threads(1)

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


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    """16,384 rows (1,024 images x 16 patches) of d=32 at two sites."""
    rows = synthetic_rows(16384, D_IN)
    other = synthetic_rows(16384, D_IN, seed=1)
    return write_store(tmp_path_factory.mktemp("store") / "acts", {SITE: rows, OTHER_SITE: other})


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


def take(iterator, n):
    return list(itertools.islice(iterator, n))
