"""SAELens' comparison tests (current vs previous implementation), ported to images.

Source: decoderesearch/SAELens, tests/analysis/test_hooked_sae_transformer_comparison.py, commit
721ed96240b02df9fadda3bb86723970cb721cb1. Upstream compares ``HookedSAETransformer`` with a vendored
older implementation; on images the reference is SAELens' own, unmodified ``add_sae`` and ``_SAEWrapper``
on an identical hooked ViT (:class:`ported_helpers.SAELensReference`), against which ``HookedSAEViT``'s
splicing must agree in outputs, caches and SAE gradients. Weights are copied rather than synced
between two SAE classes.
"""

from __future__ import annotations

import pytest
from ported_helpers import assert_close, get_hooked_sae, images, reference_twin, sae_copy, tiny_model

PROMPT = images()
ACT_NAME = "blocks.0.hook_mlp_out"


@pytest.fixture(scope="module")
def new_model():
    model = tiny_model()
    yield model
    model.reset_saes()


@pytest.fixture(scope="module")
def old_model(new_model):
    model = reference_twin(new_model)
    yield model
    model.reset_saes()


def pair(model, act_name=ACT_NAME):
    sae = get_hooked_sae(model, act_name)
    return sae, sae_copy(sae)


@pytest.mark.parametrize("use_error_term", [False, True])
def test_sae_behavior_matches_old(new_model, old_model, use_error_term):
    """Upstream: test_sae_behavior_matches_old_no_error_term / _with_error_term."""
    new_sae, old_sae = pair(new_model)
    new_model.add_sae(new_sae, use_error_term=use_error_term)
    old_model.add_sae(old_sae, use_error_term=use_error_term)
    assert_close(new_model(PROMPT), old_model(PROMPT), atol=1e-4 if use_error_term else 1e-5)
    new_model.reset_saes()
    old_model.reset_saes()


@pytest.mark.parametrize("use_error_term", [False, True])
def test_gradients_match_old(new_model, old_model, use_error_term):
    """Upstream: test_gradients_match_old_no_error_term / _with_error_term."""
    new_sae, old_sae = pair(new_model)
    grads = []
    outputs = []
    for model, sae in ((new_model, new_sae), (old_model, old_sae)):
        model.add_sae(sae, use_error_term=use_error_term)
        out = model(PROMPT)
        out.sum().backward()
        outputs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None})
        sae.zero_grad()
        model.zero_grad()
        model.reset_saes()
    assert_close(outputs[0], outputs[1], atol=1e-4)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert_close(grads[0][name], grads[1][name], atol=1e-5)


@pytest.mark.parametrize("use_error_term", [False, True])
def test_run_with_cache_matches_old(new_model, old_model, use_error_term):
    new_sae, old_sae = pair(new_model)
    new_out, new_cache = new_model.run_with_cache_with_saes(
        PROMPT, saes=[new_sae], use_error_term=use_error_term
    )
    old_out, old_cache = old_model.run_with_cache_with_saes(
        PROMPT, saes=[old_sae], use_error_term=use_error_term
    )
    assert_close(new_out, old_out, atol=1e-5)
    key = ACT_NAME + ".hook_sae_acts_post"
    assert_close(new_cache[key], old_cache[key], atol=1e-5)


def test_run_with_saes_matches_old(new_model, old_model):
    new_sae, old_sae = pair(new_model)
    assert_close(
        new_model.run_with_saes(PROMPT, saes=[new_sae], use_error_term=False),
        old_model.run_with_saes(PROMPT, saes=[old_sae], use_error_term=False),
        atol=1e-5,
    )


def test_context_manager_matches_old(new_model, old_model):
    new_sae, old_sae = pair(new_model)
    with new_model.saes(saes=[new_sae], use_error_term=False):
        new_out = new_model(PROMPT)
    with old_model.saes(saes=[old_sae], use_error_term=False):
        old_out = old_model(PROMPT)
    assert_close(new_out, old_out, atol=1e-5)


def test_multiple_hook_points_match_old(new_model, old_model):
    names = ["blocks.0.hook_mlp_out", "blocks.0.hook_resid_pre"]
    pairs = [pair(new_model, name) for name in names]
    for new_sae, old_sae in pairs:
        new_model.add_sae(new_sae, use_error_term=False)
        old_model.add_sae(old_sae, use_error_term=False)
    assert_close(new_model(PROMPT), old_model(PROMPT), atol=1e-5)
    new_model.reset_saes()
    old_model.reset_saes()
