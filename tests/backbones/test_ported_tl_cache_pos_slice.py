"""TransformerLens' ``tests/integration/test_cache_pos_slice.py`` ported to hooked ViTs.

Source: TransformerLensOrg/TransformerLens at commit 08d7ff2a323934343d8bd94515bbdbc2a549f83d (identical on
``main`` at 4cd36aae). What images changed: the model is a tiny eager ViT of each family (TransformerLens
loads ``tiny-stories-1M``) and the prompt is one preprocessed image, whose tokens are CLS, registers and
patches; ``pos_embed`` is compared only where the family has a separate ``hook_pos_embed`` (CLIP towers
normalise tokens and positions together). Positions tested: first, middle, last and -1, as upstream.
"""

import pytest
import torch
from families import images_for

LAYER_SITES = [
    ("resid_pre", None),
    ("resid_post", None),
    ("resid_mid", None),
    ("scale", "ln1"),
    ("scale", "ln2"),
    ("normalized", "ln1"),
    ("normalized", "ln2"),
    ("attn_out", None),
    ("pre", None),
    ("post", None),
    ("mlp_out", None),
]
HEAD_SITES = ["q", "k", "v", "z"]  # (batch, pos, head, d_head)
PATTERN_SITES = ["attn_scores", "pattern"]  # (batch, head, query pos, key pos)


@pytest.fixture
def model(tl_model):
    return tl_model


@pytest.fixture
def prompt(tl_model):
    return images_for(tl_model, 1)


def _positions(model):
    num_tokens = model.cfg.n_ctx
    return [0, num_tokens // 2, num_tokens - 1, -1]


@torch.no_grad()
def test_run_with_cache_pos_slice_keep_batch(model, prompt):
    _, cache_no_slice = model.run_with_cache(prompt, return_type=None)
    d_model, d_head, n_heads = model.cfg.d_model, model.cfg.d_head, model.cfg.n_heads
    embeds = ["embed", "pos_embed"] if "hook_pos_embed" in model.hook_dict else ["embed"]

    for i in _positions(model):
        _, cache_with_slice = model.run_with_cache(prompt, return_type=None, pos_slice=i)

        assert cache_with_slice["embed"].shape == torch.Size([1, 1, d_model])
        assert cache_with_slice["q", 0].shape == torch.Size([1, 1, n_heads, d_head])
        for name in embeds:
            assert torch.equal(cache_no_slice[name][0, i, :], cache_with_slice[name][0, 0, :])

        for layer in range(model.cfg.n_layers):
            for name, sub in LAYER_SITES:
                key = (name, layer, sub) if sub else (name, layer)
                assert torch.equal(cache_no_slice[key][0, i, :], cache_with_slice[key][0, 0, :]), key
            for name in HEAD_SITES:
                assert torch.equal(
                    cache_no_slice[name, layer][0, i, :, :], cache_with_slice[name, layer][0, 0, :, :]
                )
            for name in PATTERN_SITES:
                assert torch.equal(
                    cache_no_slice[name, layer][0, :, i, :], cache_with_slice[name, layer][0, :, 0, :]
                )


@torch.no_grad()
def test_run_with_cache_pos_slice_remove_batch(model, prompt):
    _, cache_no_slice = model.run_with_cache(prompt, remove_batch_dim=True, return_type=None)
    d_model, d_head, n_heads = model.cfg.d_model, model.cfg.d_head, model.cfg.n_heads
    embeds = ["embed", "pos_embed"] if "hook_pos_embed" in model.hook_dict else ["embed"]

    for i in _positions(model):
        _, cache_with_slice = model.run_with_cache(prompt, remove_batch_dim=True, pos_slice=i)

        assert cache_with_slice["embed"].shape == torch.Size([1, d_model])
        assert cache_with_slice["q", 0].shape == torch.Size([1, n_heads, d_head])
        for name in embeds:
            assert torch.equal(cache_no_slice[name][i, :], cache_with_slice[name][0, :])

        for layer in range(model.cfg.n_layers):
            for name, sub in LAYER_SITES:
                key = (name, layer, sub) if sub else (name, layer)
                assert torch.equal(cache_no_slice[key][i, :], cache_with_slice[key][0, :]), key
            for name in HEAD_SITES:
                assert torch.equal(
                    cache_no_slice[name, layer][i, :, :], cache_with_slice[name, layer][0, :, :]
                )
            for name in PATTERN_SITES:
                assert torch.equal(
                    cache_no_slice[name, layer][:, i, :], cache_with_slice[name, layer][:, 0, :]
                )
