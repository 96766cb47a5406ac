"""TransformerLens' ``tests/acceptance/test_activation_cache.py`` ported to hooked ViTs.

Source: TransformerLensOrg/TransformerLens at commit 08d7ff2a323934343d8bd94515bbdbc2a549f83d (identical on
``main`` at 4cd36aae). The installed transformer-lens 3.9.0 is newer than that snapshot; its
``ActivationCache`` keeps batch-less entries out of ``remove_batch_dim`` / ``apply_slice_to_batch_dim``,
which these tests exercise unchanged. What images changed:

* the model is a tiny random-init eager ViT of each family (TransformerLens loads ``solu-2l`` folded);
  the eight IOI prompts are eight preprocessed images and the (correct, incorrect) answer tokens are
  pairs of class ids (:func:`families.class_ids`);
* the class is read at the classifier's readout token (``model.class_readout.pos_slice``, CLS), where a
  language model reads the last position (``pos_slice=-1``); ``tokens_to_residual_directions`` gives
  class directions (the head rows times the final norm's weight) and ``to_string`` class names;
* logit tests skip on backbones without a linear head (DINOv2 features, SigLIP's attention-pooling
  head): no class logits, the counterpart of an unembedding a ViT does not have;
* a ViT has no ``attn-only-2l``: that test runs on a two-block attention-only ViT given to
  ``HookedSAEViT.from_module`` with its block sites named;
* CLIP towers (open_clip) normalise tokens and positions together (``ln_pre``): like TransformerLens'
  models without positional embeddings they have no ``hook_pos_embed`` and no ``pos_embed`` row in
  ``get_full_resid_decomposition``.
"""

import pytest
import torch
from families import AttnOnlyViT, class_ids, give_classes, images_for
from fancy_einsum import einsum
from transformer_lens import utils
from transformer_lens.utils import Slice

from vision_sae_lens.backbones import BlockSites, HookedSAEViT, TokenLayout
from vision_sae_lens.backbones.config import SiteCache


@pytest.fixture
def model(tl_model):
    return tl_model


@pytest.fixture
def tokens(tl_model):
    return images_for(tl_model, 8)


_RUNS: dict[str, dict] = {}


@pytest.fixture
def cache(model, tokens):
    """``model.run_with_cache(tokens)[1]``, the forward run once per family: each test gets its own
    cache over the same tensors (a test that adds or removes entries leaves the others' alone)."""
    if model.backbone_id not in _RUNS:
        with torch.no_grad():
            _RUNS[model.backbone_id] = model.run_with_cache(tokens, return_cache_object=False)[1]
    return SiteCache(dict(_RUNS[model.backbone_id]), model)


@pytest.fixture
def answers(model):
    """(answer class pairs (8, 2), the readout position)."""
    if not give_classes(model):
        pytest.skip(f"{model.backbone_id} has no linear head: no class logits to attribute")
    answer_tokens = torch.stack([class_ids(model, 8, seed=0), class_ids(model, 8, seed=1)], dim=1)
    return answer_tokens, model.class_readout.pos_slice


@torch.no_grad
def test_logit_attrs_matches_reference_code(model, tokens, cache, answers):
    answer_tokens, pos = answers
    accumulated_residual = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=pos)

    answer_residual_directions = model.tokens_to_residual_directions(answer_tokens)
    logit_diff_directions = answer_residual_directions[:, 0] - answer_residual_directions[:, 1]
    scaled_residual_stack = cache.apply_ln_to_stack(accumulated_residual, layer=-1, pos_slice=pos)
    ref_ave_logit_diffs = einsum(
        "... batch d_model, batch d_model -> ...",
        scaled_residual_stack,
        logit_diff_directions,
    ) / len(tokens)

    logit_diffs = cache.logit_attrs(
        accumulated_residual,
        pos_slice=pos,
        tokens=answer_tokens[:, 0],
        incorrect_tokens=answer_tokens[:, 1],
    )
    ave_logit_diffs = logit_diffs.mean(dim=-1)

    assert torch.isclose(ref_ave_logit_diffs, ave_logit_diffs, atol=1.1e-7).all()


