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

With ``set_use_attn_in`` / ``set_use_split_qkv_input`` the block hands the attention a per-head input
(batch, pos, head, d_model), or one per q / k / v (batch, pos, 3, head, d_model), already through the
block's norm; each head then projects its own copy with its rows of ``W_Q`` / ``W_K`` / ``W_V``. Every
tensor a hook receives may be edited in place with autograd on (no multi-output views, and the pattern
is not the tensor softmax saved for its backward).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from vision_sae_lens.backbones.hook_tree import AttentionHooks
from vision_sae_lens.backbones.weights import QKV, qkv_weights
from vision_sae_lens.errors import UnknownBackboneError

if TYPE_CHECKING:
    from timm.layers import Attention as TimmAttention

ATTENTION_MODES = ("fused", "eager")
HooksGetter = Callable[[], AttentionHooks]


class _HFAttention(Protocol):
    """What the eager path reads from a transformers q_proj/k_proj/v_proj attention module."""

    q_proj: nn.Module
    k_proj: nn.Module
    v_proj: nn.Module
    head_dim: int
    training: bool


def attention_core(
    hooks: AttentionHooks,
    q_bthd: torch.Tensor,
    k_bthd: torch.Tensor,
    v_bthd: torch.Tensor,
    *,
    scale: float,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Scaled dot-product attention through the six HookPoints; returns z (batch, pos, head, d_head).

    The HookPoints are looked up on ``hooks`` at call time: SAELens' ``add_sae`` replaces them."""
    q_bthd, k_bthd, v_bthd = hooks.hook_q(q_bthd), hooks.hook_k(k_bthd), hooks.hook_v(v_bthd)
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
    scores_bhqk = hooks.hook_attn_scores(scores_bhqk)
    softmax = scores_bhqk.softmax(dim=-1, dtype=torch.float32)
    pattern_bhqk = softmax.to(q_bthd.dtype)
    if pattern_bhqk is softmax:
        # softmax keeps its output for the backward: an in-place edit by a hook must not reach it
        pattern_bhqk = pattern_bhqk.clone()
    pattern_bhqk = hooks.hook_pattern(pattern_bhqk)
    if dropout_p:
        pattern_bhqk = F.dropout(pattern_bhqk, p=dropout_p)
    z_bthd = hooks.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern_bhqk, v_bthd))
    if hooks.keep_z:
        hooks.kept_z = z_bthd  # read by the block's attn_out bridge for hook_result
    return z_bthd


def per_head_qkv(x: torch.Tensor, qkv: QKV) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (batch, pos, head, d_head) from a per-head input: (b, t, h, d_model) shared by q, k and v,
    or (b, t, 3, h, d_model) one for each; head h uses only its own copy and its own weight rows."""
    inputs = x.unbind(2) if x.ndim == 5 else (x, x, x)
    weights = ((qkv.W_Q, qkv.b_Q), (qkv.W_K, qkv.b_K), (qkv.W_V, qkv.b_V))
    q, k, v = (
        torch.einsum("bthd,hde->bthe", inp, w) + b for inp, (w, b) in zip(inputs, weights, strict=True)
    )
    return q, k, v


def install_eager_attention(module: nn.Module, hooks: HooksGetter, n_heads: int) -> Callable[[], None]:
    """Route ``module``'s attention through :func:`attention_core`; returns the function that undoes it."""
    forward = _eager_forward_for(module, hooks, n_heads)
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


def _eager_forward_for(module: nn.Module, hooks: HooksGetter, n_heads: int) -> Callable[..., Any]:
    from timm.layers import Attention as TimmAttention

    if type(module) is TimmAttention:
        return _timm_forward(module, hooks)
    if isinstance(module, nn.MultiheadAttention):
        if not module.batch_first or not module._qkv_same_embed_dim:
            raise UnknownBackboneError(
                "attention='eager' needs batch-first nn.MultiheadAttention with one in_proj; "
                "use the default attention='fused'."
            )
        return _mha_forward(module, hooks)
    out_proj = _hf_out_proj(module)
    if all(hasattr(module, a) for a in ("q_proj", "k_proj", "v_proj")) and out_proj is not None:
        # Duck-typed across transformers' families: the hasattr checks above are what _HFAttention needs.
        return _hf_forward(cast(_HFAttention, module), hooks, out_proj, n_heads)
    raise UnknownBackboneError(
        f"attention='eager' does not support {type(module).__name__} (supported: timm Attention, "
        "nn.MultiheadAttention, transformers q_proj/k_proj/v_proj attention); use attention='fused', "
        "which has every site except the attention internals."
    )


