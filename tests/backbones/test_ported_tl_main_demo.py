"""The hook patterns of TransformerLens' Main Demo (``demos/Main_Demo.ipynb``), ported to hooked ViTs.

Source: TransformerLensOrg/TransformerLens at commit 08d7ff2a323934343d8bd94515bbdbc2a549f83d, the notebook's
cells on caching (22-27), head ablation (31), activation patching (35-37), pattern hooks with
``hook.layer()`` (46), name filters (63) and a hand-made ``HookedRootModule`` (128-132). What images
changed: prompts are preprocessed images; a "loss" becomes the class logits (an image has no next
token); the IOI logit difference becomes the difference of two class logits at the readout, and the
patched corrupted input is another image; the induction score on repeated random tokens becomes a
per-head score computed the same way from each pattern (attention paid to CLS), since images have no
repeated sequences. The demo patches ``get_act_name("in", layer)`` but says it patches resid_pre: this
port uses ``"resid_pre"``, and patches three positions per layer (first, middle, last) where the demo
patches all, to keep the suite fast.
"""

from functools import partial

import pytest
import torch
from families import give_classes, images_for
from torch import nn
from transformer_lens import utils
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule


@pytest.fixture
def tl_model(tl_hook_model):
    """The hook machinery is the same for every architecture: one family per library."""
    return tl_hook_model


@pytest.fixture
def model(tl_model):
    return tl_model


@torch.no_grad()
def test_cache_pattern_and_stop_at_layer(model):
    """Cells 22-27: the pattern of layer 0 from a full cache equals the one from a run stopped after it."""
    image = images_for(model, 1)
    _, cache = model.run_with_cache(image, remove_batch_dim=True)
    attention_pattern = cache["pattern", 0, "attn"]
    n_ctx = model.cfg.n_ctx
    assert attention_pattern.shape == (model.cfg.n_heads, n_ctx, n_ctx)

    attn_hook_name = "blocks.0.attn.hook_pattern"
    attn_layer = 0
    _, attn_cache = model.run_with_cache(
        image, remove_batch_dim=True, stop_at_layer=attn_layer + 1, names_filter=[attn_hook_name]
    )
    assert torch.allclose(attn_cache[attn_hook_name], attention_pattern)


@torch.no_grad()
def test_head_ablation_hook(model):
    """Cell 31: zero one head's values in place; the output changes, and only while the hook is on."""
    layer_to_ablate, head_index_to_ablate = 0, 1
    seen = []

    def head_ablation_hook(value, hook: HookPoint):
        seen.append(value.shape)
        value[:, :, head_index_to_ablate, :] = 0.0
        return value

    images = images_for(model, 2)
    original = model.output_tensor(model(images))
    ablated = model.output_tensor(
        model.run_with_hooks(
            images, fwd_hooks=[(utils.get_act_name("v", layer_to_ablate), head_ablation_hook)]
        )
    )
    assert seen == [(2, model.cfg.n_ctx, model.cfg.n_heads, model.cfg.d_head)]
    assert not torch.allclose(original, ablated)
    assert torch.equal(model.output_tensor(model(images)), original)


