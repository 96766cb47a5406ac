"""Deprecated location of :class:`~vision_sae_lens.layout.TokenLayout` (moved to ``vision_sae_lens.layout``).

Kept for one release so that existing imports keep working; import from ``vision_sae_lens.layout``.
"""

import warnings

from vision_sae_lens.layout import TOKEN_SELECTIONS, TokenLayout, TokenSelection, check_token_selection

__all__ = ["TOKEN_SELECTIONS", "TokenLayout", "TokenSelection", "check_token_selection"]

warnings.warn(
    "vision_sae_lens.backbones.layout moved to vision_sae_lens.layout; this alias goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)
