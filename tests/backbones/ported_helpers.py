"""Shared pieces of the SAELens tests ported to images (tiny eager-attention ViT, SAE factory)."""

from __future__ import annotations

import torch
from helpers import build_tiny
from sae_lens import SAE, StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.transcoder import Transcoder, TranscoderConfig

from vision_sae_lens.backbones import HookedSAEViT

TINY = dict(img_size=32, patch_size=8, depth=2, num_classes=10)
MODEL = "timm:vit_tiny_patch16_224"
SAE_SITES = [
    "blocks.0.attn.hook_z",
    "blocks.0.hook_mlp_out",
    "blocks.0.mlp.hook_post",
    "blocks.0.hook_resid_pre",
]


def tiny_model(**kwargs) -> HookedSAEViT:
    """2-block timm ViT at 32 px (CLS + 16 patches), eager attention so ``attn.hook_z`` is a site."""
    return build_tiny(depth=2, attention="eager", **kwargs)


def images() -> torch.Tensor:
    """The image counterpart of SAELens' ``prompt``: two fixed preprocessed images."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def assert_close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def assert_not_close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    assert not torch.allclose(a, b, atol=atol), "tensors are unexpectedly close"


def get_hooked_sae(model: HookedSAEViT, act_name: str, **cfg_kwargs) -> SAE:
    """SAELens' ``get_hooked_sae``: a StandardSAE sized for ``act_name`` (hook_z reshaped per head)."""
    site_to_size = {
        "hook_z": model.cfg.d_head * model.cfg.n_heads,
        "hook_mlp_out": model.cfg.d_model,
        "hook_resid_pre": model.cfg.d_model,
        "hook_resid_post": model.cfg.d_model,
        "hook_in": model.cfg.d_model,
        "hook_post": model.cfg.d_mlp,
    }
    d_in = site_to_size[act_name.split(".")[-1]]
    cfg = StandardSAEConfig(
        d_in=d_in,
        d_sae=d_in * 2,
        dtype="float32",
        device="cpu",
        reshape_activations="hook_z" if act_name.endswith("hook_z") else "none",
        metadata=SAEMetadata(model_name=MODEL, hook_name=act_name, hook_head_index=None),
        **cfg_kwargs,
    )
    return StandardSAE(cfg)


def get_transcoder(model: HookedSAEViT, layer: int = 0) -> Transcoder:
    """A transcoder ``blocks.{layer}.mlp.hook_in -> blocks.{layer}.hook_mlp_out``."""
    cfg = TranscoderConfig(
        d_in=model.cfg.d_model,
        d_sae=model.cfg.d_model * 2,
        d_out=model.cfg.d_model,
        apply_b_dec_to_input=False,
        metadata=SAEMetadata(
            hook_name=f"blocks.{layer}.mlp.hook_in", hook_name_out=f"blocks.{layer}.hook_mlp_out"
        ),
    )
    return Transcoder(cfg)


class Counter:
    def __init__(self) -> None:
        self.count = 0

    def inc(self, *args, **kwargs) -> None:
        self.count += 1


class SAELensReference(HookedSAEViT):
    """The same hooked ViT, but SAEs attached by SAELens' unmodified ``HookedSAETransformer.add_sae``
    (SAELens' own ``_SAEWrapper``): the reference our splicing must match."""

    def add_sae(self, sae, use_error_term=None, exclude_special_tokens=False):
        from vision_sae_lens.compat import borrowed

        borrowed("add_sae")(self, sae, use_error_term, exclude_special_tokens)


def reference_twin(model: HookedSAEViT) -> SAELensReference:
    """A :class:`SAELensReference` with ``model``'s exact weights."""
    twin = SAELensReference.from_pretrained(MODEL, pretrained=False, attention=model.attention, **TINY)
    twin.backbone.load_state_dict(model.backbone.state_dict())
    return twin


def sae_copy(sae: SAE) -> SAE:
    """An independent SAE with the same config and weights."""
    other = SAE.from_dict(sae.cfg.to_dict())
    other.load_state_dict(sae.state_dict())
    return other
