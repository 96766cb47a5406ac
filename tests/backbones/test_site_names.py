"""A misspelled site name never passes silently: every entry point raises UnknownSiteError with close
matches before the forward runs; a missing cache key names the cached close matches."""

from __future__ import annotations

import pytest
import torch
from ported_helpers import get_hooked_sae, images, tiny_model

from vision_sae_lens.errors import UnknownSiteError
from vision_sae_lens.store.recorder import cache_activations

TYPO = "blocks.1.hook_resid_pots"
WRONG_LAYER = "blocks.2.hook_resid_post"  # a 2-block model has blocks 0 and 1


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture
def forward_counter(model):
    calls = []
    handle = model.backbone.register_forward_pre_hook(lambda *a: calls.append(1))
    yield calls
    handle.remove()


def _noop(t, hook):
    return t


ENTRY_POINTS = {
    "run_with_cache(str)": lambda m, n: m.run_with_cache(images(), names_filter=n),
    "run_with_cache(list)": lambda m, n: m.run_with_cache(
        images(), names_filter=["blocks.0.hook_resid_post", n]
    ),
    "run_with_cache_with_saes": lambda m, n: m.run_with_cache_with_saes(
        images(), saes=[get_hooked_sae(m, "blocks.0.hook_resid_pre")], names_filter=[n]
    ),
    "run_with_hooks": lambda m, n: m.run_with_hooks(images(), fwd_hooks=[(n, _noop)]),
    "run_with_hooks(bwd)": lambda m, n: m.run_with_hooks(
        images(), bwd_hooks=[(n, _noop)], reset_hooks_end=False
    ),
    "run_with_hooks_with_saes": lambda m, n: m.run_with_hooks_with_saes(
        images(), saes=[get_hooked_sae(m, "blocks.0.hook_resid_pre")], fwd_hooks=[(n, _noop)]
    ),
    "hooks()": lambda m, n: m.hooks(fwd_hooks=[("blocks.0.hook_resid_post", _noop), (n, _noop)]).__enter__(),
    "add_hook": lambda m, n: m.add_hook(n, _noop),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("name", [TYPO, WRONG_LAYER])
def test_unknown_site_raises_with_close_matches_before_forward(model, forward_counter, entry, name):
    with pytest.raises(UnknownSiteError) as info:
        ENTRY_POINTS[entry](model, name)
    message = str(info.value)
    assert name in message and "Did you mean" in message and "model.site_names()" in message
    assert "blocks.1.hook_resid_post" in message
    assert isinstance(info.value, KeyError)
    assert forward_counter == [], "the forward ran before the name was checked"
    assert not model._acts_to_saes, "SAEs attached for the run were not removed"
    assert all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values()), "a hook leaked"


def test_sae_internal_names_are_sites_only_while_attached(model):
    sae = get_hooked_sae(model, "blocks.0.hook_resid_post")
    name = "blocks.0.hook_resid_post.hook_sae_acts_post"
    with pytest.raises(UnknownSiteError):
        model.run_with_cache(images(), names_filter=[name])
    _, cache = model.run_with_cache_with_saes(images(), saes=[sae], names_filter=[name])
    assert list(cache.keys()) == [name]
    with pytest.raises(UnknownSiteError, match="hook_sae_acts_post"):
        model.run_with_cache_with_saes(images(), saes=[sae], names_filter=[name.replace("post", "pots")])


def test_callable_names_filter_is_left_as_transformer_lens_has_it(model):
    _, cache = model.run_with_cache(images(), names_filter=lambda n: n.endswith("hook_resid_pots"))
    assert len(cache) == 0


def test_missing_cache_key_names_close_cached_names(model):
    _, cache = model.run_with_cache(
        images(), names_filter=["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    )
    with pytest.raises(KeyError) as info:
        cache[TYPO]
    assert isinstance(info.value, UnknownSiteError)
    assert "blocks.1.hook_resid_post" in str(info.value) and "not in this cache" in str(info.value)
    torch.testing.assert_close(
        cache["resid_post", 1], cache["blocks.1.hook_resid_post"]
    )  # shorthand still works


@pytest.mark.parametrize("name", [TYPO, WRONG_LAYER])
def test_cache_activations_rejects_unknown_sites_before_recording(model, tmp_path, name):
    pics = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    out = tmp_path / "store"
    with pytest.raises(UnknownSiteError, match="Did you mean"):
        cache_activations(model, pics, sites=["blocks.0.hook_resid_post", name], out_dir=out, progress=False)
    assert not out.exists() or not any(out.iterdir())
