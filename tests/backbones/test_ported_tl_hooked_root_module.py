"""TransformerLens' ``tests/unit/test_hooked_root_module.py`` ported to a hooked ViT.

Source: TransformerLensOrg/TransformerLens at commit 08d7ff2a323934343d8bd94515bbdbc2a549f83d (identical on
``main`` at 4cd36aae). What images changed: the ``HookedRootModule()`` under test is a tiny random-init ViT
of each family, and its real HookPoints (``blocks.0.hook_resid_post`` for "linear",
``blocks.0.hook_attn_out`` for "attn") stand in for the ``Mock(HookPoint)`` entries, with their
``add_hook`` patched to a mock so the same calls are asserted. The two import-shim tests do not involve a
model and are TransformerLens' own text.
"""

import warnings
from unittest import mock

import pytest
from transformer_lens.HookedRootModule import HookedRootModule


@pytest.fixture
def tl_model(tl_hook_model):
    """The hook machinery is the same for every architecture: one family per library."""
    return tl_hook_model


LINEAR, ATTN = "blocks.0.hook_resid_post", "blocks.0.hook_attn_out"


def test_legacy_hook_points_import_still_works():
    """Back-compat: pre-3.0 code imported HookedRootModule from transformer_lens.hook_points."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from transformer_lens.hook_points import HookedRootModule as Legacy

    assert Legacy is HookedRootModule
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert deprecations, "expected a DeprecationWarning from the legacy import path"
    assert "transformer_lens.HookedRootModule" in str(deprecations[0].message)


def test_legacy_hook_points_attribute_error_for_unknown_names():
    """The shim only re-exports HookedRootModule — other missing attrs should raise."""
    import transformer_lens.hook_points as hp

    try:
        hp.DefinitelyNotARealSymbol  # noqa: B018
    except AttributeError as exc:
        assert "DefinitelyNotARealSymbol" in str(exc)
    else:
        raise AssertionError("expected AttributeError for unknown attribute")


@pytest.fixture
def model(tl_model):
    """The hooked ViT at context level 5 with ``add_hook`` of its two sites mocked."""
    tl_model.context_level = 5
    with (
        mock.patch.object(tl_model.mod_dict[LINEAR], "add_hook") as linear,
        mock.patch.object(tl_model.mod_dict[ATTN], "add_hook") as attn,
    ):
        yield tl_model, linear, attn
    tl_model.context_level = 0


def test_enable_hook_with_name(model):
    model, linear, _ = model
    hook = lambda x: False  # noqa: E731
    model._enable_hook_with_name(LINEAR, hook=hook, dir="fwd")
    linear.assert_called_with(hook, dir="fwd", level=5)


def test_enable_hooks_for_points(model):
    model, linear, attn = model
    hook_points = {LINEAR: model.mod_dict[LINEAR], ATTN: model.mod_dict[ATTN]}
    enabled = lambda x: x == ATTN  # noqa: E731
    hook = lambda x: False  # noqa: E731
    model._enable_hooks_for_points(hook_points=hook_points.items(), enabled=enabled, hook=hook, dir="bwd")
    attn.assert_called_with(hook, dir="bwd", level=5)
    linear.assert_not_called()


def test_enable_hook_with_string_param(model):
    model, linear, _ = model
    hook = lambda x: False  # noqa: E731
    model._enable_hook(LINEAR, hook=hook, dir="fwd")
    linear.assert_called_with(hook, dir="fwd", level=5)


def test_enable_hook_with_callable_param(model):
    model, linear, attn = model
    enabled = lambda x: x == ATTN  # noqa: E731
    hook = lambda x: False  # noqa: E731
    model._enable_hook(enabled, hook=hook, dir="fwd")
    linear.assert_not_called()
    attn.assert_called_with(hook, dir="fwd", level=5)
