"""TransformerLens-named weights are views of the backbone's own parameters, and TransformerLens' sums hold.

Checked against what the libraries compute, per family (fused qkv, nn.MultiheadAttention's in_proj,
transformers' q/k/v projections, LayerScale folded into W_O / W_out; open_clip's timm-trunk towers use
the timm modules of ``timm-*``):

* ``hook_q = ln1.hook_normalized @ W_Q + b_Q`` (the library's attention made q), ``mlp.hook_pre =
  mlp.hook_in @ W_in + b_in`` (the library's fc1 made it);
* per-head results plus ``b_O`` give ``hook_attn_out``; per-neuron results plus ``b_out`` give
  ``hook_mlp_out``; ``get_full_resid_decomposition`` sums to the final residual stream; the final norm
  applied to it with its cached scale, then the norm's weight and bias, gives ``ln_final.hook_normalized``.
"""

from __future__ import annotations

import pytest
import torch
from families import TL_EVERY_ATTENTION, images_for

from vision_sae_lens.backbones import HookedSAEViT, weights

WEIGHT_FAMILIES = TL_EVERY_ATTENTION


@pytest.fixture(params=WEIGHT_FAMILIES)
def model(request, eager_model):
    return eager_model(request.param)


@pytest.fixture
def run(model):
    with torch.no_grad():
        return model.run_with_cache(images_for(model, 2))


def _shares_storage(view: torch.Tensor, param: torch.Tensor) -> bool:
    return view.untyped_storage().data_ptr() == param.untyped_storage().data_ptr()


def test_shapes_are_transformer_lens_shapes(model):
    cfg = model.cfg
    h, d, dh, dm = cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp
    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        for w in (attn.W_Q, attn.W_K, attn.W_V):
            assert w.shape == (h, d, dh)
        for b in (attn.b_Q, attn.b_K, attn.b_V):
            assert b.shape == (h, dh)
        assert attn.W_O.shape == (h, dh, d) and attn.b_O.shape == (d,)
        assert mlp.W_in.shape == (d, dm) and mlp.b_in.shape == (dm,)
        assert mlp.W_out.shape == (dm, d) and mlp.b_out.shape == (d,)
        assert block.ln1.w.shape == block.ln2.w.shape == (d,)


def test_weights_are_views_of_the_real_parameters(model):
    block = model.spec.blocks[0]
    hooks = model.blocks[0]
    attn = block.get_submodule(model.spec.block_sites.attn)
    projection = weights.out_projection(attn)
    for view in (hooks.attn.W_Q, hooks.attn.W_K, hooks.attn.W_V):
        assert any(_shares_storage(view, p) for p in attn.parameters())
    fc1 = block.get_submodule(model.spec.block_sites.fc1)
    fc2 = block.get_submodule(model.spec.block_sites.fc2)
    assert _shares_storage(hooks.mlp.W_in, fc1.weight) and _shares_storage(hooks.mlp.b_in, fc1.bias)
    assert _shares_storage(hooks.ln1.w, block.get_submodule(model.spec.block_sites.ln1).weight)
    if hooks.attn.gamma is None:
        assert _shares_storage(hooks.attn.W_O, projection.weight)
        assert _shares_storage(hooks.mlp.W_out, fc2.weight)
    if model.spec.pos_embed is not None:
        assert any(_shares_storage(model.W_pos, p) for p in model.backbone.parameters())


def test_an_edit_through_a_view_changes_the_model(model):
    pixels = images_for(model, 2)
    with torch.no_grad():
        before = model.output_tensor(model(pixels))
        w_v = model.blocks[0].attn.W_V
        saved = w_v[0].clone()
        w_v[0] = 0  # head 0's value weights, through the view
        try:
            after = model.output_tensor(model(pixels))
            attn = model.spec.blocks[0].get_submodule(model.spec.block_sites.attn)
            assert any((p == 0).any() for p in attn.parameters())
        finally:
            w_v[0] = saved
        restored = model.output_tensor(model(pixels))
    assert not torch.allclose(before, after)
    assert torch.equal(before, restored)


def test_gradients_reach_the_model_parameters(model):
    hooks, block = model.blocks[0], model.spec.blocks[0]
    model.backbone.zero_grad(set_to_none=True)
    loss = sum(
        w.pow(2).sum()
        for w in (
            hooks.attn.W_Q,
            hooks.attn.W_O,
            hooks.attn.b_O,
            hooks.mlp.W_in,
            hooks.mlp.W_out,
            hooks.mlp.b_out,
        )
    )
    loss.backward()
    attn = block.get_submodule(model.spec.block_sites.attn)
    assert weights.out_projection(attn).weight.grad is not None
    assert block.get_submodule(model.spec.block_sites.fc2).weight.grad is not None
    for gamma in (hooks.attn.gamma, hooks.mlp.gamma):
        if gamma is not None:  # LayerScale is folded in: its vector gets a gradient too
            assert gamma.grad is not None and gamma.grad.abs().sum() > 0
    model.backbone.zero_grad(set_to_none=True)


