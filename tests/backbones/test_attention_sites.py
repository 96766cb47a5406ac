"""Attention internals (opt-in eager path) and mlp.hook_in on timm, open_clip and transformers ViTs."""

from __future__ import annotations

import pytest
import torch

from vision_sae_lens.backbones import HookedSAEViT
from vision_sae_lens.backbones.hook_tree import ATTENTION_SITES
from vision_sae_lens.errors import UnknownBackboneError, UnknownSiteError

EAGER_FAMILIES = [
    "timm-vit",
    "timm-dinov2-reg",
    "timm-siglip",
    "open_clip-vit",
    "open_clip-timm-trunk",
    "hf-clip-vision",
    "hf-siglip",
    "hf-dinov2",
    "hf-vit",
]


def eager_twin(build_family, family, tmp_path_factory):
    fused, plain = build_family(family, tmp_path_factory)
    eager, _ = build_family(family, tmp_path_factory)
    eager.backbone.load_state_dict(fused.backbone.state_dict())
    eager = HookedSAEViT(eager.spec, attention="eager")
    return fused, eager


def out_tensor(model, out):
    return model.output_tensor(out)


def pixels_for(model, n=2):
    return torch.randn(n, 3, *model.layout.image_size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", EAGER_FAMILIES)
def test_eager_path_matches_fused_and_exposes_attention_sites(build, family, tmp_path_factory):
    fused, eager = eager_twin(build, family, tmp_path_factory)
    pixels = pixels_for(fused)
    with torch.no_grad():
        want = out_tensor(fused, fused(pixels))
        got, cache = eager.run_with_cache(pixels)
    torch.testing.assert_close(out_tensor(eager, got), want, atol=1e-5, rtol=1e-4)
    b, t, h = pixels.shape[0], eager.layout.n_tokens, eager.cfg.n_heads
    for i in range(eager.n_layers):
        for site in ATTENTION_SITES:
            assert f"blocks.{i}.attn.{site}" in cache
        assert cache[f"blocks.{i}.attn.hook_pattern"].shape == (b, h, t, t)
        torch.testing.assert_close(cache[f"blocks.{i}.attn.hook_pattern"].sum(-1), torch.ones(b, h, t))
        assert cache[f"blocks.{i}.attn.hook_z"].shape == (b, t, h, eager.cfg.d_head)
        assert cache[f"blocks.{i}.mlp.hook_in"].shape == (b, t, eager.cfg.d_model)


@pytest.mark.parametrize("family", ["timm-vit", "open_clip-vit", "hf-clip-vision"])
def test_fused_default_is_bit_identical_and_has_mlp_in_but_no_attention_internals(
    build, family, tmp_path_factory
):
    fused, plain = build(family, tmp_path_factory)
    pixels = pixels_for(fused)
    with torch.no_grad():
        assert torch.equal(
            out_tensor(fused, fused(pixels)), out_tensor(fused, fused.spec.call(plain, pixels))
        )
    assert "blocks.0.mlp.hook_in" in fused.site_names()
    with pytest.raises(UnknownSiteError, match="attention='eager'"):
        fused.run_with_cache(pixels, names_filter="blocks.0.attn.hook_pattern")


def _out_proj_weight(model, i):
    attn = model.spec.blocks[i].get_submodule(model.spec.block_sites.attn)
    for name in ("proj", "out_proj", "o_proj"):
        if hasattr(attn, name):
            return getattr(attn, name).weight
    raise AssertionError("no output projection")


@pytest.mark.parametrize("family", ["timm-vit", "open_clip-vit", "hf-clip-vision", "hf-dinov2"])
@pytest.mark.parametrize("where", ["hook_z", "hook_pattern"])
def test_zero_ablating_a_head_removes_exactly_its_contribution(build, family, where, tmp_path_factory):
    _, model = eager_twin(build, family, tmp_path_factory)
    pixels = pixels_for(model)
    head, layer = 1, 0
    attn_out = f"blocks.{layer}.hook_attn_out"

    def ablate(t, hook):
        t = t.clone()
        if where == "hook_z":
            t[:, :, head] = 0
        else:
            t[:, head] = 0
        return t

    with torch.no_grad():
        _, clean = model.run_with_cache(pixels)
        with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.{where}", ablate)]):
            _, ablated = model.run_with_cache(pixels, names_filter=[attn_out])
    d_head = model.cfg.d_head
    z_head = clean[f"blocks.{layer}.attn.hook_z"][:, :, head]
    w_o_head = _out_proj_weight(model, layer)[:, head * d_head : (head + 1) * d_head]
    contribution = z_head @ w_o_head.T
    for scale in ("ls1", "ls_1", "layer_scale1"):  # a layer scale sits inside hook_attn_out
        if hasattr(model.spec.blocks[layer], scale):
            contribution = getattr(model.spec.blocks[layer], scale)(contribution)
    by_hand = clean[attn_out] - contribution
    torch.testing.assert_close(ablated[attn_out], by_hand, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(ablated[attn_out], clean[attn_out], atol=1e-4)


def test_eager_is_undone_by_remove_bridges(build, tmp_path_factory):
    _, model = eager_twin(build, "timm-vit", tmp_path_factory)
    attn = model.spec.blocks[0].attn
    assert "forward" in attn.__dict__
    model.remove_bridges()
    assert "forward" not in attn.__dict__


def test_unsupported_attention_is_a_clear_error(build, tmp_path_factory):
    fused, _ = build("timm-eva02", tmp_path_factory)
    with pytest.raises(UnknownBackboneError, match="attention='fused'"):
        HookedSAEViT(fused.spec, attention="eager")
    with pytest.raises(ValueError, match="attention must be"):
        HookedSAEViT(fused.spec, attention="flash")
