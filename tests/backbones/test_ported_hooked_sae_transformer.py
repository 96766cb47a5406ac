"""SAELens' HookedSAETransformer tests, ported to images.

Source: ARENA-education/SAELens, tests/analysis/test_hooked_sae_transformer.py, commit
de8f150e81655441849a3e2f0e9c093effdaed0d (its sae_lens/analysis/hooked_sae_transformer.py equals the
installed sae-lens 6.54.12). Changed only where images force it: a tiny timm ViT (eager attention, so
``attn.hook_z`` exists) for TinyStories, two image tensors for the prompt, the CLS token (position 0)
for BOS, sequence positions for token ids, 2 blocks instead of 3 where a test walks layers, and a
locally built hook_z SAE where upstream downloads one. Where this package deliberately differs
(an unknown hook name raises instead of warning) the case states the difference.
"""

from __future__ import annotations

import pytest
import torch
from families import AttnOnlyViT
from ported_helpers import (
    SAE_SITES,
    Counter,
    assert_close,
    assert_not_close,
    get_hooked_sae,
    get_transcoder,
    images,
    tiny_model,
)
from sae_lens import SAE, StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from vision_sae_lens.backbones import HookedSAEViT, TokenLayout
from vision_sae_lens.compat import ActivationCache, HookPoint, SAEWrapper, get_deep_attr
from vision_sae_lens.errors import UnknownSiteError

prompt = images()


@pytest.fixture(scope="module")
def model():
    model = tiny_model()
    yield model
    model.reset_saes()


@pytest.fixture(scope="module")
def original_logits(model):
    return model(prompt)


@pytest.fixture(scope="module", params=SAE_SITES, ids=SAE_SITES)
def hooked_sae(model, request) -> SAE:
    return get_hooked_sae(model, request.param)


@pytest.fixture(scope="module")
def list_of_hooked_saes(model):
    return [get_hooked_sae(model, name) for name in SAE_SITES]


@pytest.fixture(scope="module")
def transcoder(model):
    return get_transcoder(model)


def test_model_with_no_saes_matches_original_model(model, original_logits):
    assert len(model._acts_to_saes) == 0
    assert_close(original_logits, model(prompt))


def test_model_with_saes_does_not_match_original_model(model, hooked_sae, original_logits):
    assert len(model._acts_to_saes) == 0
    model.add_sae(hooked_sae)
    assert len(model._acts_to_saes) == 1
    assert_not_close(original_logits, model(prompt))
    model.reset_saes()


def test_add_sae(model, hooked_sae):
    act_name = hooked_sae.cfg.metadata.hook_name
    model.add_sae(hooked_sae)
    assert len(model._acts_to_saes) == 1
    assert model._acts_to_saes[act_name].sae == hooked_sae
    wrapper = get_deep_attr(model, act_name)
    assert isinstance(wrapper, SAEWrapper)
    assert wrapper.sae == hooked_sae
    model.reset_saes()


def test_acts_to_saes_property_returns_unwrapped_saes(model, hooked_sae):
    act_name = hooked_sae.cfg.metadata.hook_name
    model.add_sae(hooked_sae)
    assert model.acts_to_saes[act_name] == hooked_sae
    assert not isinstance(model.acts_to_saes[act_name], SAEWrapper)
    assert isinstance(model._acts_to_saes[act_name], SAEWrapper)
    model.reset_saes()


def test_add_sae_warns_for_invalid_hook(model):
    """Deliberate difference: SAELens logs "No hook found" and skips; we raise UnknownSiteError (a
    KeyError) naming the close matches, and attach nothing (docs/coming_from_saelens.md)."""
    sae = StandardSAE(
        StandardSAEConfig(
            d_in=model.cfg.d_model,
            d_sae=model.cfg.d_model * 2,
            metadata=SAEMetadata(hook_name="invalid.hook.name"),
        )
    )
    with pytest.raises(UnknownSiteError, match="invalid.hook.name"):
        model.add_sae(sae)
    assert len(model._acts_to_saes) == 0


