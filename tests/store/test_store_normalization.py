"""saev-style normalisation in the training reader: statistics of the emitted rows, after centring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vision_sae_lens.backbones import TokenLayout
from vision_sae_lens.store import StoreWriter

LAYOUT = TokenLayout(image_size=(32, 32), patch_size=(8, 8), has_cls=True)  # CLS + 16 patches
SITE = "blocks.3.hook_resid_post"
D = 64


def store_with_far_cls(path, *, n_images=200, seed=0):
    """Patches = known mean + small noise; the CLS row sits far away (norm ~100x the patch spread)."""
    g = np.random.default_rng(seed)
    mean_d = g.normal(0, 3.0, D).astype(np.float32)
    n_tok = LAYOUT.n_tokens
    acts = (mean_d + g.normal(0, 0.5, (n_images, n_tok, D))).astype(np.float32)
    acts[:, 0] = 400.0 + g.normal(0, 1.0, (n_images, D))  # CLS
    writer = StoreWriter(
        path,
        backbone_id="test:synthetic",
        sites={SITE: D},
        d_model=D,
        layout=LAYOUT,
        tokens="all",
        dtype="float32",
        shard_rows=1000,
    )
    writer.append(
        {SITE: acts.reshape(-1, D)},
        np.repeat(np.arange(n_images), n_tok),
        np.tile(np.arange(n_tok), n_images),
    )
    return writer.finish(), mean_d, acts


def test_subtract_mean_and_scale_norm_give_sqrt_d_over_the_selected_tokens(tmp_path):
    store, mean_d, acts = store_with_far_cls(tmp_path / "s")
    batches = store.shuffled(
        SITE, 100, token_types=["patches"], subtract_mean=True, scale_norm=True, drop_last=False
    )
    rows = torch.cat(list(batches))
    assert len(rows) == 200 * 16  # no CLS row came through
    mean_norm = float(rows.norm(dim=1).mean())
    assert abs(mean_norm / math.sqrt(D) - 1) < 0.01
    assert float(rows.mean(0).abs().max()) < 1e-3  # centred on the patch mean, not pulled by CLS
    stats = store.statistics(SITE, token_types=["patches"], subtract_mean=True)
    patches = torch.from_numpy(acts[:, 1:].reshape(-1, D)).double()
    assert np.allclose(stats["mean"], patches.mean(0).numpy(), atol=1e-4)
    assert np.allclose(stats["mean"], mean_d, atol=0.05)  # the known mean
    centred_norm = float((patches - patches.mean(0)).norm(dim=1).mean())
    assert stats["mean_norm"] == pytest.approx(centred_norm, rel=1e-6)
    assert stats["raw_mean_norm"] == pytest.approx(float(patches.norm(dim=1).mean()), rel=1e-6)
    assert stats["rows"] == 200 * 16


def test_statistics_without_token_filter_are_pulled_by_cls(tmp_path):
    # What went wrong before: CLS rows in the mean and the norm measured before centring.
    store, _, _ = store_with_far_cls(tmp_path / "s")
    wrong = store.statistics(SITE)
    right = store.statistics(SITE, token_types=["patches"], subtract_mean=True)
    assert not np.allclose(wrong["mean"], right["mean"], atol=1.0)
    assert wrong["mean_norm"] > 3 * right["mean_norm"]


def test_sampled_statistics_stay_within_one_percent(tmp_path):
    store, _, _ = store_with_far_cls(tmp_path / "s", n_images=600)
    sampled = store.statistics(SITE, token_types=["patches"], subtract_mean=True, max_rows=4096)
    full = store.statistics(SITE, token_types=["patches"], subtract_mean=True)
    assert sampled["rows"] < full["rows"]
    assert sampled["scale"] == pytest.approx(full["scale"], rel=0.01)


def test_empty_selection_is_a_clear_error(tmp_path):
    store, _, _ = store_with_far_cls(tmp_path / "s", n_images=5)
    with pytest.raises(ValueError, match="no rows"):
        store.statistics(SITE, start_row=1, stop_row=5, token_types=["cls"])
