"""What data-parallel ranks and a GPU need from the store: a batch's equal slices (``shuffled(part=...)``), the
choice of pinned host memory and copies issued ahead (the CUDA path, by device), and autocast recording."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import SITES, random_images
from hypothesis import given, settings
from hypothesis import strategies as st

from vision_sae_lens.backbones import TokenLayout
from vision_sae_lens.errors import ConfigError, StoreMismatchError
from vision_sae_lens.store import StoreWriter, cache_activations, transfer
from vision_sae_lens.store import format as fmt

LAYOUT = TokenLayout(image_size=(16, 16), patch_size=(8, 8), has_cls=True)
SITE = "blocks.0.hook_resid_post"


def numbered_store(path, n_rows: int):
    """Row r holds r."""
    n_images = n_rows // LAYOUT.n_patches
    image_n = np.repeat(np.arange(n_images), LAYOUT.n_patches)
    token_n = np.tile(np.arange(1, LAYOUT.n_tokens), n_images)
    acts = np.arange(len(image_n), dtype=np.float32)[:, None]
    writer = StoreWriter(path, backbone_id="test:numbered", sites={SITE: 1}, d_model=1, layout=LAYOUT,
                         tokens="patches", dtype="float32", shard_rows=37)  # fmt: skip
    writer.append({SITE: acts}, image_n, token_n)
    return writer.finish()


@settings(max_examples=15, deadline=None)
@given(n_parts=st.integers(1, 4), per_part=st.integers(1, 9), seed=st.integers(0, 3), skip=st.integers(0, 3))
def test_the_parts_of_a_batch_are_that_batch(tmp_path_factory, n_parts, per_part, seed, skip):
    store = numbered_store(tmp_path_factory.mktemp("s") / "s", 4 * 50)
    batch = n_parts * per_part
    kw = dict(seed=seed, epochs=2, buffer_rows=40, block_rows=8, skip_batches=skip, prefetch=0)
    whole = list(store.shuffled(SITE, batch, **kw))
    parts = [list(store.shuffled(SITE, batch, part=(i, n_parts), **kw)) for i in range(n_parts)]
    assert all(len(p) == len(whole) for p in parts)
    for b, full in enumerate(
        whole
    ):  # rank i's slice is the i-th block of the single reader's batch, in order
        assert torch.equal(torch.cat([p[b] for p in parts]), full)


def test_parts_must_split_the_batch_evenly(tmp_path):
    store = numbered_store(tmp_path / "s", 4 * 10)
    for bad in [dict(part=(0, 3)), dict(part=(2, 2)), dict(part=(0, 2), drop_last=False)]:
        with pytest.raises(ConfigError, match="part="):
            store.shuffled(SITE, 8, **bad)


def test_pinning_and_copies_ahead_are_for_cuda_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (
        transfer.pins_for("cuda")
        and transfer.pins_for("cuda:1")
        and transfer.pins_for(torch.device("cuda", 0))
    )
    assert not transfer.pins_for("cpu") and not transfer.pins_for("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not transfer.pins_for("cuda")  # nothing to pin for: the copy would fail anyway, not here


def test_on_a_cpu_batches_pass_through_unchanged():
    batches = [torch.randn(4, 3) for _ in range(3)]
    assert all(a is b for a, b in zip(transfer.device_batches(iter(batches), "cpu"), batches, strict=True))
    assert transfer.pinned(batches[0], "cpu") is batches[0]
    assert list(transfer.device_batches(iter([]), "cpu")) == []


def test_autocast_recording_is_recorded_and_close_to_full_precision(tiny_model, tmp_path):
    images = random_images(4, seed=5)
    kw = dict(sites=SITES, dtype="float32", batch_size=2, progress=False)
    full = cache_activations(tiny_model, images, out_dir=tmp_path / "fp32", **kw)
    half = cache_activations(tiny_model, images, out_dir=tmp_path / "bf16", autocast="bfloat16", **kw)
    assert half.metadata["recording"]["autocast"] == "bfloat16"  # in the settings a resume must match
    assert json.loads((half.path / fmt.RECORDING_FILE).read_text())["recording"]["autocast"] == "bfloat16"
    assert "autocast" not in full.metadata["recording"]  # stores recorded without it keep their settings
    for site in SITES:
        a, b = full.read_rows(site, 0, full.n_rows), half.read_rows(site, 0, half.n_rows)
        assert not torch.equal(a, b)  # the forward did run in bfloat16
        assert torch.allclose(a, b, rtol=0.05, atol=0.05 * float(a.abs().max()))
    with pytest.raises(StoreMismatchError):  # one store, one precision: a resume cannot mix them
        cache_activations(tiny_model, images, out_dir=tmp_path / "bf16", **kw)
    with pytest.raises(ConfigError, match="autocast"):
        cache_activations(tiny_model, images, out_dir=tmp_path / "x", autocast="int8", **kw)