def test_reset_sae_warns_for_unattached_sae(model, caplog):
    with caplog.at_level("WARNING"):
        model._reset_sae("blocks.0.hook_mlp_out")
    assert "No SAE is attached to blocks.0.hook_mlp_out" in caplog.text


def test_add_sae_overwrites_prev_sae(model, hooked_sae):
    act_name = hooked_sae.cfg.metadata.hook_name
    model.add_sae(hooked_sae)
    assert model._acts_to_saes[act_name].sae == hooked_sae
    second = SAE.from_dict(hooked_sae.cfg.to_dict())
    model.add_sae(second)
    assert len(model._acts_to_saes) == 1
    assert model._acts_to_saes[act_name].sae == second
    wrapper = get_deep_attr(model, act_name)
    assert isinstance(wrapper, SAEWrapper)
    assert wrapper.sae == second
    model.reset_saes()


def test_reset_sae_removes_sae_by_default(model, hooked_sae):
    act_name = hooked_sae.cfg.metadata.hook_name
    model.add_sae(hooked_sae)
    assert get_deep_attr(model, act_name).sae == hooked_sae
    model._reset_sae(act_name)
    assert len(model._acts_to_saes) == 0
    assert isinstance(get_deep_attr(model, act_name), HookPoint)
    model.reset_saes()


def test_reset_sae_replaces_sae(model, hooked_sae):
    act_name = hooked_sae.cfg.metadata.hook_name
    second = SAE.from_dict(hooked_sae.cfg.to_dict())
    model.add_sae(hooked_sae)
    model._reset_sae(act_name, SAEWrapper(second))
    assert len(model._acts_to_saes) == 1
    wrapper = get_deep_attr(model, act_name)
    assert isinstance(wrapper, SAEWrapper)
    assert wrapper.sae == second
    model.reset_saes()


def test_reset_saes_removes_all_saes_by_default(model, list_of_hooked_saes):
    act_names = [s.cfg.metadata.hook_name for s in list_of_hooked_saes]
    for sae in list_of_hooked_saes:
        model.add_sae(sae)
    assert len(model._acts_to_saes) == len(act_names)
    for act_name, sae in zip(act_names, list_of_hooked_saes, strict=True):
        assert model._acts_to_saes[act_name].sae == sae
        assert get_deep_attr(model, act_name).sae == sae
    model.reset_saes()
    assert len(model._acts_to_saes) == 0
    for act_name in act_names:
        assert isinstance(get_deep_attr(model, act_name), HookPoint)


def test_reset_saes_with_specific_act_names(model, list_of_hooked_saes):
    act_names = [s.cfg.metadata.hook_name for s in list_of_hooked_saes]
    for sae in list_of_hooked_saes:
        model.add_sae(sae)
    model.reset_saes(act_names[0])
    assert len(model._acts_to_saes) == len(act_names) - 1
    assert act_names[0] not in model._acts_to_saes
    assert isinstance(get_deep_attr(model, act_names[0]), HookPoint)
    for act_name in act_names[1:]:
        assert act_name in model._acts_to_saes
    model.reset_saes()


def test_saes_context_manager_removes_saes_after(model, list_of_hooked_saes):
    act_names = [s.cfg.metadata.hook_name for s in list_of_hooked_saes]
    with model.saes(saes=list_of_hooked_saes):
        for act_name, sae in zip(act_names, list_of_hooked_saes, strict=True):
            assert get_deep_attr(model, act_name).sae == sae
        model.forward(prompt)
    assert len(model._acts_to_saes) == 0
    for act_name in act_names:
        assert isinstance(get_deep_attr(model, act_name), HookPoint)


