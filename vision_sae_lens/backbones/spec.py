"""What an adapter tells the hooked wrapper about one backbone.

An adapter (timm, open_clip, transformers, a user's module) never changes the model: it only
says where the blocks are, which sub-module inside a block produces each site, how images are
preprocessed and how to call the model. ``HookedSAEViT`` turns that into HookPoints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from vision_sae_lens.layout import TokenLayout


@dataclass(frozen=True)
class BlockSites:
    """Paths (relative to a block) of the sub-modules that carry a block's inner sites.

    ``attn_out``/``mlp_out``/``mlp_post`` name a module whose output (or ``output[0]`` for modules that
    return tuples) is the site; ``resid_mid`` names a module whose first input is the residual stream
    between attention and MLP; ``mlp_in`` names the MLP, whose input is ``mlp.hook_in``; ``attn`` names
    the attention module (its internals are sites with ``attention="eager"``). ``None`` means the
    family does not expose that site.
    """

    attn_out: str | None = None
    """Module whose output is ``hook_attn_out``."""
    mlp_out: str | None = None
    """Module whose output is ``hook_mlp_out``."""
    resid_mid: str | None = None
    """Module whose first input is ``hook_resid_mid``."""
    mlp_post: str | None = None
    """Module whose output is ``mlp.hook_post`` (the MLP's hidden activation)."""
    mlp_in: str | None = None
    """The MLP module; its first input is ``mlp.hook_in`` (what transcoders read)."""
    attn: str | None = None
    """The attention module (``attn.hook_q`` ... ``attn.hook_z`` with ``attention="eager"``)."""
    ln1: str | None = None
    """The norm before attention (``ln1.hook_scale`` / ``ln1.hook_normalized``)."""
    ln2: str | None = None
    """The norm before the MLP (``ln2.hook_scale`` / ``ln2.hook_normalized``)."""
    fc1: str | None = None
    """The MLP's first linear layer (``W_in``; its output is ``mlp.hook_pre``); None for gated MLPs."""
    fc2: str | None = None
    """The MLP's second linear layer (``W_out``)."""
    ls1: str | None = None
    """LayerScale of the attention branch (a module with ``gamma``/``lambda1``, or a parameter)."""
    ls2: str | None = None
    """LayerScale of the MLP branch."""


@dataclass(frozen=True)
class ModuleSite:
    """A model-level site: a module and whether the site is its input or its output."""

    module: nn.Module
    where: Literal["input", "output"] = "output"


@dataclass(frozen=True)
class PositionEmbedding:
    """Where the absolute position embedding enters the stream, for ``hook_pos_embed`` and ``W_pos``."""

    weight: Callable[[], torch.Tensor]
    """Returns the rows (n_pos, d_model), a view of the model's parameter."""
    token_index: Sequence[int]
    """The token positions the rows are added to, in order (prefix tokens may have none)."""


@dataclass(frozen=True)
class HeadReadout:
    """How the output reads the final-normed tokens: a linear map of one token or of a mean of tokens."""

    linear: Callable[[], tuple[torch.Tensor, torch.Tensor | None]]
    """Returns (weight (n_out, d_model), bias (n_out,) or None), views of the head / projection."""
    token_index: Sequence[int]
    """The tokens the head reads: one (CLS pooling) or several that are averaged (mean pooling)."""


@dataclass
class BackboneSpec:
    """Everything ``HookedSAEViT`` needs to hook one backbone without changing it."""

    backbone_id: str
    """Id the model was loaded from (``timm:NAME``, ``open_clip:ARCH/TAG``, ``hf:ID``, ``module:CLASS``)."""
    model: nn.Module
    """The unmodified model (whole model, not only the blocks)."""
    blocks: list[nn.Module]
    """Transformer blocks in execution order; each maps (b, t, d) to (b, t, d), batch first."""
    block_sites: BlockSites
    """Where each block's inner sites live."""
    layout: TokenLayout
    """Token layout at the model's input size."""
    transform: Callable[[Any], torch.Tensor]
    """The backbone's own preprocessing: one PIL image in the right mode -> (c, h, w) float tensor."""
    preprocessing: dict[str, Any]
    """JSON description of ``transform`` (mean, std, size, resize, crop, interpolation, channels)."""
    call: Callable[[nn.Module, torch.Tensor], Any] = lambda model, pixels: model(pixels)
    """How to run the model on preprocessed pixels; the result is returned unchanged."""
    output_tensor: Callable[[Any], torch.Tensor] = lambda out: out
    """Picks the tensor metrics compare (logits or image embedding) from the model's output."""
    output_kind: Literal["logits", "embedding"] = "embedding"
    """Whether ``output_tensor`` gives class logits or an embedding."""
    pos_embed: PositionEmbedding | None = None
    """The absolute position embedding when the stream entering block 0 is tokens plus it (no norm between)."""
    pre_norm: nn.Module | None = None
    """A norm between the embedding and block 0 (CLIP's ``ln_pre``): ``ln_pre.hook_scale`` / ``hook_normalized``."""
    final_norm: ModuleSite | None = None
    """``ln_final.hook_normalized``: the final norm applied to every token, shape (b, t, d)."""
    readout: HeadReadout | None = None
    """The linear head or projection after the final norm, when the output is linear in the normed tokens."""
    pooled: ModuleSite | None = None
    """``hook_pooled``: the pooled image vector the head or projection reads, shape (b, d)."""
    d_model: int = 0
    """Residual stream width."""
    d_mlp: int | None = None
    """MLP hidden width (``mlp.hook_post``), when known."""
    n_heads: int | None = None
    """Attention heads per block, when known."""
    notes: list[str] = field(default_factory=list)
    """Family-specific facts worth showing a user (missing sites and why)."""
    weights: dict[str, str] | None = None
    """The local weights file the model was loaded from: ``{"file": name, "sha256": hex}`` (no path)."""
    build: dict[str, Any] | None = None
    """How ``load_backbone_spec`` built it, so it can be built again: ``{"weights": "pretrained" |
    "random-init" | "file", "kwargs": {...}}`` (the constructor keyword arguments, JSON values only);
    None for a model object handed in, or keyword arguments that are not JSON."""
