"""The TransformerLens sites and call options a ViT adds or changes, checked against the libraries' own
computation: norm scales, the embedding split, per-head inputs and results, in-place edits with autograd,
``pos_slice`` (never the batch axis) and ``return_type``."""

from __future__ import annotations

import pytest
import torch
from families import TL_EVERY_ATTENTION, build_family, images_for

from vision_sae_lens.backbones.hook_tree import ATTENTION_SITES
from vision_sae_lens.errors import ConfigError, SiteDisabledError, UnknownSiteError

EDIT_FAMILIES = TL_EVERY_ATTENTION


def _zero_head(t, hook, head=1):
    if hook.name.endswith(("hook_pattern", "hook_attn_scores")):
        t[:, head] = 0
    else:
        t[:, :, head] = 0
    return t


@pytest.mark.parametrize("family", EDIT_FAMILIES)
def test_in_place_edits_with_autograd_equal_out_of_place_ones(family, eager_model):
    """TransformerLens' head-ablation idiom ``v[:, :, h] = 0`` inside a hook, gradients on, at every
    attention site at once (q, k, v, scores, pattern, z of block 0; heads 1 of each)."""
    model = eager_model(family)
    sites = [f"blocks.0.attn.{site}" for site in ATTENTION_SITES]
    results = []
    for edit in (_zero_head, lambda t, hook: _zero_head(t.clone(), hook)):
        pixels = images_for(model, 2).requires_grad_(True)
        out = model.output_tensor(model.run_with_hooks(pixels, fwd_hooks=[(site, edit) for site in sites]))
        out.sum().backward()
        results.append((out.detach(), pixels.grad))
    (in_place, grad_in_place), (copied, grad_copied) = results
    torch.testing.assert_close(in_place, copied)
    torch.testing.assert_close(grad_in_place, grad_copied)
    with torch.no_grad():
        assert not torch.allclose(in_place, model.output_tensor(model(images_for(model, 2))))


@pytest.mark.parametrize("family", ["timm-vit", "open_clip-vit", "hf-dinov2"])
def test_pos_slice_slices_tokens_never_the_batch(family, eager_model):
    model = eager_model(family)
    pixels = images_for(model, 2)
    with torch.no_grad():
        _, full = model.run_with_cache(pixels)
        for pos in (0, 5, -1, [0, 2], slice(1, 3)):  # 5 >= the batch of two: TransformerLens raised here
            _, sliced = model.run_with_cache(pixels, pos_slice=pos)
            index = [pos] if isinstance(pos, int) else pos
            if "hook_pooled" in full:
                assert torch.equal(sliced["hook_pooled"], full["hook_pooled"])  # (batch, d): no token axis
            assert torch.equal(sliced["blocks.0.hook_resid_post"], full["blocks.0.hook_resid_post"][:, index])
            assert torch.equal(sliced["blocks.0.attn.hook_z"], full["blocks.0.attn.hook_z"][:, index])
            assert torch.equal(
                sliced["blocks.0.attn.hook_pattern"], full["blocks.0.attn.hook_pattern"][:, :, index]
            )
            assert torch.equal(sliced["blocks.0.ln1.hook_scale"], full["blocks.0.ln1.hook_scale"][:, index])
        _, one = model.run_with_cache(pixels[:1], pos_slice=3, remove_batch_dim=True)
    # one image instead of two: the same values up to the kernels' rounding for another batch size
    torch.testing.assert_close(one["blocks.1.hook_resid_pre"], full["blocks.1.hook_resid_pre"][0, [3]])
    if "hook_pooled" in full:
        torch.testing.assert_close(one["hook_pooled"], full["hook_pooled"][0])


def test_return_type(eager_model):
    classifier = eager_model("timm-vit")
    tower = eager_model("open_clip-vit")
    pixels = images_for(classifier, 2)
    with torch.no_grad():
        assert classifier(pixels, return_type=None) is None
        assert torch.equal(classifier(pixels, return_type="logits"), classifier(pixels))
        assert torch.equal(tower(pixels, return_type="embedding"), tower(pixels))
    with pytest.raises(ConfigError, match="outputs embedding"):
        tower(pixels, return_type="logits")
    with pytest.raises(ConfigError, match="no next-token loss"):
        classifier(pixels, return_type="loss")


