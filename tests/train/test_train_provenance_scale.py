"""The split, split.json and evaluation's density sample work from per-image row offsets: the same rows as a
pass over every row's provenance would give, without ever reading more than a bounded chunk of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import LAYOUT, SITE  # noqa: I001
from hypothesis import given, settings
from hypothesis import strategies as st

from vision_sae_lens.data.subsets import subset_indices
from vision_sae_lens.store import StoreWriter, reader
from vision_sae_lens.train import evaluate
from vision_sae_lens.train.feed import rows_of_images, split_from_record, split_store

N_IMAGES, D = 300, 4


@pytest.fixture(scope="module")
def gappy_store(tmp_path_factory):
    """Images with 1..4 patch rows each, every seventh image skipped (no rows), labels sorted by class."""
    rng = np.random.default_rng(0)
    image_n, token_n = [], []
    for image in range(N_IMAGES):
        if image % 7 == 3:
            continue
        tokens = np.sort(rng.choice(np.arange(1, LAYOUT.n_tokens), size=rng.integers(1, 5), replace=False))
        image_n += [image] * len(tokens)
        token_n += tokens.tolist()
    writer = StoreWriter(
        tmp_path_factory.mktemp("gappy") / "acts", backbone_id="t", sites={SITE: D}, d_model=D, layout=LAYOUT,
        tokens="patches", dtype="float32", shard_rows=97, label_names=[str(c) for c in range(6)],
    )  # fmt: skip
    writer.append({SITE: rng.standard_normal((len(image_n), D)).astype(np.float32)}, image_n, token_n)
    return writer.finish(n_images=N_IMAGES, labels=np.repeat(np.arange(6), N_IMAGES // 6).tolist())


@pytest.fixture
def spans(gappy_store, monkeypatch):
    """Small provenance chunks, and the longest provenance read any call makes."""
    monkeypatch.setattr(reader, "_PROVENANCE_CHUNK", 50)
    gappy_store._image_offsets = None
    longest = [0]
    real = type(gappy_store).provenance

    def spy(self, start, stop):
        longest[0] = max(longest[0], stop - start)
        return real(self, start, stop)

    monkeypatch.setattr(type(gappy_store), "provenance", spy)
    return longest


def test_image_offsets_match_a_count_of_every_rows_image(gappy_store, spans):
    image_n, _ = reader.ActivationStore.provenance(gappy_store, 0, gappy_store.n_rows)
    expected = np.concatenate([[0], np.cumsum(np.bincount(image_n, minlength=N_IMAGES))])
    spans[0] = 0
    assert np.array_equal(gappy_store.image_offsets(), expected)
    assert spans[0] <= 50


@settings(max_examples=50, deadline=None)
@given(counts=st.lists(st.integers(0, 5), min_size=1, max_size=30), picks=st.data())
def test_rows_of_images_equals_brute_force(counts, picks):
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    images = np.asarray(sorted(picks.draw(st.sets(st.integers(0, len(counts) - 1)))), dtype=np.int64)
    owner = np.repeat(np.arange(len(counts)), counts)
    assert np.array_equal(rows_of_images(offsets, images), np.flatnonzero(np.isin(owner, images)))


def test_split_and_split_json_give_the_rows_a_full_pass_gives(gappy_store, spans):
    image_n, _ = reader.ActivationStore.provenance(gappy_store, 0, gappy_store.n_rows)
    spans[0] = 0
    split = split_store(gappy_store, eval_fraction=0.2, max_eval_rows=10**6, batch_size=8, seed=4)
    assert np.array_equal(split.eval_rows, np.flatnonzero(np.isin(image_n, split.eval_images)))
    assert not np.isin(split.eval_images, np.arange(3, N_IMAGES, 7)).any()  # never an image without rows
    again = split_from_record(gappy_store, split.describe())
    assert np.array_equal(again.eval_rows, split.eval_rows) and again.stratified
    assert spans[0] <= 50


def test_density_sample_is_the_old_draw_without_reading_every_row(gappy_store, spans):
    image_n, token_n = reader.ActivationStore.provenance(gappy_store, 0, gappy_store.n_rows)
    spans[0] = 0
    got = evaluate._sampled_rows(gappy_store, 120, seed=2)
    # the draw as it was made from every row's provenance
    images = np.unique(image_n)
    n = max(1, int(120 // (len(image_n) / len(images))))
    lab = [int(v) for v in gappy_store.labels[images]]
    chosen = images[subset_indices(len(images), n, labels=lab, seed=2)]
    assert np.array_equal(got, np.flatnonzero(np.isin(image_n, chosen))[:120])
    keep_t = np.zeros(LAYOUT.n_tokens, dtype=bool)
    keep_t[[1, 3]] = True
    kept = evaluate._of_tokens(gappy_store, got, torch.from_numpy(keep_t))
    assert np.array_equal(kept, got[keep_t[token_n[got]]])
    assert spans[0] <= 50
