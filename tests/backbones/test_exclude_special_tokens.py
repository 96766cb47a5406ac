"""exclude_special_tokens on images: True = the prefix tokens (CLS and registers), a list = positions."""

from __future__ import annotations

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from vision_sae_lens.errors import SAEMismatchError


def _sae(model, site):
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=model.d_model, d_sae=2 * model.d_model))
    sae.cfg.metadata.hook_name = site
    return sae


@pytest.fixture(scope="module")
def reg_model(build, tmp_path_factory):
    model, _ = build("timm-dinov2-reg", tmp_path_factory)
    assert model.layout.n_prefix == 5  # CLS + 4 registers
    return model


def test_true_bypasses_cls_and_registers_only(reg_model):
    site = "blocks.0.hook_resid_post"
    pixels = torch.randn(2, 3, *reg_model.layout.image_size)
    _, plain = reg_model.run_with_cache(pixels, names_filter=site)
    _, cache = reg_model.run_with_cache_with_saes(
        pixels, saes=[_sae(reg_model, site)], use_error_term=False, exclude_special_tokens=True
    )
    out = cache[site + ".hook_sae_output"]
    assert torch.equal(out[:, :5], plain[site][:, :5])
    assert not torch.allclose(out[:, 5:], plain[site][:, 5:], atol=1e-4)


def test_negative_positions_count_from_the_end(reg_model):
    site = "blocks.0.hook_resid_post"
    pixels = torch.randn(1, 3, *reg_model.layout.image_size)
    _, plain = reg_model.run_with_cache(pixels, names_filter=site)
    _, cache = reg_model.run_with_cache_with_saes(
        pixels, saes=[_sae(reg_model, site)], use_error_term=False, exclude_special_tokens=[-1]
    )
    assert torch.equal(cache[site + ".hook_sae_output"][:, -1], plain[site][:, -1])


def test_bad_exclusions_are_clear_errors_before_attaching(reg_model):
    site = "blocks.0.hook_resid_post"
    with pytest.raises(SAEMismatchError, match=r"outside 0\.\.8 \(5 prefix tokens"):
        reg_model.add_sae(_sae(reg_model, site), exclude_special_tokens=[9])
    with pytest.raises(SAEMismatchError, match="bool or a list"):
        reg_model.add_sae(_sae(reg_model, site), exclude_special_tokens=["cls"])
    with pytest.raises(SAEMismatchError, match="token axis"):
        reg_model.add_sae(_sae(reg_model, "hook_pooled"), exclude_special_tokens=True)
    assert not reg_model._acts_to_saes