@torch.no_grad
def test_logit_accumulated_resid_on_last_layer_variants(model, cache):
    accumulated_resid = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1)
    assert torch.equal(
        accumulated_resid,
        cache.accumulated_resid(layer=model.cfg.n_layers, incl_mid=True, pos_slice=-1),
    )
    assert torch.equal(accumulated_resid, cache.accumulated_resid(layer=None, incl_mid=True, pos_slice=-1))


@torch.no_grad
def test_logit_accumulated_resid_without_mid(cache):
    accumulated_resid, labels = cache.accumulated_resid(
        layer=-1, incl_mid=False, pos_slice=-1, return_labels=True
    )
    assert len(labels) == accumulated_resid.size(0)
    assert all("mid" not in label for label in labels)


@torch.no_grad
def test_logit_attrs_works_for_all_input_shapes(model, cache, answers):
    answer_tokens, pos = answers
    accumulated_residual = cache.accumulated_resid(
        layer=-1, incl_mid=True, pos_slice=pos, return_labels=False
    )

    answer_residual_directions = model.tokens_to_residual_directions(answer_tokens)
    logit_diff_directions = answer_residual_directions[:, 0] - answer_residual_directions[:, 1]
    scaled_residual_stack = cache.apply_ln_to_stack(accumulated_residual, layer=-1, pos_slice=pos)
    ref_logit_diffs = einsum("... d_model, ... d_model -> ...", scaled_residual_stack, logit_diff_directions)

    # All tokens
    logit_diffs = cache.logit_attrs(
        accumulated_residual, pos_slice=pos, tokens=answer_tokens[:, 0], incorrect_tokens=answer_tokens[:, 1]
    )
    assert torch.isclose(ref_logit_diffs, logit_diffs, atol=1e-6, rtol=1e-4).all()

    # Single token
    batch = -1
    logit_diffs = cache.logit_attrs(
        accumulated_residual,
        batch_slice=batch,
        pos_slice=Slice(pos),
        tokens=answer_tokens[batch, 0],
        incorrect_tokens=answer_tokens[batch, 1],
    )
    assert torch.isclose(ref_logit_diffs[:, batch], logit_diffs).all()

    # Single token (int)
    logit_diffs = cache.logit_attrs(
        accumulated_residual,
        batch_slice=Slice(batch),
        pos_slice=pos,
        tokens=int(answer_tokens[batch, 0]),
        incorrect_tokens=int(answer_tokens[batch, 1]),
    )
    assert torch.isclose(ref_logit_diffs[:, batch], logit_diffs).all()

    # Single token (str)
    logit_diffs = cache.logit_attrs(
        accumulated_residual,
        batch_slice=batch,
        pos_slice=pos,
        tokens=model.to_string(answer_tokens[batch, 0]),
        incorrect_tokens=model.to_string(answer_tokens[batch, 1]),
    )
    assert torch.isclose(ref_logit_diffs[:, batch], logit_diffs).all()

    # Single token and residual stack without batch dim
    logit_diffs = cache.logit_attrs(
        accumulated_residual[:, batch, :],
        has_batch_dim=False,
        batch_slice=batch,
        pos_slice=pos,
        tokens=answer_tokens[batch, 0],
        incorrect_tokens=answer_tokens[batch, 1],
    )
    assert torch.isclose(ref_logit_diffs[:, batch], logit_diffs).all()

    # Array slice of tokens
    batch = [2, 5, 7]
    logit_diffs = cache.logit_attrs(
        accumulated_residual,
        batch_slice=batch,
        pos_slice=pos,
        tokens=answer_tokens[batch, 0],
        incorrect_tokens=answer_tokens[batch, 1],
    )
    assert torch.isclose(ref_logit_diffs[:, batch], logit_diffs).all()

    # Different shape for tokens and incorrect_tokens
    with pytest.raises(ValueError):
        cache.logit_attrs(
            accumulated_residual[:, batch, :],
            has_batch_dim=False,
            batch_slice=batch,
            pos_slice=pos,
            tokens=answer_tokens[batch, 0],
            incorrect_tokens=answer_tokens[batch, 0:1],
        )

    # No incorrect tokens
    ref_logit_diffs = einsum(
        "... d_model, ... d_model -> ...", scaled_residual_stack, answer_residual_directions[:, 0]
    )
    logit_diffs = cache.logit_attrs(
        accumulated_residual, pos_slice=pos, tokens=answer_tokens[:, 0], incorrect_tokens=None
    )
    assert torch.isclose(ref_logit_diffs, logit_diffs, atol=1e-6, rtol=1e-4).all()


