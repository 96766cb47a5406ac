"""TransformerLens' ``tests/unit/test_hook_points.py`` ported to the hook points of a hooked ViT.

Source: TransformerLensOrg/TransformerLens at commit 08d7ff2a323934343d8bd94515bbdbc2a549f83d (branch ``dev``,
the newest snapshot available; the file is identical on ``main`` at 4cd36aae, tag v3.5.1's line, and its
behaviour matches the installed transformer-lens 3.9.0). What images changed: the HookPoint under test is a
site of a tiny random-init ViT of each family (``blocks.0.hook_resid_post``) instead of a bare ``HookPoint()``,
and the two "integration" cases run that model on images instead of a one-module toy model; the expected
value is the model run with a hook doing the same arithmetic. Everything else is TransformerLens' own text.
"""

from unittest import mock

import pytest
import torch
from families import images_for


@pytest.fixture
def tl_model(tl_hook_model):
    """The hook machinery is the same for every architecture: one family per library."""
    return tl_hook_model


SITE = "blocks.0.hook_resid_post"


@pytest.fixture
def hook_point_and_hook(tl_model):
    hook_point = tl_model.hook_dict[SITE]

    def hook(activation, hook):
        return activation

    return hook_point, hook


@mock.patch("torch.utils.hooks.RemovableHandle", autospec=True)
def test_add_hook_forward(mock_handle, hook_point_and_hook):
    mock_handle.return_value.id = 0
    hook_point, hook = hook_point_and_hook
    hook_point.add_hook(hook, dir="fwd")
    assert len(hook_point.fwd_hooks) == 1


@mock.patch("torch.utils.hooks.RemovableHandle", autospec=True)
def test_add_hook_backward(mock_handle, hook_point_and_hook):
    mock_handle.return_value.id = 0
    hook_point, hook = hook_point_and_hook
    hook_point.add_hook(hook, dir="bwd")
    assert len(hook_point.bwd_hooks) == 1


@mock.patch("torch.utils.hooks.RemovableHandle", autospec=True)
def test_add_hook_permanent(mock_handle, hook_point_and_hook):
    mock_handle.return_value.id = 0
    hook_point, hook = hook_point_and_hook
    hook_point.add_hook(hook, dir="fwd", is_permanent=True)
    assert hook_point.fwd_hooks[0].is_permanent


@mock.patch("torch.utils.hooks.RemovableHandle", autospec=True)
def test_add_hook_with_level(mock_handle, hook_point_and_hook):
    mock_handle.return_value.id = 0
    hook_point, hook = hook_point_and_hook
    hook_point.add_hook(hook, dir="fwd", level=5)
    assert hook_point.fwd_hooks[0].context_level == 5


@mock.patch("transformer_lens.hook_points.LensHandle")
@mock.patch("torch.utils.hooks.RemovableHandle")
def test_add_hook_prepend(mock_handle, mock_lens_handle, tl_model):
    mock_handle.id = 0
    mock_handle.next_id = 1

    hook_point = tl_model.hook_dict[SITE]

    def hook1(activation, hook):
        return activation

    def hook2(activation, hook):
        return activation

    class _LensHandleBox:
        def __init__(self, handle, is_permanent, context_level, user_hook=None):
            self.hook = handle
            self.is_permanent = is_permanent
            self.context_level = context_level
            self.user_hook = user_hook

    mock_lens_handle.side_effect = _LensHandleBox
    next_id = {"val": 1}

    def fake_register_forward_hook(fn, prepend=False):
        handle = mock.MagicMock()
        handle.id = next_id["val"]
        next_id["val"] += 1
        return handle

    hook_point.register_forward_hook = fake_register_forward_hook  # type: ignore[assignment]
    try:
        hook_point.add_hook(hook1, dir="fwd")
        hook_point.add_hook(hook2, dir="fwd", prepend=True)

        assert len(hook_point.fwd_hooks) == 2
        assert hook_point.fwd_hooks[0].hook.id == 2
        assert hook_point.fwd_hooks[1].hook.id == 1
    finally:
        del hook_point.register_forward_hook
        hook_point.fwd_hooks.clear()  # boxed mock handles: nothing real was registered


def _doubling_conversion():
    from transformer_lens.conversion_utils.conversion_steps.base_tensor_conversion import (
        BaseTensorConversion,
    )

    class TestHookConversion(BaseTensorConversion):
        def handle_conversion(self, input_value, *full_context):
            return input_value * 2

        def revert(self, input_value, *full_context):
            return input_value + 10

    return TestHookConversion()


def test_enable_reshape(tl_model):
    hook_point = tl_model.hook_dict[SITE]
    conversion = _doubling_conversion()
    hook_point.enable_reshape(conversion)
    try:
        assert hook_point.hook_conversion is conversion
    finally:
        hook_point.enable_reshape(None)


def test_enable_reshape_with_none(tl_model):
    hook_point = tl_model.hook_dict[SITE]
    hook_point.enable_reshape(None)
    assert hook_point.hook_conversion is None


