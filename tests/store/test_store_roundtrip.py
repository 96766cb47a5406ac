"""Recorded rows equal what run_with_cache returns for the same images (every site and token selection)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import SITES, random_images

from vision_sae_lens.store import ActivationStore, StoreWriter, cache_activations

TOLERANCE = {"float16": 1e-3, "bfloat16": 8e-3}


def reference(model, images, site, batch_size):
    """run_with_cache on the same batches the recorder forms (fp32 results may depend on batch size)."""
    out = []
    for lo in range(0, len(images), batch_size):
        _, cache = model.run_with_cache(model.preprocess(images[lo : lo + batch_size]), names_filter=[site])
        out.append(cache[site])
    return torch.cat(out)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_rows_equal_run_with_cache(tiny_model, tmp_path, dtype):
    images = random_images(11)
    store = cache_activations(
        tiny_model,
        images,
        sites=SITES,
        out_dir=tmp_path / "s",
        dtype=dtype,
        batch_size=4,
        shard_images=5,
        progress=False,
    )
    assert store.n_rows == 11 * 16 and len(store.shards) == 3  # 5 + 5 + 1 images: exact-size last shard
    assert [s["n_rows"] for s in store.shards] == [80, 80, 16]
    for site in SITES:
        ref = reference(tiny_model, images[:5], site, 4)
        ref = torch.cat(
            [ref, reference(tiny_model, images[5:10], site, 4), reference(tiny_model, images[10:], site, 4)]
        )
        ref = ref[:, 1:].reshape(-1, 192)  # patches only
        got = store.read_rows(site, 0, store.n_rows)
        assert got.dtype == torch.float32 and got.shape == ref.shape
        if dtype == "float32":
            assert torch.equal(got, ref)
        else:
            # Exactly the storage dtype's rounding of the reference, and close in relative terms.
            assert torch.equal(got, ref.to(getattr(torch, dtype)).float())
            assert ((got - ref).abs() <= TOLERANCE[dtype] * ref.abs().clamp_min(1)).all()
    image_n, token_n = store.provenance(0, store.n_rows)
    np.testing.assert_array_equal(image_n, np.repeat(np.arange(11), 16))
    np.testing.assert_array_equal(token_n, np.tile(np.arange(1, 17), 11))
    store.verify()


@pytest.mark.parametrize("tokens", ["patches", "cls", "registers", "all"])
def test_token_selections_and_provenance(reg_model, tmp_path, tokens):
    images = random_images(5, size=(40, 30))
    site = "blocks.1.hook_resid_post"
    store = cache_activations(
        reg_model,
        images,
        sites=[site],
        tokens=tokens,
        out_dir=tmp_path / tokens,
        dtype="float32",
        batch_size=2,
        progress=False,
    )
    ref_btd = reference(reg_model, images, site, 2)
    idx = reg_model.layout.token_indices(tokens)
    assert store.tokens == tokens and store.metadata["token_indices"] == idx.tolist()
    rows = list(store.ordered(site, batch_size=3))
    acts = torch.cat([r.acts for r in rows])
    image_n = torch.cat([r.image_idx for r in rows])
    token_n = torch.cat([r.token_idx for r in rows])
    assert len(acts) == 5 * len(idx)
    # Provenance maps every row back to its image and token in the reference forward.
    assert torch.equal(acts, ref_btd[image_n, token_n])
    assert token_n.unique().tolist() == idx.tolist()


def test_metadata_is_canonical_portable_and_fingerprinted(tiny_model, tmp_path):
    store = cache_activations(
        tiny_model, random_images(3), sites=SITES[:1], out_dir=tmp_path / "s", progress=False
    )
    again = ActivationStore(tmp_path / "s")
    assert again.fingerprint == store.fingerprint and len(store.fingerprint) == 16
    text = (tmp_path / "s" / "metadata.json").read_text()
    assert (
        str(tmp_path) not in text
        and text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":")) + "\n"
    )
    meta = store.metadata
    assert meta["backbone_id"] == tiny_model.backbone_id and meta["d_model"] == 192
    assert meta["layout"] == tiny_model.layout.to_dict() and meta["dtype"] == "float16"
    assert store.layout == tiny_model.layout and store.labels is None


def test_stop_after_deepest_site_is_not_slower_path(tiny_model, tmp_path, monkeypatch):
    seen = []
    original = tiny_model.run_with_cache

    def spy(*args, **kwargs):
        seen.append(kwargs.get("stop_at_layer"))
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_model, "run_with_cache", spy)
    cache_activations(tiny_model, random_images(2), sites=SITES, out_dir=tmp_path / "s", progress=False)
    assert seen[-1] == 2  # blocks 0 and 1 only; block 2 never runs


def test_store_writer_builds_a_store_from_arrays(tiny_model, tmp_path):
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((10 * 16, 8)).astype(np.float32)
    writer = StoreWriter(
        tmp_path / "w",
        backbone_id="saev:test",
        sites={"blocks.0.hook_resid_post": 8},
        d_model=8,
        layout=tiny_model.layout,
        tokens="patches",
        dtype="float32",
        shard_rows=48,
        label_names=["a", "b"],
    )
    for lo in range(0, 160, 37):
        hi = min(lo + 37, 160)
        rows = np.arange(lo, hi)
        writer.append({"blocks.0.hook_resid_post": acts[lo:hi]}, rows // 16, rows % 16 + 1)
    store = writer.finish(labels=[0, 1] * 5)
    assert [s["n_rows"] for s in store.shards] == [48, 48, 48, 16]
    assert np.array_equal(store.read_rows("blocks.0.hook_resid_post", 0, 160).numpy(), acts)
    assert store.labels.tolist() == [0, 1] * 5 and store.label_names == ["a", "b"]
    store.verify()
    with pytest.raises(ValueError, match="increasing"):
        w2 = StoreWriter(
            tmp_path / "w2", backbone_id="x", sites=["s"], d_model=8, layout=tiny_model.layout, tokens="all"
        )
        w2.append({"s": acts[:2]}, [1, 0], [0, 0])
