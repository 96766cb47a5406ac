"""Attention internals as TransformerLens sites: the opt-in eager attention path.

Fused attention kernels (``scaled_dot_product_attention``) never materialise the scores or the
pattern, so those sites need the attention computed step by step. ``HookedSAEViT(...,
attention="eager")`` replaces the ``forward`` of each block's attention module (an instance attribute,
removed again by ``remove_bridges``) with one that runs the module's own projections and calls, in
TransformerLens' order and shapes::

    hook_q, hook_k, hook_v   (batch, pos, head, d_head)   after any q/k norm, before the scores
    hook_attn_scores         (batch, head, query, key)    scaled q.k (+ mask), before softmax
    hook_pattern             (batch, head, query, key)    softmax of the scores
    hook_z                   (batch, pos, head, d_head)   pattern-weighted values, before the output projection

Supported: timm ``Attention`` (ViT, DeiT, DINOv2, SigLIP, CLIP towers), ``torch.nn.MultiheadAttention``
(open_clip's native towers) and transformers 5 attention modules with ``q_proj``/``k_proj``/``v_proj``
(CLIP, SigLIP, DINOv2, ViT). The default ("fused") path installs none of this.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from vision_sae_lens.compat import HookPoint
from vision_sae_lens.errors import UnknownBackboneError

if TYPE_CHECKING:
    from timm.layers import Attention as TimmAttention

ATTENTION_SITES = ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z")
ATTENTION_MODES = ("fused", "eager")
HookGetter = Callable[[str], nn.Module]


class _HFAttention(Protocol):
    """What the eager path reads from a transformers q_proj/k_proj/v_proj attention module."""

    q_proj: nn.Module
    k_proj: nn.Module
    v_proj: nn.Module
    head_dim: int
    training: bool


class AttentionHooks(nn.Module):
    """The HookPoints of one block's attention (``blocks.{i}.attn.hook_*``)."""

    def __init__(self) -> None:
        super().__init__()
        for site in ATTENTION_SITES:
            setattr(self, site, HookPoint())