@pytest.mark.parametrize("family", ["timm-vit", "open_clip-vit", "hf-clip-vision", "hf-dinov2"])
@pytest.mark.parametrize(
    "toggle, site",
    [
        ("use_attn_result", "blocks.1.attn.hook_result"),
        ("use_attn_in", "blocks.1.hook_attn_in"),
        ("use_split_qkv_input", "blocks.1.hook_v_input"),
        ("use_hook_mlp_in", "blocks.1.hook_mlp_in"),
    ],
)
def test_toggled_sites_keep_the_fused_output(family, toggle, site, eager_model):
    """Switched on (and cached), a toggled site leaves the output of the unwrapped model, whose
    attention is the library's fused kernel."""
    model = eager_model(family)
    pixels = images_for(model, 2)
    with torch.no_grad():
        model.remove_bridges()
        try:
            expected = model.output_tensor(model.spec.call(model.backbone, pixels))
        finally:
            model._install_bridges()
    with pytest.raises(SiteDisabledError, match=f"set_{toggle}"):
        model.run_with_hooks(pixels, fwd_hooks=[(site, lambda t, hook: t)])
    getattr(model, f"set_{toggle}")(True)
    assert getattr(model.cfg, toggle)
    with torch.no_grad():
        out, cache = model.run_with_cache(pixels)
    torch.testing.assert_close(model.output_tensor(out), expected, atol=1e-5, rtol=1e-4)
    assert site in cache
    getattr(model, f"set_{toggle}")(False)


def test_eager_only_toggles_need_eager(tmp_path_factory):
    fused, _ = build_family("timm-vit", tmp_path_factory)
    with pytest.raises(ConfigError, match="attention='eager'"):
        fused.set_use_attn_result(True)
    with pytest.raises(UnknownSiteError, match="attention='eager'"):
        fused.run_with_cache(images_for(fused, 1), names_filter="blocks.0.hook_q_input")
    fused.set_use_hook_mlp_in(True)  # no attention internals needed
    with torch.no_grad():
        _, cache = fused.run_with_cache(images_for(fused, 1), names_filter="blocks.0.hook_mlp_in")
    assert cache["blocks.0.hook_mlp_in"].shape[-1] == fused.cfg.d_model


@pytest.mark.parametrize("family", ["timm-dinov2-reg", "open_clip-vit", "hf-dinov2"])
def test_editing_a_head_result_is_ablating_its_z(family, eager_model):
    """hook_result carries the LayerScale-folded per-head output: zeroing head h there changes
    hook_attn_out exactly as zeroing its z does."""
    model = eager_model(family)
    model.set_use_attn_result(True)
    pixels = images_for(model, 2)
    out = "blocks.0.hook_attn_out"
    with torch.no_grad():
        with model.hooks(fwd_hooks=[("blocks.0.attn.hook_result", _zero_head)]):
            _, by_result = model.run_with_cache(pixels, names_filter=[out])
        with model.hooks(fwd_hooks=[("blocks.0.attn.hook_z", _zero_head)]):
            _, by_z = model.run_with_cache(pixels, names_filter=[out])
    torch.testing.assert_close(by_result[out], by_z[out], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["timm-vit", "open_clip-vit", "hf-vit"])
