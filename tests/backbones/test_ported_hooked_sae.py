"""SAELens' HookedSAE tests (an SAE run on its own, on activations of the model), ported to images.

Source: decoderesearch/SAELens, tests/analysis/test_hooked_sae.py, commit
aa118708e968e29fac035d2fe44d7fe98c55b702 (the stored version that, like the installed sae-lens 6.54.12,
has ``sae_lens.analysis.compat``). Changed only where images force it: the tiny eager-attention ViT for
solu-1l, two image tensors for the prompt. Upstream's ``test_error_term`` body also holds the
feature-gradient check (two tests fused by an editing slip); both halves are kept, as two tests.
"""

from __future__ import annotations

import pytest
import torch
from ported_helpers import SAE_SITES, Counter, assert_close, get_hooked_sae, images, tiny_model

from vision_sae_lens.compat import HookPoint

prompt = images()
SAE_HOOKS = [
    "hook_sae_input",
    "hook_sae_acts_pre",
    "hook_sae_acts_post",
    "hook_sae_recons",
    "hook_sae_output",
]


@pytest.fixture(scope="module")
def model():
    model = tiny_model()
    yield model
    model.reset_saes()


@pytest.fixture(params=SAE_SITES, ids=SAE_SITES)
def hooked_sae(model, request):
    return get_hooked_sae(model, request.param, apply_b_dec_to_input=False)


def site_acts(model, act_name):
    _, cache = model.run_with_cache(prompt, names_filter=act_name)
    return cache[act_name]


def test_forward_reconstructs_input(model, hooked_sae):
    x = site_acts(model, hooked_sae.cfg.metadata.hook_name)
    assert hooked_sae(x).shape == x.shape


def test_run_with_cache(model, hooked_sae):
    x = site_acts(model, hooked_sae.cfg.metadata.hook_name)
    sae_output, cache = hooked_sae.run_with_cache(x)
    assert sae_output.shape == x.shape
    for name in SAE_HOOKS:
        assert name in cache


def test_run_with_hooks(model, hooked_sae):
    c = Counter()
    x = site_acts(model, hooked_sae.cfg.metadata.hook_name)
    sae_output = hooked_sae.run_with_hooks(x, fwd_hooks=[(name, c.inc) for name in SAE_HOOKS])
    assert sae_output.shape == x.shape
    assert c.count == len(SAE_HOOKS)


def test_error_term(model, hooked_sae):
    x = site_acts(model, hooked_sae.cfg.metadata.hook_name)
    hooked_sae._use_error_term = True  # upstream sets use_error_term, which now warns it is deprecated
    sae_output = hooked_sae(x)
    assert sae_output.shape == x.shape
    assert_close(sae_output, x, atol=1e-6)


def test_feature_grads_with_error_term(model, hooked_sae):
    x = site_acts(model, hooked_sae.cfg.metadata.hook_name)
    hooked_sae._use_error_term = True
    hooked_sae.reset_hooks()
    grad_cache = {}

    def backward_cache_hook(act: torch.Tensor, hook: HookPoint):
        grad_cache[hook.name] = act.detach()

    hooked_sae.add_hook("hook_sae_acts_post", backward_cache_hook, "bwd")
    hooked_sae.add_hook("hook_sae_output", backward_cache_hook, "bwd")
    sae_output = hooked_sae(x)
    assert_close(sae_output, x, atol=1e-6)
    sae_output.sum().backward()
    hooked_sae.reset_hooks()
    out_grad = grad_cache["hook_sae_output"]
    if hooked_sae.cfg.metadata.hook_name.endswith("hook_z"):
        out_grad = out_grad.flatten(-2)  # "... n_heads d_head -> ... (n_heads d_head)"
    assert_close(grad_cache["hook_sae_acts_post"], out_grad @ hooked_sae.W_dec.T, atol=1e-6)
