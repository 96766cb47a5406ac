"""NaN and Inf never become a store: recording refuses them per batch naming the images (float16 overflow
counts), StoreWriter refuses them, and ``verify`` finds non-finite rows in a store whose checksums hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import LAYOUT, SITE, build_tiny, random_images, reseal_store, synthetic_rows, write_store
from PIL import Image

from vision_sae_lens.cli import main
from vision_sae_lens.errors import NonFiniteError, StoreCorruptError, StoreError
from vision_sae_lens.store import ActivationStore, StoreWriter, cache_activations

RECORDED = "blocks.1.hook_resid_post"


@pytest.fixture
def nan_on_white():
    """The tiny ViT, whose first block gives NaN for an all-white image (as a diverging model would)."""
    model = build_tiny()
    seen = {}
    model.backbone.register_forward_pre_hook(lambda mod, args: seen.update(pixels=args[0]))

    def poison(mod, args, out):
        white = seen["pixels"].flatten(1).amin(dim=1) > 0.99
        out[white] = float("nan")
        return out

    model.spec.blocks[0].register_forward_hook(poison)
    return model


def _folder(root, white_at: int | None = None, n: int = 6):
    root.mkdir()
    for i, img in enumerate(random_images(n)):
        (Image.new("RGB", (32, 32), "white") if i == white_at else img).save(root / f"img{i}.png")
    return root


def test_recording_refuses_nan_naming_the_image_and_seals_nothing(nan_on_white, tmp_path):
    images = _folder(tmp_path / "images", white_at=4)
    with pytest.raises(NonFiniteError, match=r"1 image\(s\): 4 \(img4\.png\)") as err:
        cache_activations(
            nan_on_white, str(images), sites=[RECORDED], out_dir=tmp_path / "store", shard_images=2,
            batch_size=2, progress=False,
        )  # fmt: skip
    assert "NaN or Inf" in str(err.value)
    assert not (tmp_path / "store" / "metadata.json").exists()
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore(tmp_path / "store")
    # Without the poisoned image the same model records a finite store that verifies.
    clean = cache_activations(
        nan_on_white,
        str(_folder(tmp_path / "clean")),
        sites=[RECORDED],
        out_dir=tmp_path / "ok",
        progress=False,
    )
    clean.verify()


def test_float16_overflow_to_inf_is_refused_and_float32_records(tmp_path):
    model = build_tiny()
    with torch.no_grad():
        model.backbone.patch_embed.proj.weight.mul_(1e6)  # activations far beyond float16's 65504
    images = random_images(2)
    with pytest.raises(NonFiniteError, match="overflow float16 to Inf; record with --dtype float32"):
        cache_activations(model, images, sites=[RECORDED], out_dir=tmp_path / "fp16", progress=False)
    store = cache_activations(
        model, images, sites=[RECORDED], out_dir=tmp_path / "fp32", dtype="float32", progress=False
    )
    assert np.isfinite(store.read_rows(RECORDED, 0, store.n_rows).numpy()).all()


def test_store_writer_refuses_nan_and_inf_rows(tmp_path):
    writer = StoreWriter(
        tmp_path / "s", backbone_id="x", sites=[SITE], d_model=4, layout=LAYOUT, tokens="patches",
        dtype="float16",
    )  # fmt: skip
    rows = np.ones((32, 4), dtype=np.float32)
    rows[20, 1] = 1e6  # float16 overflow
    with pytest.raises(NonFiniteError, match=r"images \[1\]"):
        writer.append({SITE: rows}, np.repeat([0, 1], 16), np.tile(np.arange(1, 17), 2))
    writer.abort()


def test_verify_finds_nan_rows_in_a_store_whose_checksums_hold(tmp_path, capsys):
    store = write_store(tmp_path / "acts", {SITE: synthetic_rows(64 * 16, 32)})

    def poison(rows_nd):
        rows_nd[[7, 300], 3] = [np.nan, np.inf]
        return rows_nd

    reseal_store(store.path, rows={(SITE, 0): poison})
    opened = ActivationStore(store.path)  # the hashes hold: opening cannot tell
    with pytest.raises(
        StoreCorruptError, match=r"2 of 1024 rows hold NaN or Inf \(first: row 7 of the store\)"
    ):
        opened.verify()
    assert main(["verify", str(store.path)]) == 1
    assert "NaN or Inf" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_the_bit_test_agrees_with_torch_isfinite_on_every_kind_of_value(dtype):
    from vision_sae_lens.store import format as fmt
    from vision_sae_lens.store.checks import nonfinite_rows

    unsigned = np.uint32 if dtype == "float32" else np.uint16
    bits = np.random.default_rng(0).integers(
        0, np.iinfo(unsigned).max, (20000, 3), dtype=unsigned, endpoint=True
    )
    special = torch.tensor(
        [[0.0, -0.0, 1e-45], [float("inf"), 1.0, 2.0], [-float("inf"), 0, 0], [float("nan"), 0, 0]]
    )
    rows = np.concatenate([bits.view(fmt.NUMPY_STORAGE[dtype]), fmt.to_storage(special, dtype)])
    expected = ~torch.isfinite(fmt.as_torch(rows.copy(), dtype)).all(dim=1).numpy()
    assert expected.any() and not expected.all()
    assert np.array_equal(nonfinite_rows(rows, dtype), expected)