def test_saes_context_manager_restores_previous_sae_state(model, list_of_hooked_saes):
    act_names = [s.cfg.metadata.hook_name for s in list_of_hooked_saes]
    for sae in list_of_hooked_saes:
        model.add_sae(sae)
    new_saes = [get_hooked_sae(model, name) for name in act_names]
    with model.saes(saes=new_saes):
        for act_name, sae in zip(act_names, new_saes, strict=True):
            assert get_deep_attr(model, act_name).sae == sae
        model.forward(prompt)
    assert len(model._acts_to_saes) == len(list_of_hooked_saes)
    for act_name, sae in zip(act_names, list_of_hooked_saes, strict=True):
        assert get_deep_attr(model, act_name).sae == sae
    model.reset_saes()


def test_saes_context_manager_run_with_cache(model, list_of_hooked_saes):
    act_names = [s.cfg.metadata.hook_name for s in list_of_hooked_saes]
    with model.saes(saes=list_of_hooked_saes):
        for act_name, sae in zip(act_names, list_of_hooked_saes, strict=True):
            assert get_deep_attr(model, act_name).sae == sae
        model.run_with_cache(prompt)
    assert len(model._acts_to_saes) == 0
    for act_name in act_names:
        assert isinstance(get_deep_attr(model, act_name), HookPoint)


def test_run_with_saes(model, list_of_hooked_saes, original_logits):
    act_names = [s.cfg.metadata.hook_name for s in list_of_hooked_saes]
    logits = model.run_with_saes(prompt, saes=list_of_hooked_saes)
    assert_not_close(logits, original_logits)
    assert len(model._acts_to_saes) == 0
    for act_name in act_names:
        assert isinstance(get_deep_attr(model, act_name), HookPoint)


def test_run_with_cache(model, list_of_hooked_saes, original_logits):
    act_names = [s.cfg.metadata.hook_name for s in list_of_hooked_saes]
    for sae in list_of_hooked_saes:
        model.add_sae(sae)
    logits, cache = model.run_with_cache(prompt)
    assert_not_close(logits, original_logits)
    assert isinstance(cache, ActivationCache)
    for act_name, sae in zip(act_names, list_of_hooked_saes, strict=True):
        assert act_name + ".hook_sae_acts_post" in cache
        assert get_deep_attr(model, act_name).sae == sae
    model.reset_saes()


def test_run_with_cache_with_saes(model, list_of_hooked_saes, original_logits):
    act_names = [s.cfg.metadata.hook_name for s in list_of_hooked_saes]
    logits, cache = model.run_with_cache_with_saes(prompt, saes=list_of_hooked_saes)
    assert_not_close(logits, original_logits)
    assert isinstance(cache, ActivationCache)
    assert len(model._acts_to_saes) == 0
    for act_name in act_names:
        assert act_name + ".hook_sae_acts_post" in cache
        assert isinstance(get_deep_attr(model, act_name), HookPoint)


def test_run_with_hooks(model, list_of_hooked_saes, original_logits):
    act_names = [s.cfg.metadata.hook_name for s in list_of_hooked_saes]
    c = Counter()
    for sae in list_of_hooked_saes:
        model.add_sae(sae)
    logits = model.run_with_hooks(prompt, fwd_hooks=[(n + ".hook_sae_acts_post", c.inc) for n in act_names])
    assert_not_close(logits, original_logits)
    for act_name, sae in zip(act_names, list_of_hooked_saes, strict=True):
        assert get_deep_attr(model, act_name).sae == sae
    assert c.count == len(act_names)
    model.reset_saes()
    model.remove_all_hook_fns(including_permanent=True)


def test_run_with_hooks_with_saes(model, list_of_hooked_saes, original_logits):
    act_names = [s.cfg.metadata.hook_name for s in list_of_hooked_saes]
    c = Counter()
    logits = model.run_with_hooks_with_saes(
        prompt, saes=list_of_hooked_saes, fwd_hooks=[(n + ".hook_sae_acts_post", c.inc) for n in act_names]
    )
    assert_not_close(logits, original_logits)
    assert c.count == len(act_names)
    assert len(model._acts_to_saes) == 0
    for act_name in act_names:
        assert isinstance(get_deep_attr(model, act_name), HookPoint)
    model.remove_all_hook_fns(including_permanent=True)


