"""Spliced SAEs differentiate exactly like SAELens' own wrapper, and edits of the error term take effect.

The reference is SAELens' unmodified ``add_sae`` / ``_SAEWrapper`` on an identical hooked ViT. With
``use_error_term=True`` SAELens treats the error as a constant, so gradients reach pixels, earlier
SAEs and the backbone only through the SAE reconstruction; our forward value stays the clean model's
bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from ported_helpers import get_hooked_sae, images, reference_twin, sae_copy, tiny_model

SITES = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"]


@pytest.fixture(scope="module")
def models():
    ours = tiny_model()
    return ours, reference_twin(ours)


def _grads(model, saes, *, exclude=False):
    pixels = images().requires_grad_(True)
    for sae in saes:
        model.add_sae(sae, use_error_term=True, exclude_special_tokens=exclude)
    try:
        out = model(pixels)
        params = [p for sae in saes for p in sae.parameters()]
        grads = torch.autograd.grad(out.square().sum(), [pixels, *params], allow_unused=True)
    finally:
        model.reset_saes()
    return out.detach(), grads


@pytest.mark.parametrize("exclude", [False, True], ids=["all-tokens", "exclude-cls"])
def test_pixel_and_sae_parameter_gradients_equal_saelens(models, exclude):
    ours, ref = models
    saes = [get_hooked_sae(ours, site) for site in SITES]
    out, grads = _grads(ours, saes, exclude=exclude)
    ref_out, ref_grads = _grads(ref, [sae_copy(s) for s in saes], exclude=exclude)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    assert grads[0].abs().sum() > 0
    for ours_g, ref_g in zip(grads, ref_grads, strict=True):
        assert (ours_g is None) == (ref_g is None)
        if ours_g is not None:
            torch.testing.assert_close(ours_g, ref_g, atol=1e-6, rtol=1e-4)


def test_pixel_gradient_is_not_identity_plus_jacobian(models):
    """Fault check: the plain model's pixel gradient (what 'identity + SAE Jacobian' minus J would give)
    differs from the spliced one, so the equality above is not vacuous."""
    ours, _ = models
    sae = get_hooked_sae(ours, SITES[0])
    _, (g_spliced, *_) = _grads(ours, [sae])
    pixels = images().requires_grad_(True)
    (g_plain,) = torch.autograd.grad(ours(pixels).square().sum(), [pixels])
    assert not torch.allclose(g_spliced, g_plain, atol=1e-6)


@pytest.mark.parametrize("exclude", [False, True, [3, 4]])
def test_error_term_output_is_bit_identical_to_plain_model(models, exclude):
    ours, _ = models
    pixels = images()
    plain = ours.backbone(pixels)
    saes = [get_hooked_sae(ours, s) for s in [*SITES, "blocks.0.attn.hook_z", "blocks.0.mlp.hook_in"]]
    out = ours.run_with_saes(pixels, saes=saes, use_error_term=True, exclude_special_tokens=exclude)
    assert torch.equal(out, plain)
    _, cache = ours.run_with_cache_with_saes(pixels, saes=saes, use_error_term=True)
    assert torch.equal(_, plain)


def _zero_new(error, hook):
    return torch.zeros_like(error)


def _zero_in_place_returned(error, hook):
    error.zero_()
    return error


def _zero_in_place_none(error, hook):
    error.zero_()


@pytest.mark.parametrize("edit", [_zero_new, _zero_in_place_returned, _zero_in_place_none])
def test_edits_of_hook_sae_error_take_effect(models, edit):
    ours, ref = models
    pixels = images()
    sae = get_hooked_sae(ours, SITES[0])
    ref_sae = sae_copy(sae)
    sae._use_error_term = ref_sae._use_error_term = True  # run_with_hooks_with_saes takes the SAE's setting
    fired = []
    hook = [(SITES[0] + ".hook_sae_error", lambda t, hook: (fired.append(1), edit(t, hook))[1])]
    edited = ours.run_with_hooks_with_saes(pixels, saes=[sae], fwd_hooks=hook)
    # SAELens adds the (edited) error to the reconstruction; with a zeroed error that is the bare SAE.
    ref_edited = ref.run_with_hooks_with_saes(pixels, saes=[ref_sae], fwd_hooks=hook)
    assert fired == [1, 1]
    without_error = ours.run_with_saes(pixels, saes=[sae], use_error_term=False)
    ours.reset_saes()
    torch.testing.assert_close(edited, ref_edited, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(edited, without_error, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(edited, ours.backbone(pixels), atol=1e-4)


@pytest.fixture
def hooked_error_sae(models):
    ours, _ = models
    sae = get_hooked_sae(ours, SITES[0])
    sae._use_error_term = True
    return sae


def test_bfloat16_model_with_float32_sae_runs_and_keeps_model_dtype(hooked_error_sae):
    model = tiny_model().to(torch.bfloat16)
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    plain = model(pixels)
    assert plain.dtype == torch.bfloat16
    out = model.run_with_saes(pixels, saes=[hooked_error_sae])
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, plain)
    out_no_error = model.run_with_saes(pixels, saes=[hooked_error_sae], use_error_term=False)
    assert out_no_error.dtype == torch.bfloat16
