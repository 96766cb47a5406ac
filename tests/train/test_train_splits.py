"""Held-out data is held out fairly: seeded random, label-stratified image draws, never the last rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import LAYOUT, SITE  # noqa: I001
from sae_lens import TopKTrainingSAEConfig

from vision_sae_lens.store import StoreWriter
from vision_sae_lens.train import TrainConfig, train_sae
from vision_sae_lens.train.feed import batch_stream, split_store

N_IMAGES, PER_IMAGE, D = 400, LAYOUT.n_patches, 8


@pytest.fixture(scope="module")
def sorted_store(tmp_path_factory):
    """Images sorted by class (40 per digit, like the shipped MNIST digits); column 0 = image index."""
    labels = np.repeat(np.arange(10), N_IMAGES // 10)
    image_idx = np.repeat(np.arange(N_IMAGES), PER_IMAGE)
    rows = np.random.default_rng(0).normal(size=(N_IMAGES * PER_IMAGE, D)).astype(np.float32)
    rows[:, 0] = image_idx
    writer = StoreWriter(
        tmp_path_factory.mktemp("sorted") / "acts",
        backbone_id="timm:test_vit",
        sites={SITE: D},
        d_model=D,
        layout=LAYOUT,
        tokens="patches",
        dtype="float32",
        dataset={"name": "sorted"},
        shard_rows=1000,
    )
    writer.append({SITE: rows}, image_idx, np.tile(np.arange(1, PER_IMAGE + 1), N_IMAGES))
    return writer.finish(labels=labels.tolist())


def test_held_out_images_cover_every_class_of_a_sorted_store(sorted_store):
    split = split_store(sorted_store, eval_fraction=0.1, max_eval_rows=10**9, batch_size=64, seed=0)
    assert len(split.eval_images) == 40 and split.stratified
    held_labels = np.asarray(sorted_store.labels)[split.eval_images]
    assert np.bincount(held_labels, minlength=10).tolist() == [4] * 10  # 10% of each class, not one class
    assert not np.array_equal(split.eval_images, np.arange(N_IMAGES - 40, N_IMAGES))  # not the last images
    image_n, _ = sorted_store.provenance(0, sorted_store.n_rows)
    assert np.array_equal(split.eval_rows, np.flatnonzero(np.isin(image_n, split.eval_images)))
    again = split_store(sorted_store, eval_fraction=0.1, max_eval_rows=10**9, batch_size=64, seed=0)
    other = split_store(sorted_store, eval_fraction=0.1, max_eval_rows=10**9, batch_size=64, seed=1)
    assert np.array_equal(again.eval_images, split.eval_images)
    assert not np.array_equal(other.eval_images, split.eval_images)


def test_max_eval_rows_caps_whole_images(sorted_store):
    split = split_store(sorted_store, eval_fraction=0.5, max_eval_rows=10 * PER_IMAGE, batch_size=64)
    assert len(split.eval_images) == 10 and split.n_eval == 10 * PER_IMAGE


def test_training_never_reads_a_held_out_image(sorted_store):
    split = split_store(sorted_store, eval_fraction=0.1, max_eval_rows=10**9, batch_size=64, seed=3)
    stream = batch_stream(sorted_store, SITE, batch_size=64, seed=0, split=split)
    seen = torch.cat([next(stream) for _ in range(2 * (split.n_train // 64))])[:, 0].long().numpy()
    assert not np.isin(seen, split.eval_images).any()
    assert len(np.unique(seen)) == N_IMAGES - 40  # every training image is read


def test_checkpoint_records_the_draw_and_evaluation_uses_it(sorted_store, tmp_path):
    cfg = TrainConfig(
        store=sorted_store.path,
        site=SITE,
        sae=TopKTrainingSAEConfig(d_in=D, d_sae=32, k=4),
        training_tokens=64 * 10,
        batch_size=64,
        eval_fraction=0.1,
        split_seed=5,
    )
    run = train_sae(cfg, out_dir=tmp_path, progress=False)
    record = json.loads((run.path / "split.json").read_text())
    expected = split_store(sorted_store, eval_fraction=0.1, max_eval_rows=65536, batch_size=64, seed=5)
    assert record["eval_images"] == expected.eval_images.tolist() and "stratified" in record["method"]
    held = json.loads((run.path / "cfg.json").read_text())["metadata"]["dataset"]["held_out"]
    assert held["seed"] == 5 and held["n_eval_images"] == 40
    report = json.loads((run.path / "eval.json").read_text())
    assert report["n_rows"] == 40 * PER_IMAGE and report["rows"]["held_out"]
    assert report["density_rows"] == sorted_store.n_rows