def test_model_with_use_error_term_saes_matches_original_model(model, hooked_sae, original_logits):
    model.add_sae(hooked_sae, use_error_term=True)
    assert len(model._acts_to_saes) == 1
    logits = model(prompt)
    model.reset_saes()
    assert_close(original_logits, logits, atol=1e-4)


def test_add_sae_with_use_error_term(model, hooked_sae):
    act_name = hooked_sae.cfg.metadata.hook_name
    model.add_sae(hooked_sae, use_error_term=True)
    assert get_deep_attr(model, act_name).use_error_term is True
    model.add_sae(hooked_sae, use_error_term=False)
    assert get_deep_attr(model, act_name).use_error_term is False
    model.add_sae(hooked_sae, use_error_term=None)
    assert get_deep_attr(model, act_name).use_error_term is False
    model.reset_saes()


def test_add_sae_respects_sae_use_error_term_setting(model, hooked_sae):
    act_name = hooked_sae.cfg.metadata.hook_name
    hooked_sae._use_error_term = True
    model.add_sae(hooked_sae, use_error_term=None)
    assert get_deep_attr(model, act_name).use_error_term is True
    model.reset_saes()
    model.add_sae(hooked_sae, use_error_term=False)
    assert get_deep_attr(model, act_name).use_error_term is False
    model.reset_saes()
    hooked_sae._use_error_term = False


def test_saes_context_manager_with_use_error_term(model, hooked_sae):
    act_name = hooked_sae.cfg.metadata.hook_name
    before = hooked_sae.use_error_term
    with model.saes(saes=[hooked_sae], use_error_term=True):
        assert get_deep_attr(model, act_name).use_error_term is True
    assert hooked_sae.use_error_term == before
    assert len(model._acts_to_saes) == 0


def test_run_with_saes_with_use_error_term(model, hooked_sae, recwarn):
    before = hooked_sae.use_error_term
    model.run_with_saes(prompt, saes=[hooked_sae], use_error_term=True)
    assert hooked_sae.use_error_term == before
    assert len(model._acts_to_saes) == 0
    hooked_sae._use_error_term = True
    model.run_with_saes(prompt, saes=[hooked_sae])
    hooked_sae._use_error_term = before
    assert not [w for w in recwarn if "use_error_term" in str(w.message)]


def test_run_with_cache_with_saes_with_use_error_term(model, hooked_sae):
    act_name = hooked_sae.cfg.metadata.hook_name
    before = hooked_sae.use_error_term
    _, cache = model.run_with_cache_with_saes(prompt, saes=[hooked_sae], use_error_term=True)
    assert hooked_sae.use_error_term == before
    assert len(model._acts_to_saes) == 0
    assert act_name + ".hook_sae_acts_post" in cache


def test_use_error_term_restoration_after_exception(model, hooked_sae):
    before = hooked_sae.use_error_term
    with (
        pytest.raises(RuntimeError, match="Test exception"),
        model.saes(saes=[hooked_sae], use_error_term=True),
    ):
        raise RuntimeError("Test exception")
    assert hooked_sae.use_error_term == before
    assert len(model._acts_to_saes) == 0


def test_add_sae_with_use_error_term_true(model, hooked_sae):
    without = model(prompt)
    model.add_sae(hooked_sae, use_error_term=True)
    with_sae = model(prompt)
    assert_close(without, with_sae, atol=1e-4)
    model.reset_saes()


def test_run_with_saes_use_error_term_true(model, hooked_sae):
    without = model(prompt)
    assert_close(without, model.run_with_saes(prompt, saes=[hooked_sae], use_error_term=True), atol=1e-4)


def test_run_with_cache_with_saes_use_error_term_true(model, hooked_sae):
    without, _ = model.run_with_cache(prompt)
    with_sae, cache = model.run_with_cache_with_saes(prompt, saes=[hooked_sae], use_error_term=True)
    assert_close(without, with_sae, atol=1e-4)
    assert hooked_sae.cfg.metadata.hook_name + ".hook_sae_acts_post" in cache