def test_weights_reproduce_what_the_library_computed(model, run):
    _, cache = run
    for i, hooks in enumerate(model.blocks):
        q = (
            torch.einsum("btd,hde->bthe", cache[f"blocks.{i}.ln1.hook_normalized"], hooks.attn.W_Q)
            + hooks.attn.b_Q
        )
        torch.testing.assert_close(q, cache[f"blocks.{i}.attn.hook_q"], atol=1e-5, rtol=1e-4)
        pre = cache[f"blocks.{i}.mlp.hook_in"] @ hooks.mlp.W_in + hooks.mlp.b_in
        torch.testing.assert_close(pre, cache[f"blocks.{i}.mlp.hook_pre"], atol=1e-5, rtol=1e-4)


def test_head_and_neuron_results_sum_to_the_branch_outputs(model, run):
    _, cache = run
    cache.compute_head_results()
    for i, hooks in enumerate(model.blocks):
        heads = cache[f"blocks.{i}.attn.hook_result"].sum(-2) + hooks.attn.b_O
        torch.testing.assert_close(heads, cache[f"blocks.{i}.hook_attn_out"], atol=1e-5, rtol=1e-4)
        neurons = cache.get_neuron_results(i).sum(-2) + hooks.mlp.b_out
        torch.testing.assert_close(neurons, cache[f"blocks.{i}.hook_mlp_out"], atol=1e-5, rtol=1e-4)


def test_full_decomposition_sums_to_the_final_residual(model, run):
    _, cache = run
    final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    for expand in (True, False):
        stack, labels = cache.get_full_resid_decomposition(expand_neurons=expand, return_labels=True)
        torch.testing.assert_close(stack.sum(0), final, atol=1e-4, rtol=1e-4)
        assert labels[-1] == "bias" and "embed" in labels
        assert ("pos_embed" in labels) == ("hook_pos_embed" in model.hook_dict)


def test_the_final_norm_with_its_cached_scale_is_the_models_own(model, run):
    _, cache = run
    if "ln_final.hook_scale" not in cache:
        pytest.skip("transformers' CLIP has no final norm over every token (only over the pooled vector)")
    stack = cache.get_full_resid_decomposition(expand_neurons=False)
    normed = cache.apply_ln_to_stack(stack).sum(0) * model.ln_final.w + model.ln_final.b
    torch.testing.assert_close(normed, cache["ln_final.hook_normalized"], atol=1e-4, rtol=1e-4)
    recomputed = cache.accumulated_resid(apply_ln=True)[-1]
    torch.testing.assert_close(recomputed, cache["ln_final.hook_normalized"], atol=1e-5, rtol=1e-5)
    assert model.cfg.normalization_type == "LN"


def test_accumulated_bias_is_the_sum_of_the_folded_biases(model):
    expected = sum(b.attn.b_O + b.mlp.b_out for b in model.blocks)
    torch.testing.assert_close(model.accumulated_bias(model.cfg.n_layers), expected)
    mlp_input = model.accumulated_bias(0, mlp_input=True)
    torch.testing.assert_close(mlp_input, model.blocks[0].attn.b_O)
    with pytest.raises(IndexError):
        model.accumulated_bias(model.cfg.n_layers + 1)


def test_eva_layer_scale_parameters_are_folded_as_the_library_applies_them():
    """EVA keeps LayerScale as bare parameters (gamma_1 / gamma_2) and fused qkv with separate q and v
    biases; its rotary attention has no eager path, so the per-head results come from the library's
    own projection input, captured with a plain forward hook."""
    torch.manual_seed(0)
    model = HookedSAEViT.from_pretrained(
        "timm:eva02_tiny_patch14_224", pretrained=False, img_size=28, depth=1, num_classes=0, init_values=0.3
    )
    block = model.spec.blocks[0]
    with torch.no_grad():
        block.gamma_1.normal_()  # a vector, not init_values everywhere
    hooks = model.blocks[0]
    assert hooks.attn.gamma is block.gamma_1 and hooks.mlp.gamma is block.gamma_2
    assert _shares_storage(hooks.attn.W_Q, block.attn.qkv.weight)
    assert _shares_storage(hooks.attn.b_Q, block.attn.q_bias) and not hooks.attn.b_K.any()
    seen = {}
    handle = block.attn.proj.register_forward_hook(lambda m, args, out: seen.update(z=args[0]))
    try:
        with torch.no_grad():
            _, cache = model.run_with_cache(images_for(model, 2), names_filter="blocks.0.hook_attn_out")
    finally:
        handle.remove()
    z = seen["z"].unflatten(-1, (model.cfg.n_heads, -1))
    with torch.no_grad():
        heads = torch.einsum("bthd,hdm->bthm", z, hooks.attn.W_O).sum(2) + hooks.attn.b_O
    torch.testing.assert_close(heads, cache["blocks.0.hook_attn_out"], atol=1e-5, rtol=1e-4)