def _timm_forward(m: TimmAttention, hooks: HooksGetter) -> Callable[..., torch.Tensor]:
    def forward(
        x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        b, n = x.shape[:2]
        gate_proj: nn.Module | None = getattr(m, "gate", None)  # only in newer timm versions
        if x.ndim > 3:
            if gate_proj is not None:
                raise UnknownBackboneError(
                    "per-head attention inputs are not supported with a gated timm Attention"
                )
            q, k, v = per_head_qkv(x, qkv_weights(m, m.num_heads))
        else:
            qkv = m.qkv(x).reshape(b, n, 3, m.num_heads, m.head_dim)
            # plain indexing, not unbind: a hook may edit q, k or v in place with autograd on
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        gate = gate_proj(x).sigmoid() if gate_proj is not None else None
        q, k = m.q_norm(q), m.k_norm(k)  # norms act on d_head: same result in either layout
        p = m.attn_drop.p if m.training else 0.0
        z = attention_core(
            hooks(), q, k, v, scale=m.scale, attn_mask=attn_mask, is_causal=is_causal, dropout_p=p
        )
        out = m.norm(z.reshape(b, n, m.num_heads * m.head_dim))
        if gate is not None:
            out = out * gate
        return m.proj_drop(m.proj(out))

    return forward


def _mha_forward(m: nn.MultiheadAttention, hooks: HooksGetter) -> Callable[..., tuple]:
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
        b, n, d = query.shape[0], query.shape[1], m.embed_dim
        d_head = d // m.num_heads
        if query.ndim > 3:  # per-head inputs: the block passes the same tensor as query, key and value
            q, k, v = per_head_qkv(query, qkv_weights(m, m.num_heads))
        else:
            w_q, w_k, w_v = m.in_proj_weight.chunk(3)
            b_q, b_k, b_v = m.in_proj_bias.chunk(3) if m.in_proj_bias is not None else (None, None, None)
            q = F.linear(query, w_q, b_q).view(b, n, m.num_heads, d_head)
            k = F.linear(key, w_k, b_k).view(b, key.shape[1], m.num_heads, d_head)
            v = F.linear(value, w_v, b_v).view(b, value.shape[1], m.num_heads, d_head)
        mask = attn_mask
        if mask is not None and mask.dtype == torch.bool:
            mask = ~mask  # nn.MultiheadAttention: True = may NOT attend
        p = m.dropout if m.training else 0.0
        z = attention_core(
            hooks(), q, k, v, scale=d_head**-0.5, attn_mask=mask, is_causal=is_causal, dropout_p=p
        )
        return m.out_proj(z.reshape(b, n, d)), None

    return forward


def _hf_out_proj(m: nn.Module) -> nn.Module | None:
    return next(
        (getattr(m, a) for a in ("o_proj", "out_proj") if isinstance(getattr(m, a, None), nn.Module)), None
    )


def _hf_forward(
    m: _HFAttention, hooks: HooksGetter, out_proj: nn.Module, n_heads: int
) -> Callable[..., tuple]:
    scale = float(getattr(m, "scaling", None) or getattr(m, "scale", None) or m.head_dim**-0.5)
    dropout = float(getattr(m, "attention_dropout", getattr(m, "dropout", 0.0)) or 0.0)

    def forward(
        hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **_kwargs: Any
    ) -> tuple[torch.Tensor, None]:
        b, n = hidden_states.shape[:2]
        if hidden_states.ndim > 3:
            q, k, v = per_head_qkv(hidden_states, qkv_weights(cast(nn.Module, m), n_heads))
        else:
            shape = (b, n, -1, m.head_dim)
            q = m.q_proj(hidden_states).view(shape)
            k = m.k_proj(hidden_states).view(shape)
            v = m.v_proj(hidden_states).view(shape)
        p = dropout if m.training else 0.0
        z = attention_core(hooks(), q, k, v, scale=scale, attn_mask=attention_mask, dropout_p=p)
        return out_proj(z.reshape(b, n, -1)), None

    return forward