def test_add_sae_with_use_error_term_false(model, hooked_sae):
    without = model(prompt)
    model.add_sae(hooked_sae, use_error_term=False)
    assert_not_close(without, model(prompt), atol=1e-5)
    model.reset_saes()


def test_run_with_saes_use_error_term_false(model, hooked_sae):
    without = model(prompt)
    assert_not_close(without, model.run_with_saes(prompt, saes=[hooked_sae], use_error_term=False), atol=1e-4)


def test_run_with_cache_with_saes_use_error_term_false(model, hooked_sae):
    act_name = hooked_sae.cfg.metadata.hook_name
    without, cache_without = model.run_with_cache(prompt)
    with_sae, cache_with = model.run_with_cache_with_saes(prompt, saes=[hooked_sae], use_error_term=False)
    assert_not_close(without, with_sae, atol=1e-4)
    assert act_name + ".hook_sae_acts_post" in cache_with
    assert_not_close(cache_without[act_name], cache_with[act_name + ".hook_sae_output"], atol=1e-5)


def test_HookedSAETransformer_works_with_hook_z_saes(model):
    """Upstream downloads gpt2-small-hook-z-kk; here a local hook_z SAE (no network in tests)."""
    sae = get_hooked_sae(model, "blocks.1.attn.hook_z")
    logits_sans_sae = model(prompt)
    logits, cache = model.run_with_cache_with_saes(prompt, saes=[sae], use_error_term=False)
    assert_not_close(logits, logits_sans_sae, atol=1e-4)
    expected_shape = (2, model.cfg.n_ctx, model.cfg.n_heads, model.cfg.d_head)  # hook_z reshaping
    assert cache["blocks.1.attn.hook_z.hook_sae_output"].shape == expected_shape


def test_HookedSAETransformer_adds_hook_in_to_mlp(model):
    _, cache = model.run_with_cache(prompt)
    for n in range(model.cfg.n_layers):
        assert f"blocks.{n}.mlp.hook_in" in cache
        assert cache[f"blocks.{n}.mlp.hook_in"].shape == (2, model.cfg.n_ctx, model.cfg.d_model)


def test_HookedSAETransformer_works_with_attn_only_models():
    vit = AttnOnlyViT().eval()
    model = HookedSAEViT.from_module(
        vit, blocks="blocks", layout=TokenLayout(image_size=(32, 32), patch_size=(8, 8), has_cls=False)
    )
    _, cache = model.run_with_cache(torch.randn(1, 3, 32, 32))
    assert "blocks.1.hook_resid_post" in cache
    assert not any(name.endswith("mlp.hook_in") for name in cache)


# ---------------------------------------------------------------------------------- transcoders
def test_add_transcoder_changes_output(model, transcoder, original_logits):
    model.add_sae(transcoder)
    assert len(model._acts_to_saes) == 1
    assert_not_close(original_logits, model(prompt))
    model.reset_saes()


def test_transcoder_with_error_term_preserves_output(model, transcoder, original_logits):
    model.add_sae(transcoder, use_error_term=True)
    logits = model(prompt)
    model.reset_saes()
    assert_close(original_logits, logits, atol=1e-4)


def test_transcoder_reset_removes_transcoder(model, transcoder):
    act_name = transcoder.cfg.metadata.hook_name
    model.add_sae(transcoder)
    assert act_name in model._acts_to_saes
    model.reset_saes()
    assert len(model._acts_to_saes) == 0
    assert isinstance(get_deep_attr(model, act_name), HookPoint)


def test_transcoder_context_manager(model, transcoder, original_logits):
    act_name = transcoder.cfg.metadata.hook_name
    with model.saes(saes=[transcoder]):
        assert act_name in model._acts_to_saes
        assert_not_close(original_logits, model(prompt))
    assert len(model._acts_to_saes) == 0
    assert isinstance(get_deep_attr(model, act_name), HookPoint)


