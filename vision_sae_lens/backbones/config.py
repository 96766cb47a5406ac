"""``model.cfg`` and the activation cache: the two TransformerLens objects SAELens-style code reads.

``HookedViTConfig`` carries TransformerLens' ``HookedTransformerConfig`` field names where they mean
something for a ViT (``d_model``, ``n_layers``, ``n_heads``, ``d_head``, ``d_mlp``, ``n_ctx``,
``normalization_type``, ``attn_only``, the ``use_*`` toggles, ``model_name``, ``device``, ``dtype``), so
code written for text (``model.cfg.d_model``, ``ActivationCache``'s analysis methods) runs unchanged.
It is a snapshot: change a toggle with ``model.set_use_attn_result(True)``, not on the config.
``SiteCache`` is TransformerLens' ``ActivationCache`` whose missing keys raise
:class:`~vision_sae_lens.errors.UnknownSiteError` naming the close matches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vision_sae_lens.compat import ActivationCache
from vision_sae_lens.errors import ConfigError, UnknownSiteError, close_matches


@dataclass(frozen=True)
class HookedViTConfig:
    """TransformerLens-named facts about a hooked ViT (read it as ``model.cfg``)."""

    d_model: int
    """Residual stream width."""
    n_layers: int
    """Number of transformer blocks."""
    n_heads: int | None
    """Attention heads per block (None when the backbone does not say)."""
    d_head: int | None
    """Width of one head (``d_model // n_heads`` unless the attention module says otherwise)."""
    d_mlp: int | None
    """MLP hidden width (``mlp.hook_post``)."""
    n_ctx: int
    """Sequence length at the model's input size: prefix tokens plus patches."""
    model_name: str
    """The backbone id (``timm:NAME``, ``open_clip:ARCH/TAG``, ``hf:ID``, ...)."""
    device: torch.device
    """Device of the backbone's parameters (follows ``model.to(...)``)."""
    dtype: torch.dtype
    """dtype of the backbone's parameters (follows ``model.to(...)`` / ``.half()``)."""
    n_prefix_tokens: int = 1
    """Tokens before the first patch (CLS and registers); the image counterpart of BOS."""
    attention: str = "fused"
    """``"fused"`` (the model's own attention) or ``"eager"`` (attention internals are sites)."""
    normalization_type: str | None = "LN"
    """The block norms: ``"LN"`` (LayerNorm), ``"RMS"`` (RMSNorm) or None (unknown)."""
    attn_only: bool = False
    """Whether blocks lack an MLP (never for the supported ViTs)."""
    positional_embedding_type: str | None = "standard"
    """``"standard"`` when an absolute position embedding is added to the tokens (``hook_pos_embed``)."""
    n_key_value_heads: int | None = None
    """Grouped-query attention's key/value heads (None: every head has its own)."""
    use_attn_result: bool = False
    """Whether ``attn.hook_result`` runs (``model.set_use_attn_result``)."""
    use_split_qkv_input: bool = False
    """Whether ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input`` run."""
    use_attn_in: bool = False
    """Whether ``hook_attn_in`` runs."""
    use_hook_mlp_in: bool = False
    """Whether ``hook_mlp_in`` runs."""

    def __post_init__(self) -> None:
        if self.d_model < 1 or self.n_layers < 1 or self.n_ctx < 1:
            raise ConfigError(
                f"d_model, n_layers and n_ctx must be positive, got {self.d_model}, {self.n_layers}, {self.n_ctx}"
            )
        if self.n_heads is not None and self.n_heads < 1:
            raise ConfigError(f"n_heads must be positive or None, got {self.n_heads}")
        if self.attention not in ("fused", "eager"):
            raise ConfigError(f"attention must be 'fused' or 'eager', got {self.attention!r}")


class SiteCache(ActivationCache):
    """TransformerLens' ``ActivationCache``; a missing name raises ``UnknownSiteError`` (a ``KeyError``)."""

    def __getitem__(self, key):  # noqa: ANN001 - same signature as ActivationCache
        try:
            return super().__getitem__(key)
        except KeyError:
            name = key if isinstance(key, str) else repr(key)
            raise UnknownSiteError(
                f"{name!r} is not in this cache.{close_matches(name, self.cache_dict)} It holds "
                f"{len(self.cache_dict)} names (see cache.keys()); run_with_cache(names_filter=...) decides "
                "which sites are cached."
            ) from None