@torch.no_grad
def test_accumulated_resid_with_apply_ln(model, cache):
    accumulated_residual = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1)
    ref_scaled_residual_stack = cache.apply_ln_to_stack(
        accumulated_residual, layer=-1, pos_slice=-1, recompute_ln=True
    )

    scaled_residual_stack = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1, apply_ln=True)
    assert torch.isclose(ref_scaled_residual_stack, scaled_residual_stack, atol=1e-7).all()

    scaled_residual_stack, labels = cache.accumulated_resid(
        layer=None, incl_mid=True, pos_slice=Slice(-1), apply_ln=True, return_labels=True
    )
    assert torch.isclose(ref_scaled_residual_stack, scaled_residual_stack, atol=1e-7).all()

    expected_labels = []
    for l in range(model.cfg.n_layers + 1):  # noqa: E741
        if l == model.cfg.n_layers:
            expected_labels.append("final_post")
            continue
        expected_labels.append(f"{l}_pre")
        expected_labels.append(f"{l}_mid")

    assert labels == expected_labels


@torch.no_grad
def test_apply_ln_recompute_ln_differs_from_cached(cache):
    accumulated = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1)
    with_recompute = cache.apply_ln_to_stack(accumulated, layer=-1, pos_slice=-1, recompute_ln=True)
    with_cached = cache.apply_ln_to_stack(accumulated, layer=-1, pos_slice=-1, recompute_ln=False)

    assert with_recompute.shape == with_cached.shape
    assert not torch.isclose(with_recompute, with_cached, atol=1e-7).all(), (
        "recompute_ln=True and recompute_ln=False should differ for accumulated residual stack"
    )


@torch.no_grad
def test_decompose_resid_with_apply_ln(cache):
    per_layer_residual = cache.decompose_resid(layer=-1, pos_slice=-1)
    ref_scaled_residual_stack = cache.apply_ln_to_stack(per_layer_residual, layer=-1, pos_slice=-1)

    scaled_residual_stack = cache.decompose_resid(layer=None, pos_slice=Slice(-1), apply_ln=True)

    assert torch.isclose(ref_scaled_residual_stack, scaled_residual_stack, atol=1e-7).all()


@torch.no_grad
def test_decompose_resid_including_attention(model, cache):
    ref_attention_resids = torch.stack([cache["attn_out", l][:, -1] for l in range(model.cfg.n_layers)])  # noqa: E741
    residual_stack = cache.decompose_resid(
        layer=1, pos_slice=Slice(-1), mlp_input=True, apply_ln=False, incl_embeds=False, mode="attn"
    )

    assert torch.isclose(ref_attention_resids, residual_stack, atol=1e-7).all()


@torch.no_grad
def test_stack_head_results_with_apply_ln(cache):
    per_head_residual = cache.stack_head_results(layer=-1, pos_slice=-1)
    ref_scaled_residual_stack = cache.apply_ln_to_stack(per_head_residual, layer=None, pos_slice=Slice(-1))

    scaled_residual_stack = cache.stack_head_results(layer=-1, pos_slice=-1, apply_ln=True)

    assert torch.isclose(ref_scaled_residual_stack, scaled_residual_stack, atol=1e-7).all()


@torch.no_grad
def test_stack_head_results_including_remainder(model, cache):
    ref_resid_post = cache["resid_post", 0][None, :, -1]
    per_head_residual, labels = cache.stack_head_results(
        layer=1, pos_slice=-1, incl_remainder=True, return_labels=True
    )
    remainder = ref_resid_post - per_head_residual[:-1].sum(dim=0)
    assert torch.isclose(remainder, per_head_residual[-1]).all()
    assert labels[:-1] == [f"L0H{i}" for i in range(model.cfg.n_heads)]
    assert labels[-1] == "remainder"

    ref_resid_post = cache["resid_post", -1][None, :, -1]
    per_head_residual, labels = cache.stack_head_results(
        layer=0, pos_slice=-1, incl_remainder=True, return_labels=True
    )
    assert torch.isclose(ref_resid_post, per_head_residual, atol=1e-7).all()
    assert len(labels) == 1
    assert labels[-1] == "remainder"

    per_head_residual, labels = cache.stack_head_results(
        layer=0, pos_slice=-1, incl_remainder=False, return_labels=True
    )
    assert torch.isclose(per_head_residual, torch.zeros_like(per_head_residual)).all()
    assert len(labels) == 0