def test_transcoder_context_manager_with_error_term(model, transcoder, original_logits):
    with model.saes(saes=[transcoder], use_error_term=True):
        assert_close(original_logits, model(prompt), atol=1e-4)
    assert len(model._acts_to_saes) == 0


def test_transcoder_run_with_cache(model, transcoder, original_logits):
    output_hook = transcoder.cfg.metadata.hook_name_out
    logits, cache = model.run_with_cache_with_saes(prompt, saes=[transcoder])
    assert_not_close(original_logits, logits)
    assert isinstance(cache, ActivationCache)
    assert output_hook + ".hook_sae_acts_post" in cache
    assert len(model._acts_to_saes) == 0


def test_transcoder_activations_match_manual_calculation(model, transcoder):
    input_hook = transcoder.cfg.metadata.hook_name
    output_hook = transcoder.cfg.metadata.hook_name_out
    _, cache_plain = model.run_with_cache(prompt)
    model.add_sae(transcoder)
    _, cache_tc = model.run_with_cache(prompt)
    model.reset_saes()
    acts = transcoder.encode(cache_plain[input_hook])
    assert_close(acts, cache_tc[output_hook + ".hook_sae_acts_post"])
    assert_close(transcoder.decode(acts), cache_tc[output_hook + ".hook_sae_recons"])


def test_mixed_sae_and_transcoder(model, transcoder, original_logits):
    sae = get_hooked_sae(model, "blocks.0.hook_resid_pre")
    model.add_sae(sae)
    model.add_sae(transcoder)
    assert set(model._acts_to_saes) == {sae.cfg.metadata.hook_name, transcoder.cfg.metadata.hook_name}
    assert_not_close(original_logits, model(prompt))
    model.reset_saes()
    assert len(model._acts_to_saes) == 0


def test_run_with_saes_with_transcoder(model, transcoder, original_logits):
    assert_not_close(original_logits, model.run_with_saes(prompt, saes=[transcoder]))
    assert len(model._acts_to_saes) == 0


@pytest.mark.parametrize("use_error_term", [False, True])
def test_transcoder_gradients_flow(model, transcoder, use_error_term):
    """Upstream: test_transcoder_gradients_flow and test_transcoder_with_error_term_gradients_flow."""
    model.add_sae(transcoder, use_error_term=use_error_term)
    model(prompt).sum().backward()
    assert transcoder.W_enc.grad is not None and transcoder.W_enc.grad.abs().sum() > 0
    assert transcoder.W_dec.grad is not None and transcoder.W_dec.grad.abs().sum() > 0
    transcoder.zero_grad()
    model.zero_grad()
    model.reset_saes()


def test_multiple_chained_transcoders_get_gradients():
    model = tiny_model()
    transcoders = [get_transcoder(model, layer) for layer in range(model.cfg.n_layers)]
    for tc in transcoders:
        model.add_sae(tc)
    assert len(model._acts_to_saes) == model.cfg.n_layers
    model(prompt).sum().backward()
    for i, tc in enumerate(transcoders):
        assert tc.W_enc.grad is not None and tc.W_enc.grad.abs().sum() > 0, f"transcoder {i} W_enc"
        assert tc.W_dec.grad is not None and tc.W_dec.grad.abs().sum() > 0, f"transcoder {i} W_dec"
    model.reset_saes()


def test_multiple_saes_get_gradients():
    model = tiny_model()
    names = ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_pre"]
    saes = [get_hooked_sae(model, name) for name in names]
    for sae in saes:
        model.add_sae(sae)
    model(prompt).sum().backward()
    for i, sae in enumerate(saes):
        assert sae.W_enc.grad is not None and sae.W_enc.grad.abs().sum() > 0, f"SAE {i} W_enc"
        assert sae.W_dec.grad is not None and sae.W_dec.grad.abs().sum() > 0, f"SAE {i} W_dec"
    model.reset_saes()