def test_reshape_functionality_integration(tl_model):
    """The conversion runs around the hook inside the image model's forward: convert, hook, revert."""
    pixels = images_for(tl_model, 2)
    with torch.no_grad():
        expected = tl_model.run_with_hooks(pixels, fwd_hooks=[(SITE, lambda t, hook: (t * 2 + 1) + 10)])
        hook_point = tl_model.hook_dict[SITE]
        hook_point.enable_reshape(_doubling_conversion())
        try:
            hook_point.add_hook(lambda activation, hook: activation + 1, dir="fwd")
            result = tl_model(pixels)
        finally:
            hook_point.enable_reshape(None)
            tl_model.reset_hooks()
    torch.testing.assert_close(tl_model.output_tensor(result), tl_model.output_tensor(expected))


def test_reshape_functionality_hook_returns_none_integration(tl_model):
    """Output revert is not applied when the hook returns None: the model's output is unchanged."""
    pixels = images_for(tl_model, 2)
    with torch.no_grad():
        clean = tl_model(pixels)
        hook_point = tl_model.hook_dict[SITE]
        hook_point.enable_reshape(_doubling_conversion())
        try:
            hook_point.add_hook(lambda activation, hook: None, dir="fwd")
            result = tl_model(pixels)
        finally:
            hook_point.enable_reshape(None)
            tl_model.reset_hooks()
    assert torch.equal(tl_model.output_tensor(result), tl_model.output_tensor(clean))