@torch.no_grad
def test_stack_neuron_results_with_apply_ln(cache):
    neuron_result_stack = cache.stack_neuron_results(layer=-1, pos_slice=-1)
    ref_scaled_residual_stack = cache.apply_ln_to_stack(neuron_result_stack, layer=-1, pos_slice=-1)

    scaled_residual_stack = cache.stack_neuron_results(layer=-1, pos_slice=Slice(-1), apply_ln=True)

    assert torch.isclose(ref_scaled_residual_stack, scaled_residual_stack, atol=1e-7).all()


@torch.no_grad
def test_stack_neuron_results_including_remainder(model, cache):
    ref_resid_post = cache["resid_post", 0][None, :, -1]
    neuron_result_stack, labels = cache.stack_neuron_results(
        layer=1, pos_slice=Slice(-1), incl_remainder=True, return_labels=True
    )
    remainder = ref_resid_post - neuron_result_stack[:-1].sum(dim=0)
    assert torch.isclose(remainder, neuron_result_stack[-1]).all()
    assert labels[:-1] == [f"L0N{i}" for i in range(model.cfg.d_mlp)]
    assert labels[-1] == "remainder"

    ref_resid_post = cache["resid_post", -1][None, :, -1]
    neuron_result_stack, labels = cache.stack_neuron_results(
        layer=0, pos_slice=-1, incl_remainder=True, return_labels=True
    )
    assert torch.isclose(ref_resid_post, neuron_result_stack, atol=1e-7).all()
    assert len(labels) == 1
    assert labels[-1] == "remainder"

    neuron_result_stack, labels = cache.stack_neuron_results(
        layer=0, pos_slice=-1, incl_remainder=False, return_labels=True
    )
    assert torch.isclose(neuron_result_stack, torch.zeros_like(neuron_result_stack)).all()
    assert len(labels) == 0


@torch.no_grad
def test_stack_neuron_results_using_neuron_slice(cache):
    neuron_result_stack, labels = cache.stack_neuron_results(
        layer=1, pos_slice=Slice(-1), neuron_slice=Slice([0, 1, 2]), return_labels=True
    )
    assert labels == [f"L0N{i}" for i in range(3)]


@torch.no_grad
def test_remove_batch_dim(model, tokens):
    _, cache = model.run_with_cache(tokens[:1])

    assert cache.has_batch_dim
    shapes_before_removal = {key: cache.cache_dict[key].shape for key in cache.cache_dict}

    cache.remove_batch_dim()
    assert not cache.has_batch_dim
    assert all(shapes_before_removal[key][1:] == cache.cache_dict[key].shape for key in shapes_before_removal)

    cache.remove_batch_dim()
    assert not cache.has_batch_dim
    assert all(shapes_before_removal[key][1:] == cache.cache_dict[key].shape for key in shapes_before_removal)


@torch.no_grad
def test_remove_batch_dim_fails_if_batch_gt_1(cache):
    assert cache.has_batch_dim
    with pytest.raises(AssertionError):
        cache.remove_batch_dim()


@torch.no_grad
def test_retrieve_activations(model, cache):
    key = ("scale", 1, "ln1")
    str_key = utils.get_act_name(*key)
    assert torch.equal(cache[key], cache[str_key])

    key = ("scale", -1, "ln1")
    str_key = f"scale{model.cfg.n_layers - 1}ln1"
    assert torch.equal(cache[key], cache[str_key])

    key = ("k", -1, None)
    str_key = f"blocks.{model.cfg.n_layers - 1}.attn.hook_k"
    assert torch.equal(cache[key], cache[str_key])

    key = "embed"
    str_key = utils.get_act_name(key)
    assert torch.equal(cache[key], cache[str_key])

    key = ("embed", None)
    str_key = utils.get_act_name(*key)
    assert torch.equal(cache[key], cache[str_key])