def attention_core(
    hook: HookGetter,
    q_bthd: torch.Tensor,
    k_bthd: torch.Tensor,
    v_bthd: torch.Tensor,
    *,
    scale: float,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Scaled dot-product attention through the six HookPoints; returns z (batch, pos, head, d_head)."""
    q_bthd, k_bthd, v_bthd = hook("hook_q")(q_bthd), hook("hook_k")(k_bthd), hook("hook_v")(v_bthd)
    scores_bhqk = torch.einsum("bqhd,bkhd->bhqk", q_bthd, k_bthd) * scale
    if is_causal:
        n_q, n_k = scores_bhqk.shape[-2:]
        causal = torch.ones(n_q, n_k, dtype=torch.bool, device=scores_bhqk.device).tril()
        scores_bhqk = scores_bhqk.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:  # sdpa convention: True = may attend
            scores_bhqk = scores_bhqk.masked_fill(~attn_mask, float("-inf"))
        else:
            scores_bhqk = scores_bhqk + attn_mask
    scores_bhqk = hook("hook_attn_scores")(scores_bhqk)
    pattern_bhqk = hook("hook_pattern")(scores_bhqk.softmax(dim=-1, dtype=torch.float32).to(q_bthd.dtype))
    if dropout_p:
        pattern_bhqk = F.dropout(pattern_bhqk, p=dropout_p)
    return hook("hook_z")(torch.einsum("bhqk,bkhd->bqhd", pattern_bhqk, v_bthd))


def install_eager_attention(module: nn.Module, hook: HookGetter) -> Callable[[], None]:
    """Route ``module``'s attention through :func:`attention_core`; returns the function that undoes it."""
    forward = _eager_forward_for(module, hook)
    module.forward = forward  # instance attribute: shadows the class's forward, nothing else changes

    def restore() -> None:
        if module.__dict__.get("forward") is forward:
            del module.forward

    return restore


def n_heads_of(module: nn.Module) -> int | None:
    """Number of heads of a supported attention module (None when unknown)."""
    for attr in ("num_heads", "num_attention_heads"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    config = getattr(module, "config", None)
    value = getattr(config, "num_attention_heads", None)
    return value if isinstance(value, int) else None


def _eager_forward_for(module: nn.Module, hook: HookGetter) -> Callable[..., Any]:
    from timm.layers import Attention as TimmAttention

    if type(module) is TimmAttention:
        return _timm_forward(module, hook)
    if isinstance(module, nn.MultiheadAttention):
        if not module.batch_first or not module._qkv_same_embed_dim:
            raise UnknownBackboneError(
                "attention='eager' needs batch-first nn.MultiheadAttention with one in_proj; "
                "use the default attention='fused'."
            )
        return _mha_forward(module, hook)
    out_proj = _hf_out_proj(module)
    if all(hasattr(module, a) for a in ("q_proj", "k_proj", "v_proj")) and out_proj is not None:
        # Duck-typed across transformers' families: the hasattr checks above are what _HFAttention needs.
        return _hf_forward(cast(_HFAttention, module), hook, out_proj)
    raise UnknownBackboneError(
        f"attention='eager' does not support {type(module).__name__} (supported: timm Attention, "
        "nn.MultiheadAttention, transformers q_proj/k_proj/v_proj attention); use attention='fused', "
        "which has every site except the attention internals."
    )


def _timm_forward(m: TimmAttention, hook: HookGetter) -> Callable[..., torch.Tensor]:
    def forward(
        x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        b, n, _ = x.shape
        gate_proj: nn.Module | None = getattr(m, "gate", None)  # only in newer timm versions
        gate = gate_proj(x).sigmoid() if gate_proj is not None else None
        q, k, v = m.qkv(x).reshape(b, n, 3, m.num_heads, m.head_dim).unbind(2)
        q, k = m.q_norm(q), m.k_norm(k)  # norms act on d_head: same result in either layout
        p = m.attn_drop.p if m.training else 0.0
        z = attention_core(
            hook, q, k, v, scale=m.scale, attn_mask=attn_mask, is_causal=is_causal, dropout_p=p
        )
        out = m.norm(z.reshape(b, n, m.num_heads * m.head_dim))
        if gate is not None:
            out = out * gate
        return m.proj_drop(m.proj(out))

    return forward


def _mha_forward(m: nn.MultiheadAttention, hook: HookGetter) -> Callable[..., tuple]:
    def forward(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if key_padding_mask is not None:
            raise NotImplementedError("attention='eager' does not support key_padding_mask")
        b, n, d = query.shape
        w_q, w_k, w_v = m.in_proj_weight.chunk(3)
        b_q, b_k, b_v = m.in_proj_bias.chunk(3) if m.in_proj_bias is not None else (None, None, None)
        d_head = d // m.num_heads
        q = F.linear(query, w_q, b_q).view(b, n, m.num_heads, d_head)
        k = F.linear(key, w_k, b_k).view(b, key.shape[1], m.num_heads, d_head)
        v = F.linear(value, w_v, b_v).view(b, value.shape[1], m.num_heads, d_head)
        mask = attn_mask
        if mask is not None and mask.dtype == torch.bool:
            mask = ~mask  # nn.MultiheadAttention: True = may NOT attend
        p = m.dropout if m.training else 0.0
        z = attention_core(
            hook, q, k, v, scale=d_head**-0.5, attn_mask=mask, is_causal=is_causal, dropout_p=p
        )
        return m.out_proj(z.reshape(b, n, d)), None

    return forward


def _hf_out_proj(m: nn.Module) -> nn.Module | None:
    return next(
        (getattr(m, a) for a in ("o_proj", "out_proj") if isinstance(getattr(m, a, None), nn.Module)), None
    )


def _hf_forward(m: _HFAttention, hook: HookGetter, out_proj: nn.Module) -> Callable[..., tuple]:
    scale = float(getattr(m, "scaling", None) or getattr(m, "scale", None) or m.head_dim**-0.5)
    dropout = float(getattr(m, "attention_dropout", getattr(m, "dropout", 0.0)) or 0.0)

    def forward(
        hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **_kwargs: Any
    ) -> tuple[torch.Tensor, None]:
        b, n, _ = hidden_states.shape
        shape = (b, n, -1, m.head_dim)
        q = m.q_proj(hidden_states).view(shape)
        k = m.k_proj(hidden_states).view(shape)
        v = m.v_proj(hidden_states).view(shape)
        p = dropout if m.training else 0.0
        z = attention_core(hook, q, k, v, scale=scale, attn_mask=attention_mask, dropout_p=p)
        return out_proj(z.reshape(b, n, -1)), None

    return forward
