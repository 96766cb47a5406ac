"""SAEs in the forward pass: SAELens semantics, token selection, exact error term, no leaked hooks."""

from __future__ import annotations

import pytest
import torch
from sae_lens import (
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)

from vision_sae_lens.errors import BackboneMismatchWarning, SAEMismatchError, UnknownSiteError
from vision_sae_lens.metadata import VisionFacts, apply_vision_facts

SITE = "blocks.0.hook_resid_post"
SAE_KINDS = {
    "standard": (StandardSAE, StandardSAEConfig, {}),
    "topk": (TopKSAE, TopKSAEConfig, {"k": 8}),
    "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig, {}),  # also what BatchTopK / Matryoshka save as
    "gated": (GatedSAE, GatedSAEConfig, {}),
}


def make_sae(kind: str, model, *, tokens: str | None = "patches", site: str = SITE, d_in: int | None = None):
    cls, cfg_cls, extra = SAE_KINDS[kind]
    torch.manual_seed(1)
    sae = cls(cfg_cls(d_in=d_in or model.d_model, d_sae=64, **extra))
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1 if "threshold" not in name else torch.full_like(p, 0.01))
    sae.cfg.metadata.hook_name = site
    if tokens is not None:
        apply_vision_facts(
            sae, VisionFacts(backbone=model.backbone_id, hook_name=site, tokens=tokens, layout=model.layout)
        )
    return sae


def torch_hook_count(model) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


@pytest.fixture
def pixels():
    torch.manual_seed(0)
    return torch.randn(3, 3, 32, 32)


@pytest.mark.parametrize("kind", list(SAE_KINDS))
def test_error_term_reproduces_clean_output_exactly(tiny_vit, pixels, kind):
    sae = make_sae(kind, tiny_vit)
    with torch.no_grad():
        clean = tiny_vit(pixels)
        spliced = tiny_vit.run_with_saes(pixels, saes=[sae], use_error_term=True)
    assert torch.equal(spliced, clean)


@pytest.mark.parametrize("kind", list(SAE_KINDS))
def test_splice_equals_manual_application_on_selected_tokens(tiny_vit, pixels, kind):
    sae = make_sae(kind, tiny_vit, tokens="patches")
    with torch.no_grad():
        _, clean = tiny_vit.run_with_cache(pixels)
        x = clean[SITE]
        manual = x.clone()
        manual[:, 1:] = sae.decode(sae.encode(x[:, 1:]))  # CLS (token 0) passes through untouched
        seen = {}
        tiny_vit.run_with_hooks_with_saes(
            pixels,
            saes=[sae],
            fwd_hooks=[(f"{SITE}.hook_sae_output", lambda t, hook: seen.setdefault("out", t))],
        )
        # Downstream: the model run on the manually edited stream.
        manual_out = tiny_vit.run_with_hooks(pixels, fwd_hooks=[(SITE, lambda t, hook: manual)])
        spliced_out = tiny_vit.run_with_saes(pixels, saes=[sae])
    torch.testing.assert_close(seen["out"], manual, rtol=0, atol=0)
    assert torch.equal(spliced_out, manual_out)


@pytest.mark.parametrize("kind", list(SAE_KINDS))
def test_cached_latents_equal_sae_encode(tiny_vit, pixels, kind):
    """Cross-check against SAELens: our splice's hook_sae_acts_post == sae.encode on cached activations."""
    sae = make_sae(kind, tiny_vit, tokens="all")
    with torch.no_grad():
        _, clean = tiny_vit.run_with_cache(pixels)
        _, cache = tiny_vit.run_with_cache_with_saes(pixels, saes=[sae])
        expected = sae.encode(clean[SITE])
    assert torch.equal(cache[f"{SITE}.hook_sae_acts_post"], expected)
    assert SITE not in cache  # the SAE replaces the hook point while attached (SAELens semantics)


def test_reset_restores_forward_and_hooks_never_leak(tiny_vit, pixels):
    sae = make_sae("standard", tiny_vit)
    before = torch_hook_count(tiny_vit)
    with torch.no_grad():
        clean = tiny_vit(pixels)
        tiny_vit.add_sae(sae)
        assert not torch.equal(tiny_vit(pixels), clean)
        tiny_vit.reset_saes()
        assert torch.equal(tiny_vit(pixels), clean)
        with tiny_vit.saes(saes=[sae]):
            assert len(tiny_vit.acts_to_saes) == 1
        assert tiny_vit.acts_to_saes == {}

        def boom(t, hook):
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            tiny_vit.run_with_hooks_with_saes(
                pixels, saes=[sae], fwd_hooks=[(f"{SITE}.hook_sae_acts_post", boom)]
            )
        with pytest.raises(RuntimeError, match="boom"):
            tiny_vit.run_with_cache(pixels, names_filter=lambda n: n == SITE or boom(None, None))
        assert torch.equal(tiny_vit(pixels), clean)
    assert tiny_vit.acts_to_saes == {}
    assert torch_hook_count(tiny_vit) == before
    assert all(not hp.fwd_hooks for hp in tiny_vit.hook_dict.values())


def test_zero_ablating_latents_changes_output_only_without_error_term_equivalence(tiny_vit, pixels):
    sae = make_sae("standard", tiny_vit)
    with torch.no_grad():
        clean = tiny_vit(pixels)
        ablated = tiny_vit.run_with_hooks_with_saes(
            pixels,
            saes=[sae],
            fwd_hooks=[(f"{SITE}.hook_sae_acts_post", lambda t, hook: torch.zeros_like(t))],
        )
    assert not torch.equal(ablated, clean)


def test_bad_saes_raise_clear_errors(tiny_vit):
    with pytest.raises(UnknownSiteError, match="Did you mean: blocks.0.hook_resid_post"):
        tiny_vit.add_sae(make_sae("standard", tiny_vit, site="blocks.0.hook_resid_pots", tokens=None))
    with pytest.raises(SAEMismatchError, match="d_in=17"):
        tiny_vit.add_sae(make_sae("standard", tiny_vit, d_in=17, tokens=None))
    other = make_sae("standard", tiny_vit)
    other.cfg.metadata.backbone = "timm:some_other_vit"
    with pytest.warns(BackboneMismatchWarning, match="some_other_vit"):
        tiny_vit.add_sae(other)
    tiny_vit.reset_saes()
    assert tiny_vit.acts_to_saes == {}


@pytest.mark.parametrize("tokens", ["patches", "registers", "cls"])
def test_token_selection_with_registers(tokens, tmp_path_factory):
    """DINOv2 with 4 registers: only the SAE's tokens are reconstructed, the others pass through."""
    from families import build_family

    model, _ = build_family("timm-dinov2-reg", tmp_path_factory)
    site = "blocks.0.hook_resid_post"
    sae = make_sae("standard", model, tokens=tokens, site=site)
    pixels = torch.randn(2, 3, *model.layout.image_size)
    with torch.no_grad():
        _, clean = model.run_with_cache(pixels, names_filter=[site])
        _, cache = model.run_with_cache_with_saes(pixels, saes=[sae])
    selected = model.layout.token_mask(tokens)
    out = cache[f"{site}.hook_sae_output"]
    assert torch.equal(out[:, ~selected], clean[site][:, ~selected])
    x = clean[site][:, selected]
    torch.testing.assert_close(out[:, selected], sae.decode(sae.encode(x)))  # BLAS may tile differently