@torch.no_grad
def test_get_items(cache):
    assert all(
        cache_key == cache_dict_key and torch.equal(cache_val, cache_dict_val)
        for (cache_key, cache_val), (cache_dict_key, cache_dict_val) in zip(
            cache.items(), cache.cache_dict.items(), strict=True
        )
    )


@torch.no_grad
def test_get_values(cache):
    assert all(
        torch.equal(cache_val, cache_dict_val)
        for cache_val, cache_dict_val in zip(cache.values(), cache.cache_dict.values(), strict=True)
    )


@torch.no_grad
def test_get_keys(cache):
    assert all(
        cache_key == cache_dict_key
        for cache_key, cache_dict_key in zip(cache.keys(), cache.cache_dict.keys(), strict=True)
    )


@torch.no_grad
def test_apply_slice_to_batch_dim(cache):
    assert cache.has_batch_dim
    batch_slice = Slice((2, 4))
    new_cache = cache.apply_slice_to_batch_dim(batch_slice)

    assert new_cache.has_batch_dim
    assert all(torch.equal(cache[key][2:4], new_cache[key]) for key in cache.cache_dict)

    batch_slice = 2
    new_cache = cache.apply_slice_to_batch_dim(batch_slice)

    assert not new_cache.has_batch_dim
    assert all(torch.equal(cache[key][2], new_cache[key]) for key in cache.cache_dict)


@torch.no_grad
def test_toggle_autodiff(cache):
    assert not torch.is_grad_enabled()
    cache.toggle_autodiff(mode=True)
    assert torch.is_grad_enabled()


@torch.no_grad
def test_stack_activation(model, cache):
    stack = cache.stack_activation("scale", -1, "ln1")
    assert all(
        torch.equal(cache[("scale", layer, "ln1")], stack[layer]) for layer in range(model.cfg.n_layers)
    )

    stack = cache.stack_activation("scale", 1, "ln1")
    assert all(torch.equal(cache[("scale", layer, "ln1")], stack[layer]) for layer in range(1))


@torch.no_grad
def test_get_full_resid_decomposition(model, cache):
    ref_head_stack, ref_head_stack_labels = cache.stack_head_results(
        layer=model.cfg.n_layers, pos_slice=Slice(-1), apply_ln=True, return_labels=True
    )
    ref_mlp_stack, ref_mlp_stack_labels = cache.decompose_resid(
        layer=model.cfg.n_layers,
        mlp_input=False,
        pos_slice=Slice(-1),
        incl_embeds=False,
        mode="mlp",
        apply_ln=True,
        return_labels=True,
    )
    ref_embed = cache.apply_ln_to_stack(cache["embed"][None, :, -1], pos_slice=Slice(-1), mlp_input=False)

    ref_bias = model.accumulated_bias(model.cfg.n_layers, mlp_input=False, include_mlp_biases=False)
    ref_bias = ref_bias.expand((1,) + ref_head_stack.shape[1:])
    ref_bias = cache.apply_ln_to_stack(ref_bias, pos_slice=Slice(-1), mlp_input=False)

    head_stack_len = ref_head_stack.size(0)
    mlp_stack_len = ref_mlp_stack.size(0)

    residual_stack, residual_stack_labels = cache.get_full_resid_decomposition(
        layer=-1, pos_slice=-1, apply_ln=True, expand_neurons=False, return_labels=True
    )
    assert torch.isclose(ref_head_stack, residual_stack[:head_stack_len], atol=1e-7).all()
    assert ref_head_stack_labels == residual_stack_labels[:head_stack_len]

    assert torch.isclose(
        ref_mlp_stack, residual_stack[head_stack_len : head_stack_len + mlp_stack_len], atol=1e-7
    ).all()
    assert ref_mlp_stack_labels == residual_stack_labels[head_stack_len : head_stack_len + mlp_stack_len]

    embed_at = head_stack_len + mlp_stack_len
    assert torch.isclose(ref_embed, residual_stack[embed_at : embed_at + 1], atol=1e-7).all()
    assert residual_stack_labels[embed_at] == "embed"

    bias_at = embed_at + 1
    if cache.has_pos_embed:  # TransformerLens: a row "if the model has positional embeddings"
        ref_pos_embed = cache.apply_ln_to_stack(
            cache["pos_embed"][None, :, -1], pos_slice=Slice(-1), mlp_input=False
        )
        assert torch.isclose(ref_pos_embed, residual_stack[bias_at : bias_at + 1], atol=1e-7).all()
        assert residual_stack_labels[bias_at] == "pos_embed"
        bias_at += 1

    assert torch.isclose(ref_bias, residual_stack[bias_at : bias_at + 1], atol=1e-7).all()
    assert residual_stack_labels[bias_at] == "bias"