@torch.no_grad()
def test_residual_stream_patching(model):
    """Cells 35-37: patch the clean run's resid_pre into the corrupted run, one layer and position at a
    time, and normalise the metric between the corrupted and the clean run."""
    if not give_classes(model):
        pytest.skip(f"{model.backbone_id} has no linear head: no class logits for the metric")
    readout = model.class_readout
    clean_image, corrupted_image = images_for(model, 2).split(1)

    def logits_of(output):
        return readout.logits(model.output_tensor(output))

    clean_logits, clean_cache = model.run_with_cache(clean_image)
    correct, incorrect = logits_of(clean_logits)[0].topk(2).indices.tolist()

    def logits_to_logit_diff(logits):
        return logits[0, correct] - logits[0, incorrect]

    clean_logit_diff = logits_to_logit_diff(logits_of(clean_logits))
    corrupted_logit_diff = logits_to_logit_diff(logits_of(model(corrupted_image)))

    def residual_stream_patching_hook(resid_pre, hook: HookPoint, position: int):
        clean_resid_pre = clean_cache[hook.name]
        resid_pre[:, position, :] = clean_resid_pre[:, position, :]
        return resid_pre

    num_positions = model.cfg.n_ctx
    patching_result = torch.zeros((model.cfg.n_layers, num_positions), device=model.cfg.device)
    for layer in range(model.cfg.n_layers):
        for position in (0, num_positions // 2, num_positions - 1):  # the demo loops over all
            temp_hook_fn = partial(residual_stream_patching_hook, position=position)
            patched_logits = model.run_with_hooks(
                corrupted_image, fwd_hooks=[(utils.get_act_name("resid_pre", layer), temp_hook_fn)]
            )
            patched_logit_diff = logits_to_logit_diff(logits_of(patched_logits)).detach()
            patching_result[layer, position] = (patched_logit_diff - corrupted_logit_diff) / (
                clean_logit_diff - corrupted_logit_diff
            )
    assert torch.isfinite(patching_result).all()
    # Patching every position of block 0's input gives the clean run back.
    every = [(utils.get_act_name("resid_pre", 0), lambda t, hook: clean_cache[hook.name])]
    restored = logits_to_logit_diff(logits_of(model.run_with_hooks(corrupted_image, fwd_hooks=every)))
    torch.testing.assert_close(restored, clean_logit_diff)


@torch.no_grad()
def test_pattern_hooks_with_layer_index(model):
    """Cell 46: a hook on every pattern (a names filter) stores a per-head score at ``hook.layer()``."""
    score_store = torch.zeros((model.cfg.n_layers, model.cfg.n_heads), device=model.cfg.device)

    def cls_score_hook(pattern, hook: HookPoint):
        score_store[hook.layer(), :] = pattern[:, :, :, 0].mean(dim=(0, 2))  # attention paid to token 0

    pattern_hook_names_filter = lambda name: name.endswith("pattern")  # noqa: E731
    images = images_for(model, 2)
    out = model.run_with_hooks(
        images, return_type=None, fwd_hooks=[(pattern_hook_names_filter, cls_score_hook)]
    )
    assert out is None
    _, cache = model.run_with_cache(images)
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(score_store[layer], cache["pattern", layer][:, :, :, 0].mean(dim=(0, 2)))


@torch.no_grad()
def test_names_filter_sees_sites_in_order(model):
    """Cell 63: a names filter over every site, a hook printing name and shape."""
    seen = []

    def print_name_shape_hook_function(activation, hook):
        seen.append((hook.name, tuple(activation.shape)))

    not_in_late_block_filter = lambda name: name.startswith("blocks.0.") or not name.startswith("blocks")  # noqa: E731
    model.run_with_hooks(
        images_for(model, 1),
        return_type=None,
        fwd_hooks=[(not_in_late_block_filter, print_name_shape_hook_function)],
    )
    names = [name for name, _ in seen]
    assert all(not_in_late_block_filter(name) for name in names)
    assert (
        names.index("hook_embed")
        < names.index("blocks.0.hook_resid_pre")
        < names.index("blocks.0.hook_resid_post")
    )
    assert all(shape[0] == 1 for _, shape in seen)  # batch first, one image


def test_a_hand_made_hooked_root_module():
    """Cells 128-132: TransformerLens' own two-layer HookedRootModule (no model of ours involved)."""

    class SquareThenAdd(nn.Module):
        def __init__(self, offset):
            super().__init__()
            self.offset = nn.Parameter(torch.tensor(offset))
            self.hook_square = HookPoint()

        def forward(self, x):
            square = self.hook_square(x * x)
            return self.offset + square

    class TwoLayerModel(HookedRootModule):
        def __init__(self):
            super().__init__()
            self.layer1 = SquareThenAdd(3.0)
            self.layer2 = SquareThenAdd(-4.0)
            self.hook_in = HookPoint()
            self.hook_mid = HookPoint()
            self.hook_out = HookPoint()
            super().setup()

        def forward(self, x):
            x_in = self.hook_in(x)
            x_mid = self.hook_mid(self.layer1(x_in))
            x_out = self.hook_out(self.layer2(x_mid))
            return x_out

    model = TwoLayerModel()
    out, cache = model.run_with_cache(torch.tensor(5.0))
    assert out.item() == (5.0**2 + 3.0) ** 2 - 4.0
    assert cache["layer2.hook_square"].item() == 28.0**2

    def set_to_zero_hook(tensor, hook):
        return torch.tensor(0.0)

    assert (
        model.run_with_hooks(torch.tensor(5.0), fwd_hooks=[("layer2.hook_square", set_to_zero_hook)]).item()
        == -4.0
    )
