"""TransformerLens' ``tests/integration/test_stop_at_layer.py`` ported to hooked ViTs.

Source: TransformerLensOrg/TransformerLens at commit 08d7ff2a323934343d8bd94515bbdbc2a549f83d (identical on
``main`` at 4cd36aae). What images changed:

* the model is a tiny random-init ViT of each family with two blocks (TransformerLens builds three or four
  from a config); layer indices are kept relative to the end (``stop_at_layer=-1`` skips the last block)
  and the input is two preprocessed images instead of random token ids;
* CLIP towers normalise tokens and positions together (``ln_pre``), so they have no separate
  ``hook_pos_embed`` and their ``ln_pre.*`` sites run before ``hook_embed``; transformers' CLIP has no final
  norm over every token, so its last site is ``hook_pooled`` where TransformerLens has
  ``ln_final.hook_normalized``;
* the output is the wrapped model's own (``model.output_tensor`` picks the logits or the image embedding
  from a transformers ``ModelOutput``), of shape (batch, classes or embedding width), not (batch, pos, vocab).
"""

import pytest
import torch
from families import images_for


@pytest.fixture
def model(tl_model):
    return tl_model


@pytest.fixture
def rand_input(tl_model):
    return images_for(tl_model, 2)


def _pos_embed_expected(model, cache):
    return ("hook_pos_embed" in cache) == ("hook_pos_embed" in model.hook_dict)


def _final_site(model):
    return "ln_final.hook_normalized" if "ln_final.hook_normalized" in model.hook_dict else "hook_pooled"


@torch.no_grad()
def test_stop_at_embed(model, rand_input):
    _, normal_cache = model.run_with_cache(rand_input)
    output, cache = model.run_with_cache(rand_input, stop_at_layer=0)

    assert torch.allclose(output, normal_cache["blocks.0.hook_resid_pre"])
    assert "hook_embed" in cache
    assert _pos_embed_expected(model, cache)
    assert "blocks.0.hook_resid_pre" not in cache
    assert _final_site(model) not in cache


@torch.no_grad()
def test_run_with_hooks(model, rand_input):
    counting_list = []

    def count_hook(activation, hook):
        counting_list.append(len(counting_list))
        return None

    output = model.run_with_hooks(
        rand_input,
        stop_at_layer=1,
        fwd_hooks=[
            ("hook_embed", count_hook),
            ("blocks.0.attn.hook_k", count_hook),
            ("blocks.1.mlp.hook_pre", count_hook),
        ],
    )

    _, normal_cache = model.run_with_cache(rand_input, stop_at_layer=1)
    assert torch.allclose(output, normal_cache["blocks.0.hook_resid_post"])
    assert len(counting_list) == 2


@torch.no_grad()
def test_manual_hooks(model, rand_input):
    _, normal_cache = model.run_with_cache(rand_input)

    counting_list = []

    def count_hook(activation, hook):
        counting_list.append(len(counting_list))
        return None

    model.hook_embed.add_hook(count_hook)
    model.blocks[0].hook_mlp_out.add_hook(count_hook)
    model.blocks[-2].hook_resid_mid.add_hook(count_hook)
    model.blocks[-1].attn.hook_z.add_hook(count_hook)

    output = model(rand_input, stop_at_layer=-1)
    assert torch.allclose(output, normal_cache[f"blocks.{model.cfg.n_layers - 2}.hook_resid_post"])
    assert len(counting_list) == 3


@torch.no_grad()
def test_stop_at_layer_1(model, rand_input):
    _, normal_cache = model.run_with_cache(rand_input)
    output, cache = model.run_with_cache(rand_input, stop_at_layer=1)

    assert torch.allclose(output, normal_cache["blocks.0.hook_resid_post"])
    assert "hook_embed" in cache
    assert _pos_embed_expected(model, cache)
    assert "blocks.0.hook_resid_pre" in cache
    assert "blocks.0.hook_resid_post" in cache
    assert "blocks.1.hook_resid_pre" not in cache
    assert _final_site(model) not in cache
    for key in cache:
        if key.startswith("blocks.0") or key in ["hook_embed", "hook_pos_embed"] or key.startswith("ln_pre."):
            continue
        else:
            raise AssertionError(f"Unexpected key {key} in cache.")


@torch.no_grad()
def test_stop_at_final(model, rand_input):
    n_layers = model.cfg.n_layers
    _, normal_cache = model.run_with_cache(rand_input)
    output, cache = model.run_with_cache(rand_input, stop_at_layer=-1)

    assert torch.allclose(output, normal_cache[f"blocks.{n_layers - 2}.hook_resid_post"])
    assert "hook_embed" in cache
    assert _pos_embed_expected(model, cache)
    for layer in range(n_layers - 1):
        assert f"blocks.{layer}.hook_resid_pre" in cache
        assert f"blocks.{layer}.hook_resid_post" in cache
    assert f"blocks.{n_layers - 1}.hook_resid_pre" not in cache
    assert _final_site(model) not in cache


@torch.no_grad()
def test_no_stop_logit_output(model, rand_input):
    normal_output = model(rand_input)
    output, cache = model.run_with_cache(rand_input, stop_at_layer=None)

    assert torch.allclose(model.output_tensor(output), model.output_tensor(normal_output))
    assert isinstance(model.output_tensor(output), torch.Tensor)
    assert model.output_tensor(output).shape[0] == 2

    assert "hook_embed" in cache
    assert _pos_embed_expected(model, cache)
    for layer in range(model.cfg.n_layers):
        assert f"blocks.{layer}.hook_resid_pre" in cache
        assert f"blocks.{layer}.hook_resid_post" in cache
    assert _final_site(model) in cache


@torch.no_grad()
def test_no_stop_no_output(model, rand_input):
    output, cache = model.run_with_cache(rand_input, stop_at_layer=None, return_type=None)

    assert output is None
    assert "hook_embed" in cache
    assert _pos_embed_expected(model, cache)
    for layer in range(model.cfg.n_layers):
        assert f"blocks.{layer}.hook_resid_pre" in cache
        assert f"blocks.{layer}.hook_resid_post" in cache
    assert _final_site(model) in cache
