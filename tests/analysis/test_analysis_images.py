"""Image-level API: encode/decode shaped like the image, heatmaps placed on the original pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analysis_helpers import SITE, make_sae, noise_images
from PIL import Image
from sae_lens import StandardSAE, StandardSAEConfig

from vision_sae_lens.analysis import decode, encode_images, heatmap, heatmap_array, input_geometry
from vision_sae_lens.errors import ImageInputError, SAEMismatchError, UnknownSiteError
from vision_sae_lens.metadata import VisionFacts, apply_vision_facts


def test_encode_images_equals_sae_on_cached_site(vit):
    images = noise_images(5)
    sae = make_sae(vit, tokens="all")
    feats = encode_images(vit, sae, images, batch_size=2, progress=False)
    _, cache = vit.run_with_cache(images, names_filter=[SITE])
    with torch.no_grad():
        ref_bts = sae.encode(cache[SITE])
    assert feats.patches.shape == (5, 4, 4, 48)
    torch.testing.assert_close(feats.patches, ref_bts[:, 1:].reshape(5, 4, 4, 48), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(feats.cls, ref_bts[:, 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(feats.tokens_bts(), ref_bts, rtol=1e-5, atol=1e-6)
    assert feats.to_sparse().is_sparse
    recon = decode(sae, feats)
    assert recon.patches.shape == (5, 4, 4, vit.d_model)
    with torch.no_grad():
        torch.testing.assert_close(recon.patches, sae.decode(feats.patches))
        torch.testing.assert_close(decode(sae, feats.patches), sae.decode(feats.patches))


def test_patches_only_sae_has_no_prefix_and_cls_sae_has_no_grid(vit):
    images = noise_images(2)
    assert encode_images(vit, make_sae(vit, tokens="patches"), images, progress=False).prefix is None
    cls_feats = encode_images(vit, make_sae(vit, tokens="cls"), images, progress=False)
    assert cls_feats.patches is None and cls_feats.cls.shape == (2, 48)


def test_input_geometry_matches_the_backbones_real_transform(vit):
    """A coordinate ramp through the model's own preprocessing lands where the geometry says."""
    width, height = 61, 47
    ramp = np.zeros((height, width, 3), np.float32)
    ramp[..., 0] = np.arange(width)[None, :] * 255 / (width - 1)
    ramp[..., 1] = np.arange(height)[:, None] * 255 / (height - 1)
    img = Image.fromarray(ramp.round().astype(np.uint8))
    pixels = vit.preprocess([img])[0]
    mean = torch.tensor(vit.preprocessing["mean"])[:, None, None]
    std = torch.tensor(vit.preprocessing["std"])[:, None, None]
    seen = (pixels * std + mean) * 255
    geo = input_geometry(vit.preprocessing, vit.layout, img.size)
    for v, u in [(8, 8), (20, 12), (16, 27)]:
        x, y = geo.to_original(u + 0.5, v + 0.5)
        assert abs(float(seen[0, v, u]) * (width - 1) / 255 - (x - 0.5)) < 0.8
        assert abs(float(seen[1, v, u]) * (height - 1) / 255 - (y - 0.5)) < 0.8


def one_patch_sae(model, image, patch: int) -> StandardSAE:
    """An SAE whose latent 0 fires on ``patch`` of ``image`` and nowhere else."""
    _, cache = model.run_with_cache([image], names_filter=[SITE])
    acts_td = cache[SITE][0, model.layout.n_prefix :]
    others = torch.cat([acts_td[:patch], acts_td[patch + 1 :]])
    direction = acts_td[patch] - others.mean(0)
    direction = direction / direction.norm()
    proj_target, proj_others = float(acts_td[patch] @ direction), float((others @ direction).max())
    assert proj_target > proj_others, "the synthetic latent must separate the patch"
    sae = StandardSAE(StandardSAEConfig(d_in=model.d_model, d_sae=4))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[:, 0] = direction
        sae.b_enc.fill_(-1e6)
        sae.b_enc[0] = -(proj_target + proj_others) / 2
        sae.b_dec.zero_()
    apply_vision_facts(sae, VisionFacts(model.backbone_id, SITE, "patches", model.layout))
    return sae


@pytest.mark.parametrize("size", [(61, 47), (40, 70), (32, 32)])
def test_heatmap_lights_the_original_pixels_of_the_patch_that_fired(vit, size):
    image = noise_images(1, size=size, seed=3)[0]
    patch = 6  # row 1, column 2 of the 4x4 grid
    sae = one_patch_sae(vit, image, patch)
    heat = heatmap_array(vit, sae, image, latent=0)
    assert heat.shape == (size[1], size[0])
    hot_y, hot_x = np.nonzero(np.nan_to_num(heat) > 0)
    # Where the patch's input pixels come from, measured through the model's own transform.
    geo = input_geometry(vit.preprocessing, vit.layout, image.size)
    left, top, right, bottom = geo.box_in_original(vit.layout.patch_box(patch))
    assert hot_x.min() == pytest.approx(left, abs=1.0) and hot_x.max() + 1 == pytest.approx(right, abs=1.0)
    assert hot_y.min() == pytest.approx(top, abs=1.0) and hot_y.max() + 1 == pytest.approx(bottom, abs=1.0)
    # Everything the model saw outside that patch is exactly zero; cropped-off pixels are NaN.
    seen = ~np.isnan(heat)
    assert bool(seen.any()) and np.count_nonzero(heat[seen] > 0) == len(hot_x)
    if size[0] != size[1]:
        assert bool(np.isnan(heat).any())
    pic = heatmap(vit, sae, image, latent=0)
    assert pic.size == image.size and pic.mode == "RGB"
    diff = np.abs(np.asarray(pic, np.int16) - np.asarray(image.convert("RGB"), np.int16)).sum(-1)
    assert diff[hot_y, hot_x].mean() > 10 * (diff[seen & (np.nan_to_num(heat) == 0)].mean() + 1e-3)


def test_image_api_bad_inputs(vit):
    sae = make_sae(vit)
    with pytest.raises(ImageInputError, match="empty"):
        encode_images(vit, sae, [])
    with pytest.raises(IndexError, match="out of range"):
        heatmap(vit, sae, noise_images(1)[0], latent=48)
    wrong_width = StandardSAE(StandardSAEConfig(d_in=64, d_sae=8))
    wrong_width.cfg.metadata.hook_name = SITE
    with pytest.raises(SAEMismatchError, match="d_in=64"):
        encode_images(vit, wrong_width, noise_images(1))
    wrong_site = make_sae(vit, site="blocks.0.hook_resid_post")
    wrong_site.cfg.metadata.hook_name = "blocks.7.hook_resid_post"
    with pytest.raises(UnknownSiteError):
        encode_images(vit, wrong_site, noise_images(1))
    with pytest.raises(ImageInputError):
        heatmap(vit, sae, 3.0, latent=0)