def test_error_term_unchanged_when_latents_ablated():
    model = tiny_model()
    act_name = "blocks.0.hook_mlp_out"
    sae = get_hooked_sae(model, act_name)
    out_base, cache_base = model.run_with_cache_with_saes(prompt, saes=[sae], use_error_term=True)
    assert cache_base[act_name + ".hook_sae_acts_post"].abs().sum() > 0

    def ablate_latents(tensor, hook):
        return tensor * 0

    model.add_sae(sae, use_error_term=True)
    with model.hooks(fwd_hooks=[(act_name + ".hook_sae_acts_post", ablate_latents)]):
        out_ablated, cache_ablated = model.run_with_cache(prompt)
    model.reset_saes()
    assert cache_ablated[act_name + ".hook_sae_acts_post"].abs().sum() == 0
    assert_close(
        cache_ablated[act_name + ".hook_sae_error"], cache_base[act_name + ".hook_sae_error"], atol=1e-5
    )
    assert not torch.allclose(out_ablated, out_base, atol=1e-5)


# ---------------------------------------------------------------------- exclude_special_tokens
def test_exclude_special_tokens_stored_on_wrapper(model, hooked_sae):
    act_name = hooked_sae.cfg.metadata.hook_name
    model.add_sae(hooked_sae, exclude_special_tokens=True)
    assert get_deep_attr(model, act_name).exclude_special_tokens is True
    model.reset_saes()
    model.add_sae(hooked_sae, exclude_special_tokens=[1, 2, 3])
    assert get_deep_attr(model, act_name).exclude_special_tokens == [1, 2, 3]
    model.reset_saes()
    model.add_sae(hooked_sae, exclude_special_tokens=False)
    assert get_deep_attr(model, act_name).exclude_special_tokens is False
    model.reset_saes()


def test_exclude_special_tokens_context_manager_stores_setting(model, hooked_sae):
    act_name = hooked_sae.cfg.metadata.hook_name
    with model.saes(saes=[hooked_sae], exclude_special_tokens=True):
        assert get_deep_attr(model, act_name).exclude_special_tokens is True
    assert len(model._acts_to_saes) == 0


def test_exclude_special_tokens_bypasses_bos_position(model, hooked_sae):
    """CLS (position 0) stands in for BOS."""
    act_name = hooked_sae.cfg.metadata.hook_name
    _, cache_plain = model.run_with_cache(prompt)
    _, cache_excl = model.run_with_cache_with_saes(
        prompt, saes=[hooked_sae], use_error_term=False, exclude_special_tokens=True
    )
    assert_close(cache_excl[act_name + ".hook_sae_output"][:, 0], cache_plain[act_name][:, 0], atol=1e-5)


def test_exclude_special_tokens_false_applies_sae_at_bos(model, hooked_sae):
    act_name = hooked_sae.cfg.metadata.hook_name
    _, cache_plain = model.run_with_cache(prompt)
    _, cache_sae = model.run_with_cache_with_saes(
        prompt, saes=[hooked_sae], use_error_term=False, exclude_special_tokens=False
    )
    assert_not_close(cache_sae[act_name + ".hook_sae_output"][:, 0], cache_plain[act_name][:, 0])


def test_exclude_specific_token_ids_bypasses_those_positions(model, hooked_sae):
    """Images have no token ids: the list names sequence positions (here patch 0, position 1)."""
    act_name = hooked_sae.cfg.metadata.hook_name
    _, cache_plain = model.run_with_cache(prompt)
    _, cache_excl = model.run_with_cache_with_saes(
        prompt, saes=[hooked_sae], use_error_term=False, exclude_special_tokens=[1]
    )
    assert_close(cache_excl[act_name + ".hook_sae_output"][:, 1], cache_plain[act_name][:, 1], atol=1e-5)
    assert_not_close(cache_excl[act_name + ".hook_sae_output"][:, 0], cache_plain[act_name][:, 0])


def test_exclude_special_tokens_run_with_saes(model, hooked_sae):
    logits = model.run_with_saes(prompt, saes=[hooked_sae], use_error_term=True, exclude_special_tokens=True)
    assert logits is not None
    assert len(model._acts_to_saes) == 0