class TestHookPointHasHooks:
    """TransformerLens' suite for HookPoint.has_hooks, on a hooked ViT's site."""

    @pytest.fixture(autouse=True)
    def _hook_point(self, tl_model):
        self.hook_point = tl_model.hook_dict[SITE]
        self.model = tl_model

        def sample_hook(activation, hook):
            return activation

        self.sample_hook = sample_hook

    def test_no_hooks_returns_false(self):
        assert not self.hook_point.has_hooks()
        assert not self.hook_point.has_hooks(dir="fwd")
        assert not self.hook_point.has_hooks(dir="bwd")
        assert not self.hook_point.has_hooks(dir="both")

    def test_forward_hook_detection(self):
        self.hook_point.add_hook(self.sample_hook, dir="fwd")
        assert self.hook_point.has_hooks()
        assert self.hook_point.has_hooks(dir="fwd")
        assert self.hook_point.has_hooks(dir="both")
        assert not self.hook_point.has_hooks(dir="bwd")

    def test_backward_hook_detection(self):
        self.hook_point.add_hook(self.sample_hook, dir="bwd")
        assert self.hook_point.has_hooks()
        assert self.hook_point.has_hooks(dir="bwd")
        assert self.hook_point.has_hooks(dir="both")
        assert not self.hook_point.has_hooks(dir="fwd")

    def test_both_direction_hooks(self):
        self.hook_point.add_hook(self.sample_hook, dir="fwd")
        self.hook_point.add_hook(self.sample_hook, dir="bwd")
        assert self.hook_point.has_hooks()
        assert self.hook_point.has_hooks(dir="fwd")
        assert self.hook_point.has_hooks(dir="bwd")
        assert self.hook_point.has_hooks(dir="both")

    def test_permanent_hook_detection(self):
        self.hook_point.add_hook(self.sample_hook, dir="fwd", is_permanent=True)
        assert self.hook_point.has_hooks()
        assert self.hook_point.has_hooks(including_permanent=True)
        assert not self.hook_point.has_hooks(including_permanent=False)

    def test_non_permanent_hook_detection(self):
        self.hook_point.add_hook(self.sample_hook, dir="fwd", is_permanent=False)
        assert self.hook_point.has_hooks()
        assert self.hook_point.has_hooks(including_permanent=True)
        assert self.hook_point.has_hooks(including_permanent=False)

    def test_mixed_permanent_hooks(self):
        self.hook_point.add_hook(self.sample_hook, dir="fwd", is_permanent=True)
        self.hook_point.add_hook(self.sample_hook, dir="fwd", is_permanent=False)
        assert self.hook_point.has_hooks(including_permanent=True)
        assert self.hook_point.has_hooks(including_permanent=False)

    def test_only_permanent_hooks(self):
        self.hook_point.add_hook(self.sample_hook, dir="fwd", is_permanent=True)
        self.hook_point.add_hook(self.sample_hook, dir="bwd", is_permanent=True)
        assert self.hook_point.has_hooks(including_permanent=True)
        assert self.hook_point.has_hooks(dir="fwd", including_permanent=True)
        assert self.hook_point.has_hooks(dir="bwd", including_permanent=True)
        assert not self.hook_point.has_hooks(including_permanent=False)
        assert not self.hook_point.has_hooks(dir="fwd", including_permanent=False)
        assert not self.hook_point.has_hooks(dir="bwd", including_permanent=False)

    def test_context_level_filtering(self):
        self.hook_point.add_hook(self.sample_hook, dir="fwd", level=0)
        self.hook_point.add_hook(self.sample_hook, dir="fwd", level=1)
        self.hook_point.add_hook(self.sample_hook, dir="bwd", level=2)
        assert self.hook_point.has_hooks(level=0)
        assert self.hook_point.has_hooks(level=1)
        assert self.hook_point.has_hooks(level=2)
        assert not self.hook_point.has_hooks(level=3)
        assert not self.hook_point.has_hooks(level=-1)
        assert self.hook_point.has_hooks(level=None)

    def test_context_level_with_direction(self):
        self.hook_point.add_hook(self.sample_hook, dir="fwd", level=0)
        self.hook_point.add_hook(self.sample_hook, dir="bwd", level=1)
        assert self.hook_point.has_hooks(dir="fwd", level=0)
        assert self.hook_point.has_hooks(dir="bwd", level=1)
        assert not self.hook_point.has_hooks(dir="fwd", level=1)
        assert not self.hook_point.has_hooks(dir="bwd", level=0)

    def test_context_level_with_permanent_flags(self):
        self.hook_point.add_hook(self.sample_hook, dir="fwd", level=0, is_permanent=True)
        self.hook_point.add_hook(self.sample_hook, dir="fwd", level=1, is_permanent=False)
        assert self.hook_point.has_hooks(level=0, including_permanent=True)
        assert not self.hook_point.has_hooks(level=0, including_permanent=False)
        assert self.hook_point.has_hooks(level=1, including_permanent=True)
        assert self.hook_point.has_hooks(level=1, including_permanent=False)

    def test_all_parameters_combined(self):
        self.hook_point.add_hook(self.sample_hook, dir="fwd", level=0, is_permanent=True)
        self.hook_point.add_hook(self.sample_hook, dir="fwd", level=1, is_permanent=False)
        self.hook_point.add_hook(self.sample_hook, dir="bwd", level=0, is_permanent=False)
        self.hook_point.add_hook(self.sample_hook, dir="bwd", level=2, is_permanent=True)
        assert self.hook_point.has_hooks(dir="fwd", level=0, including_permanent=True)
        assert not self.hook_point.has_hooks(dir="fwd", level=0, including_permanent=False)
        assert self.hook_point.has_hooks(dir="fwd", level=1, including_permanent=False)
        assert self.hook_point.has_hooks(dir="bwd", level=0, including_permanent=False)
        assert not self.hook_point.has_hooks(dir="bwd", level=1, including_permanent=False)
        assert self.hook_point.has_hooks(dir="bwd", level=2, including_permanent=True)

    def test_invalid_direction_raises_error(self):
        # TransformerLens' CI runs with beartype's import hook (BeartypeCallHintParamViolation); the
        # installed package without it reaches has_hooks' own ValueError.
        with pytest.raises(ValueError, match="Invalid direction"):
            self.hook_point.has_hooks(dir="invalid")  # type: ignore

    def test_multiple_hooks_same_criteria(self):
        for _ in range(3):
            self.hook_point.add_hook(self.sample_hook, dir="fwd", level=0, is_permanent=False)
        assert self.hook_point.has_hooks(dir="fwd", level=0, including_permanent=False)

    def test_hook_removal_affects_detection(self):
        self.hook_point.add_hook(self.sample_hook, dir="fwd")
        assert self.hook_point.has_hooks()
        self.hook_point.remove_hooks(dir="both")
        assert not self.hook_point.has_hooks()

    def test_default_parameter_values(self):
        self.hook_point.add_hook(self.sample_hook, dir="fwd", is_permanent=True, level=0)
        self.hook_point.add_hook(self.sample_hook, dir="bwd", is_permanent=False, level=1)
        assert self.hook_point.has_hooks()
        assert self.hook_point.has_hooks(dir="both", including_permanent=True, level=None)

    def test_edge_case_empty_after_filtering(self):
        self.hook_point.add_hook(self.sample_hook, dir="fwd", is_permanent=True, level=5)
        assert not self.hook_point.has_hooks(including_permanent=False)
        assert not self.hook_point.has_hooks(dir="bwd")
        assert not self.hook_point.has_hooks(level=0)
        assert not self.hook_point.has_hooks(dir="bwd", level=5, including_permanent=True)

    def test_functional_hook_execution_still_works(self):
        """The hook runs inside the image model's forward and leaves the activation as it was."""
        results = []

        def test_hook(activation, hook):
            results.append(activation.clone())
            return activation

        self.hook_point.add_hook(test_hook, dir="fwd")
        assert self.hook_point.has_hooks()
        pixels = images_for(self.model, 2)
        with torch.no_grad():
            _, cache = self.model.run_with_cache(pixels, names_filter=SITE)
        assert len(results) == 1
        assert torch.equal(results[0], cache[SITE])

    def test_hook_point_with_conversions(self):
        def simple_hook(activation, hook):
            return activation * 2

        self.hook_point.add_hook(simple_hook, dir="fwd")
        assert self.hook_point.has_hooks()
        assert self.hook_point.has_hooks(dir="fwd")
        test_input = torch.tensor([1.0, 2.0])
        output = self.hook_point(test_input)
        assert torch.allclose(output, torch.tensor([2.0, 4.0]))