@torch.no_grad
def test_get_full_resid_decomposition_with_neurons_expanded(cache):
    ref_head_stack, ref_head_stack_labels = cache.stack_head_results(
        layer=1, pos_slice=Slice(-1), apply_ln=True, return_labels=True
    )
    ref_neuron_stack, ref_neuron_labels = cache.stack_neuron_results(
        1, pos_slice=Slice(-1), return_labels=True
    )
    ref_neuron_stack = cache.apply_ln_to_stack(ref_neuron_stack, layer=1, pos_slice=Slice(-1))

    head_stack_len = ref_head_stack.size(0)
    neuron_stack_len = ref_neuron_stack.size(0)

    residual_stack, residual_stack_labels = cache.get_full_resid_decomposition(
        layer=1, pos_slice=Slice(-1), apply_ln=True, expand_neurons=True, return_labels=True
    )

    assert torch.isclose(
        ref_neuron_stack, residual_stack[head_stack_len : head_stack_len + neuron_stack_len], atol=1e-7
    ).all()
    assert ref_neuron_labels == residual_stack_labels[head_stack_len : head_stack_len + neuron_stack_len]


@torch.no_grad
def test_get_full_resid_decomposition_without_applying_ln(cache):
    ref_head_stack = cache.stack_head_results(
        layer=1, pos_slice=Slice(-1), apply_ln=True, return_labels=False
    )
    ref_neuron_stack = cache.stack_neuron_results(1, pos_slice=Slice(-1), return_labels=False)

    head_stack_len = ref_head_stack.size(0)
    neuron_stack_len = ref_neuron_stack.size(0)

    residual_stack = cache.get_full_resid_decomposition(
        layer=1, pos_slice=Slice(-1), apply_ln=False, expand_neurons=True, return_labels=False
    )

    assert torch.isclose(
        ref_neuron_stack, residual_stack[head_stack_len : head_stack_len + neuron_stack_len], atol=1e-7
    ).all()


@pytest.fixture(scope="module")
def attn_only_model():
    """The image counterpart of ``attn-only-2l``: two blocks of norm + attention, no MLP."""
    torch.manual_seed(0)
    return HookedSAEViT.from_module(
        AttnOnlyViT().eval(),
        blocks="blocks",
        layout=TokenLayout(image_size=(32, 32), patch_size=(8, 8), has_cls=False),
        block_sites=BlockSites(attn_out="attn", attn="attn", ln1="norm"),
        attention="eager",
    )


@torch.no_grad
def test_get_full_resid_decomposition_attn_only_model(attn_only_model):
    model = attn_only_model
    assert model.cfg.attn_only
    _, cache = model.run_with_cache(torch.randn(8, 3, 32, 32))

    ref_head_stack = cache.stack_head_results(
        layer=1, pos_slice=Slice(-1), apply_ln=False, return_labels=False
    )

    head_stack_len = ref_head_stack.size(0)

    residual_stack = cache.get_full_resid_decomposition(
        layer=1, pos_slice=Slice(-1), apply_ln=False, expand_neurons=False, return_labels=False
    )

    assert torch.isclose(ref_head_stack, residual_stack[:head_stack_len], atol=1e-7).all()


@torch.no_grad
def test_compute_test_head_results_does_not_compute_results_twice(attn_only_model):
    _, cache = attn_only_model.run_with_cache(torch.randn(8, 3, 32, 32))

    assert "blocks.0.attn.hook_result" not in cache.cache_dict
    cache.compute_head_results()
    assert "blocks.0.attn.hook_result" in cache.cache_dict

    assert cache.cache_dict["blocks.0.attn.hook_result"][0, 0, 0, 0] != float("inf")
    cache.cache_dict["blocks.0.attn.hook_result"][0, 0, 0, 0] = float("inf")
    cache.compute_head_results()

    assert cache.cache_dict["blocks.0.attn.hook_result"][0, 0, 0, 0] == float("inf")