def test_exclude_special_tokens_run_with_cache_with_saes(model, hooked_sae):
    logits, cache = model.run_with_cache_with_saes(
        prompt, saes=[hooked_sae], use_error_term=True, exclude_special_tokens=True
    )
    assert logits is not None
    assert hooked_sae.cfg.metadata.hook_name + ".hook_sae_acts_post" in cache
    assert len(model._acts_to_saes) == 0


def test_exclude_special_tokens_run_with_hooks_with_saes(model, hooked_sae):
    c = Counter()
    act_name = hooked_sae.cfg.metadata.hook_name
    logits = model.run_with_hooks_with_saes(
        prompt,
        saes=[hooked_sae],
        fwd_hooks=[(act_name + ".hook_sae_acts_post", c.inc)],
        exclude_special_tokens=True,
    )
    assert logits is not None
    assert c.count == 1
    assert len(model._acts_to_saes) == 0


def test_exclude_special_tokens_restored_after_context_exit(model, hooked_sae):
    act_name = hooked_sae.cfg.metadata.hook_name
    model.add_sae(hooked_sae, exclude_special_tokens=True)
    second = SAE.from_dict(hooked_sae.cfg.to_dict())
    with model.saes(saes=[second], exclude_special_tokens=False):
        assert model._acts_to_saes[act_name].exclude_special_tokens is False
    assert model._acts_to_saes[act_name].exclude_special_tokens is True
    model.reset_saes()


def test_exclude_special_tokens_empty_list_applies_sae_everywhere(model, hooked_sae):
    act_name = hooked_sae.cfg.metadata.hook_name
    _, cache_empty = model.run_with_cache_with_saes(
        prompt, saes=[hooked_sae], use_error_term=False, exclude_special_tokens=[]
    )
    _, cache_none = model.run_with_cache_with_saes(
        prompt, saes=[hooked_sae], use_error_term=False, exclude_special_tokens=False
    )
    assert_close(
        cache_empty[act_name + ".hook_sae_output"], cache_none[act_name + ".hook_sae_output"], atol=1e-6
    )


def test_exclude_special_tokens_zeroes_sae_error_at_excluded_positions(model, hooked_sae):
    act_name = hooked_sae.cfg.metadata.hook_name
    _, cache = model.run_with_cache_with_saes(
        prompt, saes=[hooked_sae], use_error_term=True, exclude_special_tokens=True
    )
    error = cache[act_name + ".hook_sae_error"]
    assert torch.all(error[:, 0] == 0)
    assert error[:, 1:].abs().sum() > 0


def test_exclude_special_tokens_mask_cleared_after_forward(model, hooked_sae):
    model.add_sae(hooked_sae, exclude_special_tokens=True)
    wrapper = model._acts_to_saes[hooked_sae.cfg.metadata.hook_name]
    model(prompt)
    assert wrapper._token_mask is None
    model.reset_saes()


def test_exclude_special_tokens_mask_cleared_when_forward_raises(model, hooked_sae):
    model.add_sae(hooked_sae, exclude_special_tokens=True)
    wrapper = model._acts_to_saes[hooked_sae.cfg.metadata.hook_name]

    def raise_error(tensor, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(prompt, fwd_hooks=[("hook_embed", raise_error)])
    assert wrapper._token_mask is None
    model.reset_saes()


def test_exclude_special_tokens_with_token_tensor_input(model, hooked_sae):
    """Upstream passes a token tensor instead of a string; the image counterpart is a uint8 image
    tensor instead of preprocessed pixels."""
    act_name = hooked_sae.cfg.metadata.hook_name
    model.reset_saes()
    raw = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    _, cache_plain = model.run_with_cache(raw)
    _, cache_excl = model.run_with_cache_with_saes(
        raw, saes=[hooked_sae], use_error_term=False, exclude_special_tokens=True
    )
    assert_close(cache_excl[act_name + ".hook_sae_output"][:, 0], cache_plain[act_name][:, 0], atol=1e-5)
