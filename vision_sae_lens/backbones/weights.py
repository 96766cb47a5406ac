"""A backbone's weights under TransformerLens' names and shapes, read from the real modules.

TransformerLens' analysis code (``ActivationCache.compute_head_results``, ``get_neuron_results``,
``get_full_resid_decomposition``) reads ``blocks[l].attn.W_O``, ``blocks[l].mlp.W_out``,
``model.accumulated_bias`` and friends. Here they are computed on every access from the wrapped
model's own parameters, never copied::

    W_Q, W_K, W_V   (n_heads, d_model, d_head)   views of the fused qkv / in_proj / q_proj rows
    b_Q, b_K, b_V   (n_heads, d_head)
    W_O             (n_heads, d_head, d_model)   view of the output projection's columns
    b_O             (d_model,)
    W_in (d_model, d_mlp), b_in (d_mlp,), W_out (d_mlp, d_model), b_out (d_model,)   views of fc1 / fc2

so ``W_Q.data_ptr()`` lies inside the model's ``qkv.weight``, an in-place edit through a view changes
the model, and gradients reach the model's parameters. A bias the module does not have is a zero
tensor (TransformerLens' models always have one).

LayerScale (timm ``ls1``/``ls2``, open_clip ``ls_1``/``ls_2``, transformers DINOv2 ``layer_scale1/2``,
EVA ``gamma_1``/``gamma_2``) multiplies a branch after its output projection. TransformerLens'
identities (per-head results plus ``b_O`` give ``hook_attn_out``; neuron results plus ``b_out`` give
``hook_mlp_out``) hold only with the scale folded in, so for those blocks ``W_O``, ``b_O``, ``W_out``
and ``b_out`` are the products ``weight * gamma`` the residual stream sees: still computed from the live
parameters (gradients reach both the projection and gamma), but new tensors, so an in-place edit of
them does not reach the model (edit the projection or gamma instead).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vision_sae_lens.errors import UnknownBackboneError


@dataclass(frozen=True)
class QKV:
    """One attention module's query, key and value weights in TransformerLens' shapes."""

    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    b_Q: torch.Tensor
    b_K: torch.Tensor
    b_V: torch.Tensor


def qkv_weights(attn: nn.Module, n_heads: int) -> QKV:
    """``W_Q, W_K, W_V`` (n_heads, d_model, d_head) and ``b_Q, b_K, b_V`` (n_heads, d_head) of a timm
    ``Attention`` (fused ``qkv``, optional ``q_bias``/``v_bias``), ``nn.MultiheadAttention`` (``in_proj``)
    or a transformers attention (``q_proj``/``k_proj``/``v_proj``); views of the module's parameters."""
    fused = getattr(attn, "qkv", None)
    if isinstance(fused, nn.Linear):
        weights = fused.weight.chunk(3)
        biases = _fused_biases(attn, fused)
    elif isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim:
        weights = attn.in_proj_weight.chunk(3)
        biases = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
    elif all(isinstance(getattr(attn, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj")):
        linears = [getattr(attn, n) for n in ("q_proj", "k_proj", "v_proj")]
        weights = tuple(lin.weight for lin in linears)
        biases = tuple(lin.bias for lin in linears)
    else:
        raise UnknownBackboneError(
            f"no TransformerLens weights for {type(attn).__name__}: supported are timm Attention, "
            "nn.MultiheadAttention and transformers q_proj/k_proj/v_proj attention."
        )
    w_q, w_k, w_v = (_per_head_in(w, n_heads) for w in weights)
    d_head = w_q.shape[-1]
    b_q, b_k, b_v = (_per_head_bias(b, n_heads, d_head, w_q) for b in biases)
    return QKV(w_q, w_k, w_v, b_q, b_k, b_v)


def out_projection(attn: nn.Module) -> nn.Linear:
    """The attention's output projection (timm ``proj``, ``out_proj``, transformers ``o_proj``)."""
    for name in ("proj", "out_proj", "o_proj"):
        linear = getattr(attn, name, None)
        if isinstance(linear, nn.Linear):
            return linear
    raise UnknownBackboneError(f"{type(attn).__name__} has no output projection (proj / out_proj / o_proj)")


def head_out_weight(attn: nn.Module, n_heads: int, gamma: torch.Tensor | None) -> torch.Tensor:
    """``W_O`` (n_heads, d_head, d_model): a view of the projection's columns, times ``gamma`` if given."""
    weight = out_projection(attn).weight  # (d_model, n_heads * d_head)
    d_model = weight.shape[0]
    w_o = weight.view(d_model, n_heads, -1).permute(1, 2, 0)
    return w_o if gamma is None else w_o * gamma


def out_bias(linear: nn.Linear, gamma: torch.Tensor | None) -> torch.Tensor:
    """A projection's bias as the residual stream sees it (zeros when it has none)."""
    bias = linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.weight.shape[0])
    return bias if gamma is None else bias * gamma


def layer_scale(block: nn.Module, path: str | None) -> torch.Tensor | None:
    """The LayerScale vector at ``path`` inside ``block`` (a module holding ``gamma``/``lambda1``/``scale``,
    or a parameter such as EVA's ``gamma_1``); None when there is none (missing or ``nn.Identity``)."""
    if path is None:
        return None
    target: object = block
    for part in path.split("."):
        target = getattr(target, part, None)
    if isinstance(target, torch.Tensor):
        return target
    if isinstance(target, nn.Module):
        for name in ("gamma", "lambda1", "scale"):
            value = getattr(target, name, None)
            if isinstance(value, torch.Tensor):
                return value
    return None


def mlp_in_weight(fc1: nn.Linear) -> torch.Tensor:
    """``W_in`` (d_model, d_mlp): the transposed view of the MLP's first linear layer."""
    return fc1.weight.T


def mlp_out_weight(fc2: nn.Linear, gamma: torch.Tensor | None) -> torch.Tensor:
    """``W_out`` (d_mlp, d_model): the transposed view of the MLP's second linear layer, times ``gamma``."""
    w_out = fc2.weight.T
    return w_out if gamma is None else w_out * gamma


def linear_bias(linear: nn.Linear) -> torch.Tensor:
    """A linear layer's bias (zeros when it has none)."""
    return linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.weight.shape[0])


def _fused_biases(attn: nn.Module, fused: nn.Linear) -> tuple:
    if fused.bias is not None:
        return fused.bias.chunk(3)
    # BEiT / EVA style: separate q and v biases, the key has none
    return (getattr(attn, "q_bias", None), getattr(attn, "k_bias", None), getattr(attn, "v_bias", None))


def _per_head_in(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    d_model = weight.shape[1]
    return weight.view(n_heads, -1, d_model).transpose(1, 2)


def _per_head_bias(bias: torch.Tensor | None, n_heads: int, d_head: int, like: torch.Tensor) -> torch.Tensor:
    if bias is None:
        return like.new_zeros(n_heads, d_head)
    return bias.view(n_heads, d_head)