@torch.no_grad
def test_get_neuron_results(model, cache):
    layer = 1
    ref_neuron_acts = (
        cache[f"blocks.{layer}.mlp.hook_post"][:, -1, :2, None] * model.blocks[layer].mlp.W_out[:2]
    )

    neuron_acts = cache.get_neuron_results(layer, neuron_slice=[0, 1], pos_slice=-1)

    assert torch.isclose(ref_neuron_acts, neuron_acts).all()


@torch.no_grad
def test_get_neuron_results_without_slice(model, cache):
    layer = 1
    ref_neuron_acts = cache[f"blocks.{layer}.mlp.hook_post"][..., None] * model.blocks[layer].mlp.W_out

    neuron_acts = cache.get_neuron_results(layer, neuron_slice=None, pos_slice=None)

    assert torch.equal(ref_neuron_acts, neuron_acts)


@torch.no_grad
def test_get_neuron_results_project_output_onto_1d(model, cache):
    layer = 1
    direction = torch.randn(model.cfg.d_model, device=model.cfg.device)

    full = cache.get_neuron_results(layer)
    expected = full @ direction
    projected = cache.get_neuron_results(layer, project_output_onto=direction)
    assert projected.shape == expected.shape
    assert torch.allclose(projected, expected, atol=1e-5)


@torch.no_grad
def test_get_neuron_results_project_output_onto_2d(model, cache):
    layer = 1
    directions = torch.randn(model.cfg.d_model, 3, device=model.cfg.device)

    full = cache.get_neuron_results(layer)
    expected = full @ directions
    projected = cache.get_neuron_results(layer, project_output_onto=directions)
    assert projected.shape == expected.shape
    assert torch.allclose(projected, expected, atol=1e-5)


@torch.no_grad
def test_stack_neuron_results_project_output_onto_matches_unprojected(model, cache):
    direction = torch.randn(model.cfg.d_model, device=model.cfg.device)
    directions = torch.randn(model.cfg.d_model, 4, device=model.cfg.device)

    layer = model.cfg.n_layers
    full = cache.stack_neuron_results(layer, pos_slice=-1)
    expected_1d = full @ direction
    projected_1d = cache.stack_neuron_results(layer, pos_slice=-1, project_output_onto=direction)
    assert projected_1d.shape == expected_1d.shape
    assert torch.allclose(projected_1d, expected_1d, atol=1e-5)
    expected_2d = full @ directions
    projected_2d = cache.stack_neuron_results(layer, pos_slice=-1, project_output_onto=directions)
    assert projected_2d.shape == expected_2d.shape
    assert torch.allclose(projected_2d, expected_2d, atol=1e-5)


@torch.no_grad
def test_stack_neuron_results_project_incl_remainder(model, cache):
    direction = torch.randn(model.cfg.d_model, device=model.cfg.device)

    layer = model.cfg.n_layers
    full = cache.stack_neuron_results(layer, pos_slice=-1, incl_remainder=True)
    expected = full @ direction
    projected = cache.stack_neuron_results(
        layer, pos_slice=-1, incl_remainder=True, project_output_onto=direction
    )
    assert projected.shape == expected.shape
    assert torch.allclose(projected, expected, atol=1e-5)


@torch.no_grad
@pytest.mark.parametrize("n_outs", [None, 2])
def test_get_full_resid_decomposition_project_output_onto(model, cache, n_outs):
    """TransformerLens' ``..._project_output_onto_1d`` and ``..._2d`` cases."""
    shape = (model.cfg.d_model,) if n_outs is None else (model.cfg.d_model, n_outs)
    directions = torch.randn(*shape, device=model.cfg.device)

    full = cache.get_full_resid_decomposition(layer=-1, pos_slice=-1, expand_neurons=True)
    expected = full @ directions
    projected = cache.get_full_resid_decomposition(
        layer=-1, pos_slice=-1, expand_neurons=True, project_output_onto=directions
    )
    assert projected.shape == expected.shape
    assert torch.allclose(projected, expected, atol=1e-4)


