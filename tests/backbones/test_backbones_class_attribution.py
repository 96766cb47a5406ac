"""Attribution to a class, the vision counterpart of TransformerLens' ``logit_attrs``.

Class directions (``model.tokens_to_residual_directions``) make TransformerLens' own ``cache.logit_attrs``
attribute a class logit to heads, neurons and SAE latents. Checked against the model's own output: with
the final norm's scale frozen (as ``apply_ln_to_stack`` does) the contributions plus the class offset
are the logit the classifier computed; removing one component from the final residual stream with the
scale frozen changes the logit by exactly its contribution; and the head with the largest contribution
is the head whose ablation (zeroing its z, everything downstream recomputed) moves the logit most.
"""

from __future__ import annotations

import pytest
import torch
from families import give_classes, images_for
from sae_lens import StandardSAE, StandardSAEConfig
from tiny_clip import ARCH, CLASS_NAMES, save_tiny_open_clip

from vision_sae_lens.backbones import HookedSAEViT
from vision_sae_lens.errors import ConfigError


@pytest.fixture
def classifier(eager_model):
    """``classifier(family)``: the family's eager model with its head's classes named."""

    def get(family: str) -> HookedSAEViT:
        model = eager_model(family)
        assert give_classes(model)
        return model

    return get


def _attribution(model, pixels):
    """(logits (b, classes), predicted classes, cache, full-position decomposition, labels)."""
    with torch.no_grad():
        out, cache = model.run_with_cache(pixels)
        logits = model.class_readout.logits(model.output_tensor(out))
    stack, labels = cache.get_full_resid_decomposition(expand_neurons=True, return_labels=True)
    return logits, logits.argmax(-1), cache, stack, labels


@pytest.mark.parametrize("family", ["timm-vit", "hf-vit-classifier"])
def test_contributions_sum_to_the_class_logit(family, classifier):
    model = classifier(family)
    logits, _, cache, stack, _ = _attribution(model, images_for(model, 4))
    pos = model.class_readout.pos_slice
    batch = torch.arange(4)
    for cls in range(logits.shape[1]):
        classes = torch.full((4,), cls)
        attrs = cache.logit_attrs(stack[:, :, pos], tokens=classes, pos_slice=pos)
        total = attrs.sum(0) + model.class_readout.offsets[classes]
        torch.testing.assert_close(total, logits[batch, classes], atol=1e-5, rtol=1e-4)


def test_removing_a_component_with_the_scale_frozen_moves_the_logit_by_its_contribution(classifier):
    model = classifier("timm-vit")
    pixels = images_for(model, 4)
    logits, classes, cache, stack, labels = _attribution(model, pixels)
    pos = model.class_readout.pos_slice
    attrs = cache.logit_attrs(stack[:, :, pos], tokens=classes, pos_slice=pos)  # (components, batch)
    final = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    scale = cache["ln_final.hook_scale"]
    for k in attrs.abs().sum(1).topk(3).indices.tolist():  # the three largest: heads or neurons
        hooks = [(final, lambda t, hook, k=k: t - stack[k]), ("ln_final.hook_scale", lambda s, hook: scale)]
        with torch.no_grad():
            ablated = model.class_readout.logits(
                model.output_tensor(model.run_with_hooks(pixels, fwd_hooks=hooks))
            )
        drop = (logits - ablated)[torch.arange(4), classes]
        torch.testing.assert_close(drop, attrs[k], atol=1e-5, rtol=1e-4, msg=labels[k])


def test_the_top_head_is_the_one_whose_ablation_matters_most(classifier):
    model = classifier("timm-vit")
    pixels = images_for(model, 4)
    logits, classes, cache, _, _ = _attribution(model, pixels)
    pos = model.class_readout.pos_slice
    heads = cache.stack_head_results(pos_slice=pos)  # (layers * heads, batch, d)
    attrs = cache.logit_attrs(heads, tokens=classes, pos_slice=pos)
    effects = []
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):

            def zero(z, hook, head=head):
                z[:, :, head] = 0
                return z

            with torch.no_grad():
                out = model.run_with_hooks(pixels, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero)])
            effects.append((logits - model.output_tensor(out))[torch.arange(4), classes])
    effects = torch.stack(effects)
    assert torch.equal(attrs.abs().argmax(0), effects.abs().argmax(0))
    assert torch.equal(
        attrs.sign().gather(0, attrs.abs().argmax(0)[None]),
        effects.sign().gather(0, attrs.abs().argmax(0)[None]),
    )


