"""Readers on synthetic stores: shuffled() coverage, determinism, mixing, filters, statistics; verify()."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vision_sae_lens.backbones import TokenLayout
from vision_sae_lens.errors import StoreCorruptError, StoreError
from vision_sae_lens.store import ActivationStore, StoreWriter, integrity

LAYOUT = TokenLayout(image_size=(16, 16), patch_size=(8, 8), has_cls=True)  # CLS + 4 patches
SITE = "blocks.0.hook_resid_post"


def synthetic_store(path, n_images: int, *, dtype="float32", shard_rows=7, tokens="all", d=3):
    """Row r holds [r, image, token] so every emitted row names itself."""
    idx = LAYOUT.token_indices(tokens).numpy()
    image_n = np.repeat(np.arange(n_images), len(idx))
    token_n = np.tile(idx, n_images)
    acts = np.zeros((len(image_n), d), dtype=np.float32)
    acts[:, 0] = np.arange(len(image_n))
    acts[:, 1], acts[:, 2] = image_n, token_n
    writer = StoreWriter(
        path,
        backbone_id="test:synthetic",
        sites={SITE: d},
        d_model=d,
        layout=LAYOUT,
        tokens=tokens,
        dtype=dtype,
        shard_rows=shard_rows,
        label_names=["even", "odd"],
    )
    writer.append({SITE: acts}, image_n, token_n)
    return writer.finish(labels=np.arange(n_images) % 2)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_images=st.integers(1, 40),
    batch_size=st.integers(1, 33),
    buffer_rows=st.integers(1, 80),
    block_rows=st.integers(1, 20),
    shard_rows=st.integers(1, 30),
    start=st.integers(0, 10),
    seed=st.integers(0, 3),
)
def test_shuffled_visits_every_row_once_per_epoch(
    tmp_path_factory, n_images, batch_size, buffer_rows, block_rows, shard_rows, start, seed
):
    store = synthetic_store(tmp_path_factory.mktemp("s") / "s", n_images, shard_rows=shard_rows)
    start = min(start, store.n_rows)
    kw = dict(seed=seed, start_row=start, buffer_rows=buffer_rows, block_rows=block_rows, epochs=2)
    batches = list(store.shuffled(SITE, batch_size, drop_last=False, **kw))
    rows = torch.cat(batches)[:, 0].long().tolist() if batches else []
    n = store.n_rows - start
    assert sorted(rows[:n]) == list(range(start, store.n_rows))  # epoch 1
    assert sorted(rows[n:]) == list(range(start, store.n_rows))  # epoch 2
    dropped = list(store.shuffled(SITE, batch_size, **kw))
    assert all(len(b) == batch_size for b in dropped)
    assert len(dropped) == 2 * (n // batch_size)


def test_shuffled_is_reproducible_per_seed_and_well_mixed(tmp_path):
    store = synthetic_store(tmp_path / "s", 400, shard_rows=300)  # 2000 rows of 5 tokens
    kw = dict(buffer_rows=1000, block_rows=25)
    a = torch.cat(list(store.shuffled(SITE, 100, seed=0, **kw)))
    b = torch.cat(list(store.shuffled(SITE, 100, seed=0, **kw)))
    c = torch.cat(list(store.shuffled(SITE, 100, seed=1, **kw)))
    assert torch.equal(a, b) and not torch.equal(a, c)
    epochs = torch.cat(list(store.shuffled(SITE, 100, seed=0, epochs=2, **kw)))
    assert torch.equal(epochs[:2000], a) and not torch.equal(epochs[2000:], a)
    # Mixing: a batch of 100 rows spans many images (sequential reading would give 20).
    for batch in store.shuffled(SITE, 100, seed=0, **kw):
        assert len(batch[:, 1].unique()) >= 60
    first = next(iter(store.shuffled(SITE, 100, seed=0, **kw)))[:, 0]
    assert first.max() - first.min() > 500  # drawn from far-apart parts of the store


@pytest.mark.parametrize("drop_last", [True, False])
def test_skip_batches_resumes_the_same_stream_without_reading(tmp_path, monkeypatch, drop_last):
    store = synthetic_store(tmp_path / "s", 60, shard_rows=40)  # 300 rows, 3 epochs of 7-8 batches
    kw = dict(seed=3, epochs=3, buffer_rows=90, block_rows=10, drop_last=drop_last)
    full = list(store.shuffled(SITE, 40, **kw))
    gathered = []
    original = type(store).gather
    monkeypatch.setattr(
        type(store), "gather", lambda self, site, rows: gathered.append(1) or original(self, site, rows)
    )
    for skip in (0, 5, 8, len(full) - 1, len(full)):
        gathered.clear()
        resumed = list(store.shuffled(SITE, 40, skip_batches=skip, **kw))
        assert len(resumed) == len(full) - skip and len(gathered) == len(resumed)
        assert all(torch.equal(a, b) for a, b in zip(resumed, full[skip:], strict=True))
    with pytest.raises(ValueError, match="skip_batches"):
        store.shuffled(SITE, 40, skip_batches=-1)


def test_shuffled_filters_and_normalisation(tmp_path):
    store = synthetic_store(tmp_path / "s", 20)
    odd = torch.cat(list(store.shuffled(SITE, 4, labels=[1], drop_last=False)))
    assert sorted(odd[:, 0].long().tolist()) == [r for r in range(100) if (r // 5) % 2 == 1]
    cls = torch.cat(list(store.shuffled(SITE, 3, token_types=["cls"], drop_last=False)))
    assert sorted(cls[:, 2].long().tolist()) == [0] * 20
    stats = store.statistics(SITE)
    full = store.read_rows(SITE, 0, 100)
    assert np.allclose(stats["mean"], full.mean(0).numpy(), atol=1e-5)
    centred = torch.cat(list(store.shuffled(SITE, 10, subtract_mean=True, scale_norm=True)))
    assert torch.allclose(centred.mean(0), torch.zeros(3), atol=1e-4)
    assert abs(stats["mean_norm"] - float(full.norm(dim=1).mean())) < 1e-3


def test_ordered_and_slices(tmp_path):
    store = synthetic_store(tmp_path / "s", 9, dtype="float16")
    rows = list(store.ordered(SITE, 4, start_row=3, stop_row=30))
    acts = torch.cat([r.acts for r in rows])
    assert acts[:, 0].tolist() == list(range(3, 30)) and len(rows[-1].acts) == 3
    assert torch.equal(torch.cat([r.image_idx for r in rows]), torch.arange(3, 30) // 5)
    assert torch.equal(torch.cat([r.token_idx for r in rows]), torch.arange(3, 30) % 5)
    held_out = torch.cat(list(store.shuffled(SITE, 5, start_row=40, drop_last=False)))
    assert sorted(held_out[:, 0].long().tolist()) == list(range(40, 45))
    with pytest.raises(ValueError, match="outside"):
        store.read_rows(SITE, 0, 46)


def test_corrupt_shard_is_named_by_verify_and_reader(tmp_path):
    store = synthetic_store(tmp_path / "s", 10)
    bad = store.path / "shards" / SITE / "000002.bin"
    data = bytearray(bad.read_bytes())
    data[5] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptError, match=r"000002\.bin: checksum mismatch"):
        store.verify()
    reopened = ActivationStore(store.path)
    with pytest.raises(StoreCorruptError, match=r"blocks\.0\.hook_resid_post/000002\.bin"):
        list(reopened.shuffled(SITE, 4))
    with pytest.raises(StoreCorruptError, match=r"000002\.bin"):
        reopened.read_rows(SITE, 0, 50)
    reopened.read_rows(SITE, 0, 14)  # shards 0 and 1 are fine


def test_missing_or_truncated_shard_and_incomplete_store(tmp_path):
    store = synthetic_store(tmp_path / "s", 10)
    missing = store.path / "shards" / SITE / "000001.bin"
    missing.unlink()
    with pytest.raises(StoreCorruptError, match=r"000001\.bin .* is missing"):
        ActivationStore(store.path)
    store2 = synthetic_store(tmp_path / "t", 10)
    short = store2.path / "shards" / "_provenance" / "000003.bin"
    short.write_bytes(short.read_bytes()[:-4])
    with pytest.raises(StoreCorruptError, match=r"_provenance/000003\.bin of store .* has 52 bytes"):
        ActivationStore(store2.path)
    (store2.path / "metadata.json").unlink()
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore(store2.path)
    with pytest.raises(StoreError, match="not an activation store"):
        ActivationStore(tmp_path)


def test_memory_stays_bounded_by_the_buffer(tmp_path):
    import tracemalloc

    store = synthetic_store(tmp_path / "s", 16000, shard_rows=8000, d=64)  # 80000 rows, 20 MiB
    store_bytes = store.n_rows * 64 * 4
    tracemalloc.start()
    try:
        n = sum(len(b) for b in store.shuffled(SITE, 64, buffer_rows=500, block_rows=50))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 80000 // 64 * 64
    buffer_bytes = (64 + 500 + 50) * 64 * 4  # batch + buffer + block, whatever the store size
    # The first read of a 1 MiB block hashes it whole; a read spanning blocks hashes them on every core at once.
    hashing = integrity.hash_threads() * integrity.BLOCK_BYTES
    assert peak < hashing + 4 * buffer_bytes, (peak, buffer_bytes)
    assert (
        4 * buffer_bytes < store_bytes / 8
    )  # what the reader itself holds is set by the buffer, not the store
