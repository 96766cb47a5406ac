"""Wrapped vs unwrapped: every adapter family gives bit-identical outputs and consistent sites."""

from __future__ import annotations

import pytest
import torch
from families import FAMILIES, build_family


def _plain_output(family: str, hooked, plain, pixels):
    with torch.no_grad():
        hooked.remove_bridges()  # the plain model with no hooks at all
        try:
            return hooked.spec.call(plain, pixels)
        finally:
            hooked._install_bridges()


def _tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    return out[0] if isinstance(out, tuple) else out.to_tuple()[0]  # transformers ModelOutput


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    hooked, plain = build_family(request.param, tmp_path_factory)
    pixels = torch.randn(2, hooked.preprocessing.get("channels", 3), *hooked.layout.image_size)
    return request.param, hooked, plain, pixels


def test_outputs_bit_identical_with_and_without_cache(family):
    name, hooked, plain, pixels = family
    expected = _plain_output(name, hooked, plain, pixels)
    with torch.no_grad():
        out = hooked(pixels)
        cached_out, cache = hooked.run_with_cache(pixels)
    for got in (out, cached_out):
        assert torch.equal(_tensor(got), _tensor(expected))
        assert torch.equal(hooked.output_tensor(got), hooked.output_tensor(expected))
    # every site runs except those waiting for their set_use_* toggle (hook_mlp_in)
    assert len(cache.keys()) == sum(hooked.toggle_of(name) is None for name in hooked.hook_dict)


def test_sites_are_consistent(family):
    _, hooked, _, pixels = family
    with torch.no_grad():
        _, cache = hooked.run_with_cache(pixels)
    n_tokens = hooked.layout.n_tokens
    for i in range(hooked.n_layers):
        assert cache[f"blocks.{i}.hook_resid_post"].shape == (2, n_tokens, hooked.d_model)
        if i + 1 < hooked.n_layers:
            assert torch.equal(cache[f"blocks.{i}.hook_resid_post"], cache[f"blocks.{i + 1}.hook_resid_pre"])
        if f"blocks.{i}.hook_attn_out" in cache:
            mid = cache[f"blocks.{i}.hook_resid_pre"] + cache[f"blocks.{i}.hook_attn_out"]
            torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_mid"], mid, rtol=1e-5, atol=1e-5)
            post = cache[f"blocks.{i}.hook_resid_mid"] + cache[f"blocks.{i}.hook_mlp_out"]
            torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"], post, rtol=1e-5, atol=1e-5)
    if "hook_embed" in cache:
        assert cache["hook_embed"].shape[1] == n_tokens


def test_zero_ablation_changes_output(family):
    _, hooked, _, pixels = family
    site = (
        f"blocks.{hooked.n_layers - 1}.hook_resid_post"
        if hooked.spec.final_norm is None
        else "blocks.0.hook_attn_out"
    )
    site = site if site in hooked.hook_dict else "blocks.0.hook_resid_post"
    with torch.no_grad():
        clean = hooked.output_tensor(hooked(pixels))
        ablated = hooked.output_tensor(
            hooked.run_with_hooks(pixels, fwd_hooks=[(site, lambda t, hook: torch.zeros_like(t) + 1.0)])
        )
        after = hooked.output_tensor(hooked(pixels))  # no_grad: nn.MultiheadAttention's fast path differs
    assert not torch.equal(clean, ablated)
    assert torch.equal(after, clean)  # hooks gone afterwards


def test_stop_at_layer_caches_equal_full_run(family):
    _, hooked, _, pixels = family
    site = "blocks.0.hook_resid_post"
    with torch.no_grad():
        _, full = hooked.run_with_cache(pixels)
        resid, partial = hooked.run_with_cache(
            pixels, names_filter=[site], stop_at_layer=hooked.layer_of(site)
        )
    assert list(partial.keys()) == [site]
    assert torch.equal(partial[site], full[site])
    assert torch.equal(resid, full[site])


def test_resid_mid_edit_reaches_block_output(tiny_vit):
    """resid_mid feeds both the MLP and the residual branch: an edit must reach the block output."""
    pixels = torch.randn(2, 3, 32, 32)
    block = tiny_vit.backbone.blocks[0]
    seen = {}

    def grab(t, hook):
        seen["post"] = t

    with torch.no_grad():
        tiny_vit.run_with_hooks(
            pixels,
            fwd_hooks=[
                ("blocks.0.hook_resid_mid", lambda t, hook: torch.zeros_like(t)),
                ("blocks.0.hook_resid_post", grab),
            ],
        )
        zeros = torch.zeros_like(seen["post"])
        expected = zeros + block.drop_path2(block.ls2(block.mlp(block.norm2(zeros))))
    torch.testing.assert_close(seen["post"], expected)


def test_layer_of_sites(tiny_vit):
    assert tiny_vit.layer_of("blocks.1.mlp.hook_post") == 2
    assert tiny_vit.layer_of("hook_embed") == 0  # stop_at_layer=0 stops after the embedding
    assert tiny_vit.layer_of("hook_pooled") is None  # needs the whole forward
    with pytest.raises(KeyError, match="Did you mean"):
        tiny_vit.layer_of("blocks.1.hook_resid_psot")
    for beyond in (3, -3):  # TransformerLens slices blocks[:n] silently; a typo here is an error
        with pytest.raises(ValueError, match=r"stop_at_layer must be in -2\.\.2"):
            tiny_vit(torch.randn(1, 3, 32, 32), stop_at_layer=beyond)