def test_a_zeroed_per_head_query_input_is_the_norms_bias_through_w_q(family, eager_model):
    """hook_q_input is the stream copied per head before ln1: zeroed for head 1, that head's query is
    LN(0) @ W_Q + b_Q = ln1.b @ W_Q + b_Q, and the other heads are untouched."""
    model = eager_model(family)
    model.set_use_split_qkv_input(True)
    pixels = images_for(model, 2)
    with torch.no_grad():
        _, clean = model.run_with_cache(pixels, names_filter="blocks.0.attn.hook_q")
        with model.hooks(fwd_hooks=[("blocks.0.hook_q_input", _zero_head)]):
            _, edited = model.run_with_cache(pixels, names_filter="blocks.0.attn.hook_q")
    attn, ln1 = model.blocks[0].attn, model.blocks[0].ln1
    q = edited["blocks.0.attn.hook_q"]
    with torch.no_grad():
        expected = ln1.b @ attn.W_Q[1] + attn.b_Q[1]
    torch.testing.assert_close(q[:, :, 1], expected.expand_as(q[:, :, 1]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(q[:, :, 0], clean["blocks.0.attn.hook_q"][:, :, 0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["timm-vit", "open_clip-vit", "hf-siglip"])
@pytest.mark.parametrize("norm", ["blocks.0.ln1", "ln_final"])
def test_an_edited_scale_renormalises_as_transformer_lens_layer_norm(family, norm, eager_model):
    """TransformerLens' LayerNorm divides the centred input by hook_scale: doubling it halves the
    normalised part (the norm's output minus its bias)."""
    model = eager_model(family)
    pixels = images_for(model, 2)
    site = f"{norm}.hook_normalized"
    with torch.no_grad():
        _, clean = model.run_with_cache(pixels, names_filter=[site, f"{norm}.hook_scale"])
        with model.hooks(fwd_hooks=[(f"{norm}.hook_scale", lambda t, hook: t.mul_(2))]):  # in place
            _, doubled = model.run_with_cache(pixels, names_filter=[site])
    bias = model.get_submodule(norm).b
    torch.testing.assert_close(doubled[site] - bias, (clean[site] - bias) / 2, atol=1e-5, rtol=1e-4)
    x_scale = clean[f"{norm}.hook_scale"]
    assert x_scale.shape == (2, model.cfg.n_ctx, 1) and (x_scale > 0).all()


@pytest.mark.parametrize("family", ["timm-vit", "timm-dinov2-reg", "hf-vit", "hf-dinov2", "hf-siglip"])
def test_embedding_split_matches_the_models_own_position_embedding(family, eager_model):
    """hook_embed + hook_pos_embed is block 0's input; zeroing hook_pos_embed gives what the model
    computes with its own position-embedding parameter set to zero."""
    model = eager_model(family)
    pixels = images_for(model, 2)
    with torch.no_grad():
        out_edit, cache = model.run_with_cache(pixels)
        torch.testing.assert_close(
            cache["hook_embed"] + cache["hook_pos_embed"], cache["blocks.0.hook_resid_pre"], atol=0, rtol=0
        )
        w_pos = model.W_pos
        assert w_pos.shape[-1] == model.cfg.d_model
        edited = model.output_tensor(
            model.run_with_hooks(pixels, fwd_hooks=[("hook_pos_embed", lambda t, hook: t * 0)])
        )
        saved = w_pos.clone()
        w_pos.zero_()  # the view: the model's own parameter
        try:
            expected = model.output_tensor(model(pixels))
        finally:
            w_pos.copy_(saved)
    torch.testing.assert_close(edited, expected, atol=1e-5, rtol=1e-4)


def test_embedding_at_cls_is_the_class_token(eager_model):
    model = eager_model("timm-vit")  # timm adds a position to CLS too
    with torch.no_grad():
        _, cache = model.run_with_cache(images_for(model, 2), names_filter="hook_embed")
    cls = model.backbone.cls_token[0, 0]
    torch.testing.assert_close(cache["hook_embed"][:, 0], cls.expand(2, -1), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("site", ["hook_embed", "blocks.0.ln2.hook_scale", "ln_final.hook_scale"])
def test_backward_hooks_fire_on_computed_sites(site, eager_model):
    model = eager_model("timm-vit")
    grads = []
    pixels = images_for(model, 2)
    with model.hooks(bwd_hooks=[(site, lambda g, hook: grads.append(g))]):
        out = model.output_tensor(model(pixels))
        out.sum().backward()
    assert len(grads) == 1 and grads[0].abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(out, model.output_tensor(model(pixels)), atol=1e-5, rtol=1e-5)
