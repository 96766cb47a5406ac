"""saev shard directories (both protocols) read with provenance and converted to our store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vision_sae_lens.errors import ConversionError
from vision_sae_lens.hub import convert_saev_shards, read_saev_shards


def write_saev_shards(root, *, protocol, n_images=7, per_shard=3, layers=(-2, 5), n_patches=4, cls=True, d=8):
    """A saev shard directory as saev writes it; returns the logical (images, layers, tokens, d) array."""
    root.mkdir(parents=True)
    T = n_patches + int(cls)
    data = np.random.default_rng(0).normal(size=(n_images, len(layers), T, d)).astype(np.float32)
    counts = [min(per_shard, n_images - i) for i in range(0, n_images, per_shard)]
    start = 0
    for i, n in enumerate(counts):
        data[start : start + n].tofile(root / f"acts{i:06d}.bin")
        start += n
    if protocol == "1.0.0":
        md = {
            "vit_family": "clip",
            "vit_ckpt": "ViT-B-16/openai",
            "layers": list(layers),
            "n_patches_per_img": n_patches,
            "cls_token": cls,
            "d_vit": d,
            "n_imgs": n_images,
            "max_patches_per_shard": per_shard * T * len(layers),
            "data": {"__class__": "Imagenet"},
            "dtype": "float32",
            "protocol": "1.0.0",
        }
        shards = [{"name": f"acts{i:06d}.bin", "n_imgs": n} for i, n in enumerate(counts)]
    else:
        md = {
            "family": "dinov2",
            "ckpt": "dinov2_vitb14_reg",
            "layers": list(layers),
            "content_tokens_per_example": n_patches,
            "cls_token": cls,
            "d_model": d,
            "n_examples": n_images,
            "max_tokens_per_shard": per_shard * T * len(layers),
            "data": "gASVCAAAAAAAAACMBGV2aWyULg==",
            "dataset": "/abs/path/imagenet",
            "pixel_agg": None,
            "dtype": "float32",
            "protocol": "2.1",
        }
        shards = [{"name": f"acts{i:06d}.bin", "n_examples": n} for i, n in enumerate(counts)]
    (root / "metadata.json").write_text(json.dumps(md))
    (root / "shards.json").write_text(json.dumps(shards))
    return data


@pytest.mark.parametrize("protocol", ["1.0.0", "2.1"])
def test_read_with_provenance(tmp_path, protocol):
    data = write_saev_shards(tmp_path / "s", protocol=protocol)
    blocks = list(read_saev_shards(tmp_path / "s", images_per_block=2))
    image_idx = np.concatenate([b.image_idx for b in blocks])
    token_idx = np.concatenate([b.token_idx for b in blocks])
    acts = np.concatenate([b.acts_by_layer[5] for b in blocks])
    np.testing.assert_array_equal(acts, data[image_idx, 1, token_idx])
    assert image_idx.tolist() == sorted(image_idx.tolist()) and image_idx[-1] == 6 and len(acts) == 7 * 5


@pytest.mark.parametrize("protocol", ["1.0.0", "2.1"])
def test_convert_to_store(tmp_path, protocol):
    data = write_saev_shards(tmp_path / "s", protocol=protocol)
    store = convert_saev_shards(tmp_path / "s", out_dir=tmp_path / "store", n_layers=12)
    assert store.sites == ["blocks.10.hook_resid_post", "blocks.5.hook_resid_post"]
    assert store.n_images == 7 and store.n_rows == 7 * 5 and store.tokens == "all"
    patch = 16 if protocol == "1.0.0" else 14
    assert store.layout.patch_size == (patch, patch) and store.layout.grid == (2, 2)
    rows = store.read_rows("blocks.10.hook_resid_post", 0, store.n_rows)
    image_idx, token_idx = store.provenance(0, store.n_rows)
    torch.testing.assert_close(rows, torch.from_numpy(data[image_idx, 0, token_idx]))
    store.verify()


def test_negative_layer_needs_n_layers_and_bad_dirs_refused(tmp_path):
    write_saev_shards(tmp_path / "s", protocol="2.1")
    with pytest.raises(ConversionError, match="n_layers"):
        convert_saev_shards(tmp_path / "s", out_dir=tmp_path / "o1")
    (tmp_path / "s" / "acts000002.bin").write_bytes(b"short")
    with pytest.raises(ConversionError, match="shorter"):
        list(read_saev_shards(tmp_path / "s"))
    with pytest.raises(ConversionError, match="not a saev shard directory"):
        read_saev_shards(tmp_path).__next__()


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("layers", ["../../x"], "field layers"),
        ("layers", [1.5], "field layers"),
        ("layers", [5, 5], "field layers"),
        ("layers", [True], "field layers"),
        ("layers", [10**6], "field layers"),
        ("n_examples", -2, "field n_examples"),
        ("n_examples", "2e9", "field n_examples"),
        ("n_examples", 7.0, "field n_examples"),
        ("d_model", 10**9, "field d_model"),
        ("content_tokens_per_example", 0, "field content_tokens_per_example"),
        ("cls_token", "yes", "field cls_token"),
        ("ckpt", "vit\x1b[2J", "field ckpt"),
        ("family", None, "field family"),
    ],
)
def test_every_header_field_is_checked_and_named(tmp_path, field, value, named):
    write_saev_shards(tmp_path / "s", protocol="2.1")
    md = json.loads((tmp_path / "s" / "metadata.json").read_text())
    md[field] = value
    (tmp_path / "s" / "metadata.json").write_text(json.dumps(md))
    with pytest.raises(ConversionError, match=named):
        convert_saev_shards(tmp_path / "s", out_dir=tmp_path / "store", n_layers=12)
    assert not (tmp_path / "store").exists()


def test_shard_counts_and_the_chosen_layer_are_checked(tmp_path):
    write_saev_shards(tmp_path / "s", protocol="2.1", layers=(1, 5))
    shards = json.loads((tmp_path / "s" / "shards.json").read_text())
    with pytest.raises(ConversionError, match="layer 1.5 is not in this saev directory"):
        convert_saev_shards(tmp_path / "s", out_dir=tmp_path / "store", layer=1.5)
    with pytest.raises(ConversionError, match="outside a backbone of 4 blocks"):
        convert_saev_shards(tmp_path / "s", out_dir=tmp_path / "store", n_layers=4, layer=5)
    shards[0]["n_examples"] = "3"
    (tmp_path / "s" / "shards.json").write_text(json.dumps(shards))
    with pytest.raises(ConversionError, match="shards.json entry 0 field n_examples"):
        convert_saev_shards(tmp_path / "s", out_dir=tmp_path / "store")
    assert not (tmp_path / "store").exists()