def test_sae_latent_contributions_sum_to_the_logit(classifier):
    """An SAE on the final residual stream (with its error term): latents, b_dec and the error
    decompose the stream, so their contributions plus the offset are the logit."""
    model = classifier("timm-vit")
    site = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=model.cfg.d_model, d_sae=64))
    sae.cfg.metadata.hook_name = site
    sae.use_error_term = True
    pixels = images_for(model, 4)
    with torch.no_grad():
        out, cache = model.run_with_cache_with_saes(pixels, saes=[sae])
        logits = model.output_tensor(out)
    pos = model.class_readout.pos_slice
    acts, error = cache[f"{site}.hook_sae_acts_post"][:, pos], cache[f"{site}.hook_sae_error"][:, pos]
    stack = torch.cat([(acts[..., None] * sae.W_dec).movedim(1, 0), sae.b_dec.expand(1, 4, -1), error[None]])
    classes = logits.argmax(-1)
    attrs = cache.logit_attrs(stack.detach(), tokens=classes, pos_slice=pos)
    total = attrs.sum(0) + model.class_readout.offsets[classes]
    torch.testing.assert_close(total, logits[torch.arange(4), classes], atol=1e-5, rtol=1e-4)
    # the latent with the largest contribution, removed through the SAE itself (scale frozen)
    top = attrs[:64].abs().sum(1).argmax().item()
    hooks = [
        (f"{site}.hook_sae_acts_post", lambda a, hook: a.index_fill(-1, torch.tensor([top]), 0.0)),
        ("ln_final.hook_scale", lambda s, hook: cache["ln_final.hook_scale"]),
    ]
    with torch.no_grad():
        ablated = model.output_tensor(model.run_with_hooks_with_saes(pixels, saes=[sae], fwd_hooks=hooks))
    drop = (logits - ablated)[torch.arange(4), classes]
    torch.testing.assert_close(drop, attrs[top], atol=1e-5, rtol=1e-4)


def test_mean_pooled_classifier():
    """Mean pooling: the class reads every patch; per-position attributions averaged over them."""
    torch.manual_seed(0)
    model = HookedSAEViT.from_pretrained(
        "timm:vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=2,
        num_classes=5,
        global_pool="avg",
        fc_norm=False,
        attention="eager",
    )
    pixels = images_for(model, 3)
    with torch.no_grad():
        logits, cache = model.run_with_cache(pixels)
    pos = model.class_readout.pos_slice
    assert pos == list(range(1, model.cfg.n_ctx))  # the patches, not CLS
    stack = cache.get_full_resid_decomposition(pos_slice=pos)  # (components, batch, patches, d)
    classes = logits.argmax(-1)
    per_position = classes[:, None].expand(-1, len(pos))
    attrs = cache.logit_attrs(stack, tokens=per_position, pos_slice=pos).mean(-1)
    total = attrs.sum(0) + model.class_readout.offsets[classes]
    torch.testing.assert_close(total, logits[torch.arange(3), classes], atol=1e-5, rtol=1e-4)


def test_clip_tower_classes_from_its_text_tower(tmp_path_factory):
    """An open_clip image tower: the classes are the text tower's embeddings of class prompts, and a
    class logit is the image embedding dotted with the class's unit text embedding."""
    folder = tmp_path_factory.mktemp("attr_clip")
    clip, weights = save_tiny_open_clip(folder)
    model = HookedSAEViT.from_pretrained(f"open_clip:{ARCH}", weights=str(weights), attention="eager")
    readout = model.use_classes(CLASS_NAMES, weights=str(weights))
    assert readout.text_embeddings.shape == (len(CLASS_NAMES), clip.visual.output_dim)
    pixels = images_for(model, 3)
    with torch.no_grad():
        out, cache = model.run_with_cache(pixels)
        reference = clip.encode_image(pixels) @ readout.text_embeddings.T  # open_clip's own image tower
    logits = readout.logits(model.output_tensor(out))
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-4)
    stack = cache.get_full_resid_decomposition(pos_slice=readout.pos_slice)
    name = CLASS_NAMES[1]
    attrs = cache.logit_attrs(stack, tokens=name, pos_slice=readout.pos_slice)
    torch.testing.assert_close(attrs.sum(0) + readout.offsets[1], logits[:, 1], atol=1e-5, rtol=1e-4)
    assert model.to_single_token(name) == 1


def test_readouts_that_are_not_linear_are_refused(classifier, eager_model):
    siglip = eager_model("timm-siglip")  # attention pooling (MAP)
    with pytest.raises(ConfigError, match="attention pooling"):
        siglip.tokens_to_residual_directions(0)
    tower = eager_model("open_clip-vit")
    with pytest.raises(ConfigError, match="text embeddings"):
        tower.tokens_to_residual_directions(0)
    hf_vit = classifier("hf-vit-classifier")
    with pytest.raises(IndexError, match=r"class ids must be in \[0, 5\)"):
        hf_vit.tokens_to_residual_directions(7)
