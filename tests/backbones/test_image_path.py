"""One image path: the same RGBA / LA / P / CMYK / 16-bit image gives torch.equal pixels through every
entry point (model.preprocess, a file path, run_with_cache, uint8 tensors, recording, interventions,
downstream metrics), and odd modes are converted sensibly (alpha on white, 16-bit scaled)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from ported_helpers import get_hooked_sae, tiny_model

from vision_sae_lens.analysis import ablate
from vision_sae_lens.backbones.images import to_model_mode
from vision_sae_lens.store.recorder import cache_activations
from vision_sae_lens.train.downstream import _pixel_batches


def make_image(mode: str) -> Image.Image:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (40, 48, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rng.random((40, 48)) < 0.5, 0, rgba[..., 3])  # half fully transparent
    base = Image.fromarray(rgba, "RGBA")
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (40, 48), dtype=np.uint16))
    if mode == "P":
        p = base.convert("RGB").convert("P")
        p.info["transparency"] = 0
        return p
    return base.convert(mode) if mode != "RGBA" else base


MODES = ["RGBA", "LA", "P", "CMYK", "I;16"]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture
def seen(model):
    """Every pixel batch that reaches the backbone."""
    batches: list[torch.Tensor] = []
    handle = model.backbone.register_forward_pre_hook(
        lambda mod, args: batches.append(args[0].detach().clone())
    )
    yield batches
    handle.remove()


@pytest.mark.parametrize("mode", MODES)
def test_every_entry_point_gives_equal_pixels(model, seen, mode, tmp_path):
    img = make_image(mode)
    want = model.preprocess([img])
    path = tmp_path / ("img.tif" if mode == "CMYK" else "img.png")
    img.save(path)
    assert Image.open(path).mode == img.mode
    assert torch.equal(model.preprocess(path), want)
    assert torch.equal(model.preprocess(str(path)), want)

    model.run_with_cache([img], names_filter="hook_embed")
    assert torch.equal(seen.pop(), want)

    cache_activations(
        model, [img], sites=["hook_embed"], out_dir=tmp_path / "store", tokens="all", progress=False
    )
    assert any(torch.equal(b, want) for b in seen), "the recorder saw other pixels"
    seen.clear()

    sae = get_hooked_sae(model, "blocks.0.hook_resid_post")
    ablate(model, sae, [img], latents=[0])
    assert seen and all(torch.equal(b, want) for b in seen), "interventions saw other pixels"
    seen.clear()

    (pixels, _), *_ = list(_pixel_batches(model, [img], [0], 1))
    assert torch.equal(pixels, want)


def test_uint8_rgba_tensor_equals_the_pil_image(model):
    img = make_image("RGBA")
    tensor = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    assert torch.equal(model.preprocess(tensor), model.preprocess([img]))


def test_transparent_pixels_are_composited_on_white():
    img = Image.new("RGBA", (4, 4), (10, 200, 30, 0))
    assert np.asarray(to_model_mode(img)).tolist() == np.full((4, 4, 3), 255).tolist()
    half = Image.new("LA", (2, 2), (0, 128))
    assert int(np.asarray(to_model_mode(half, 1)).max()) in (127, 128)


def test_16_bit_images_are_scaled_not_clipped():
    arr = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    out = np.asarray(to_model_mode(Image.fromarray(arr), 1))
    assert out.tolist() == [[0, 100, 255]]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pixels_follow_model_dtype(dtype):
    model = tiny_model().to(dtype)
    img = make_image("RGBA")
    for images in (
        [img],
        torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8),
        torch.randn(1, 3, 32, 32),
    ):
        pixels = model.preprocess(images)
        assert pixels.dtype == dtype and pixels.device == model.device
    out = model([img])
    assert out.dtype == dtype and model.cfg.dtype == dtype
