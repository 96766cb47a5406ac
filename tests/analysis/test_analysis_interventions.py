"""Ablation and steering: exact clean output without edits, equivalence with plain-model hooks."""

from __future__ import annotations

import pytest
import torch
from analysis_helpers import SITE, make_sae, noise_images

from vision_sae_lens.analysis import ablate, edit_latents, encode_images, feature_stats, steer
from vision_sae_lens.errors import ImageInputError, SAEMismatchError


@pytest.fixture(scope="module")
def images():
    return noise_images(4, seed=5)


def plain_with_site_hook(model, images, fn):
    """The model without any SAE, with ``fn(acts_btd)`` replacing the site's activations."""
    with torch.no_grad():
        out = model.run_with_hooks(images, fwd_hooks=[(SITE, lambda acts, hook: fn(acts.clone()))])
    return model.output_tensor(out)


def test_no_edit_with_error_term_reproduces_the_clean_output_exactly(vit, images):
    sae = make_sae(vit)
    for result in (
        ablate(vit, sae, images, latents=[], mode="zero"),
        steer(vit, sae, images, latent=3, scale=0.0, max_activation=1.0),
        edit_latents(vit, sae, images, lambda acts, mask: acts),
    ):
        assert torch.equal(result.edited, result.clean)
        assert result.metrics()["max_abs_change"] == 0.0
    with torch.no_grad():
        assert torch.equal(result.clean, vit(images))


def test_ablating_every_latent_without_error_term_is_replacing_the_site_by_the_decoder_bias(vit, images):
    sae = make_sae(vit)
    everything = list(range(sae.cfg.d_sae))
    result = ablate(vit, sae, images, latents=everything, mode="zero", keep_error=False)

    def to_bias(acts):
        acts[:, 1:] = sae.b_dec  # patches only: the CLS token bypasses a patches SAE
        return acts

    torch.testing.assert_close(
        result.edited, plain_with_site_hook(vit, images, to_bias), rtol=1e-5, atol=1e-5
    )
    with torch.no_grad():
        sae.b_dec.zero_()
    zeroed = ablate(vit, sae, images, latents=everything, mode="zero", keep_error=False)

    def to_zero(acts):
        acts[:, 1:] = 0.0
        return acts

    torch.testing.assert_close(
        zeroed.edited, plain_with_site_hook(vit, images, to_zero), rtol=1e-5, atol=1e-5
    )
    assert zeroed.metrics()["max_abs_change"] > 0


def test_zero_ablation_with_error_term_removes_exactly_that_latents_decoder_contribution(vit, images):
    sae = make_sae(vit)
    feats = encode_images(vit, sae, images, progress=False)
    latent = int(feats.patches.flatten(0, 2).sum(0).argmax())
    patches = [1, 5, 10]
    result = ablate(vit, sae, images, latents=[latent], mode="zero", patches=patches)

    def remove(acts):
        f_bt = feats.patches[..., latent].flatten(1)  # (b, patches)
        tok = torch.tensor(patches)
        acts[:, tok + 1] -= f_bt[:, tok, None] * sae.W_dec[latent]
        return acts

    torch.testing.assert_close(result.edited, plain_with_site_hook(vit, images, remove), rtol=1e-4, atol=1e-5)
    metrics = result.metrics()
    assert metrics["mean_kl"] > 0 and len(metrics["kl"]) == len(images)
    assert metrics["clean_top1"] == result.clean.argmax(-1).tolist()


def test_mean_clamp_and_steer_edit_only_the_chosen_patches(vit, images):
    sae = make_sae(vit)
    feats = encode_images(vit, sae, images, progress=False)
    latent = int(feats.patches.flatten(0, 2).sum(0).argmax())
    max_act = float(feats.patches[..., latent].max())
    steered = steer(vit, sae, images, latent=latent, scale=2.0, patches=[0])
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 0] = True
    same = steer(vit, sae, images, latent=latent, scale=2.0, patches=mask, max_activation=max_act)
    assert torch.equal(steered.edited, same.edited)

    def push(acts):
        acts[:, 1] += 2.0 * max_act * sae.W_dec[latent]
        return acts

    torch.testing.assert_close(steered.edited, plain_with_site_hook(vit, images, push), rtol=1e-4, atol=1e-5)
    stats = feature_stats(sae, images, model=vit, progress=False)
    mean_result = ablate(vit, sae, images, latents=[latent], mode="mean", means=stats)
    default_mean = ablate(vit, sae, images, latents=[latent], mode="mean")
    torch.testing.assert_close(mean_result.edited, default_mean.edited)
    clamped = ablate(
        vit, sae, images, latents=[latent], mode="clamp", value=float(stats.mean_activation[latent])
    )
    torch.testing.assert_close(clamped.edited, mean_result.edited)


def test_intervention_bad_inputs(vit, images):
    sae = make_sae(vit)
    with pytest.raises(IndexError, match="48 latents"):
        ablate(vit, sae, images, latents=[48])
    with pytest.raises(IndexError, match="out of range"):
        steer(vit, sae, images, latent=-1, scale=1.0)
    with pytest.raises(ValueError, match="clamp"):
        ablate(vit, sae, images, latents=[0], mode="clamp")
    with pytest.raises(ValueError, match="unknown mode"):
        ablate(vit, sae, images, latents=[0], mode="shuffle")
    with pytest.raises(IndexError, match="patch indices"):
        ablate(vit, sae, images, latents=[0], patches=[16])
    with pytest.raises(ImageInputError, match="empty"):
        ablate(vit, sae, [], latents=[0])
    cls_sae = make_sae(vit, tokens="cls")
    with pytest.raises(ValueError, match="none of the chosen patches"):
        ablate(vit, cls_sae, images, latents=[0], patches=[0])
    bad = make_sae(vit)
    bad.cfg.metadata.hook_name = ""
    with pytest.raises(SAEMismatchError, match="hook_name"):
        ablate(vit, bad, images, latents=[0])