@torch.no_grad
@pytest.mark.parametrize("n_outs", [None, 3])
def test_stack_neuron_results_apply_ln_and_project(model, cache, n_outs):
    """TransformerLens' ``..._apply_ln_and_project_1d`` and ``..._2d`` cases."""
    shape = (model.cfg.d_model,) if n_outs is None else (model.cfg.d_model, n_outs)
    directions = torch.randn(*shape, device=model.cfg.device)

    layer = model.cfg.n_layers
    ref = cache.stack_neuron_results(layer, pos_slice=-1, apply_ln=True) @ directions
    fused = cache.stack_neuron_results(layer, pos_slice=-1, apply_ln=True, project_output_onto=directions)
    assert fused.shape == ref.shape
    assert torch.allclose(fused, ref, atol=1e-5)


@torch.no_grad
def test_stack_neuron_results_apply_ln_and_project_incl_remainder(model, cache):
    direction = torch.randn(model.cfg.d_model, device=model.cfg.device)

    layer = model.cfg.n_layers
    ref = cache.stack_neuron_results(layer, pos_slice=-1, apply_ln=True, incl_remainder=True) @ direction
    fused = cache.stack_neuron_results(
        layer, pos_slice=-1, apply_ln=True, incl_remainder=True, project_output_onto=direction
    )
    assert fused.shape == ref.shape
    assert torch.allclose(fused, ref, atol=1e-5)


@torch.no_grad
@pytest.mark.parametrize("n_outs", [None, 2])
def test_get_full_resid_decomposition_apply_ln_and_project(model, cache, n_outs):
    """TransformerLens' ``..._apply_ln_and_project_1d`` and ``..._2d`` cases."""
    shape = (model.cfg.d_model,) if n_outs is None else (model.cfg.d_model, n_outs)
    directions = torch.randn(*shape, device=model.cfg.device)
    ref = (
        cache.get_full_resid_decomposition(layer=-1, pos_slice=-1, apply_ln=True, expand_neurons=True)
        @ directions
    )
    fused = cache.get_full_resid_decomposition(
        layer=-1, pos_slice=-1, apply_ln=True, expand_neurons=True, project_output_onto=directions
    )
    assert fused.shape == ref.shape
    assert torch.allclose(fused, ref, atol=1e-4)


class MaxTensorWatcher:
    """TransformerLens' TorchDispatchMode that records the largest tensor any op produced."""

    def __new__(cls):
        from torch.utils._python_dispatch import TorchDispatchMode

        class _Watcher(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.max_numel = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                result = func(*args, **(kwargs or {}))
                tensors = result if isinstance(result, (list, tuple)) else (result,)
                for t in tensors:
                    if isinstance(t, torch.Tensor):
                        self.max_numel = max(self.max_numel, t.numel())
                return result

        return _Watcher()


@torch.no_grad
@pytest.mark.parametrize("apply_ln", [True, False])
def test_stack_neuron_results_projection_skips_dmodel_materialization(model, cache, apply_ln):
    """TransformerLens' ``..._apply_ln_projection_skips_dmodel_materialization`` (apply_ln=True) and
    ``..._projection_skips_dmodel_materialization`` (False): the projected path never builds the
    [..., d_mlp, d_model] intermediate."""
    direction = torch.randn(model.cfg.d_model, device=model.cfg.device)

    _ = cache.stack_neuron_results(layer=-1, pos_slice=-1, apply_ln=apply_ln)
    _ = cache.stack_neuron_results(layer=-1, pos_slice=-1, apply_ln=apply_ln, project_output_onto=direction)

    with MaxTensorWatcher() as watcher_unproj:
        _ = cache.stack_neuron_results(layer=-1, pos_slice=-1, apply_ln=apply_ln)
    with MaxTensorWatcher() as watcher_proj:
        _ = cache.stack_neuron_results(
            layer=-1, pos_slice=-1, apply_ln=apply_ln, project_output_onto=direction
        )

    ratio = watcher_unproj.max_numel / max(watcher_proj.max_numel, 1)
    assert ratio > 10, (
        f"projection regressed: max_numel unprojected={watcher_unproj.max_numel:,}, "
        f"projected={watcher_proj.max_numel:,}, ratio={ratio:.1f}x."
    )
