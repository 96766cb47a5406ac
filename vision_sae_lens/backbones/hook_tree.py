"""The module tree that carries a hooked ViT's HookPoints and TransformerLens-named weights.

``HookedSAEViT.blocks[i]`` is not the backbone's block: it is a :class:`BlockHooks`, a small module
holding the HookPoints of block ``i`` under TransformerLens' names (``hook_resid_pre``, ``ln1.hook_scale``,
``attn.hook_pattern``, ``mlp.hook_post``, ...) and, as properties, that block's weights in
TransformerLens' shapes (``attn.W_O``, ``mlp.W_out``, ``ln1.w``; see :mod:`~vision_sae_lens.backbones.weights`).
The backbone's modules are referenced, never registered here, so the hooked model's ``parameters()`` and
``state_dict()`` hold each tensor once (under ``backbone.``) and ``.to()`` moves them once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vision_sae_lens.backbones import weights
from vision_sae_lens.backbones.spec import BlockSites
from vision_sae_lens.compat import HookPoint
from vision_sae_lens.errors import UnknownBackboneError

ATTENTION_SITES = ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z")
"""Attention internals in TransformerLens' order; they exist only with ``attention="eager"``."""
TOGGLED_SITES = {
    "hook_result": "use_attn_result",
    "hook_attn_in": "use_attn_in",
    "hook_q_input": "use_split_qkv_input",
    "hook_k_input": "use_split_qkv_input",
    "hook_v_input": "use_split_qkv_input",
    "hook_mlp_in": "use_hook_mlp_in",
}
"""Sites that run only when their ``set_use_*`` toggle is on (the last part of the name -> the toggle)."""


def _reference(module: nn.Module, name: str, value: Any) -> None:
    """Keep ``value`` on ``module`` without registering it as a child (it belongs to the backbone)."""
    module.__dict__[name] = value


def _missing(what: str, where: str) -> UnknownBackboneError:
    return UnknownBackboneError(
        f"{where} has no {what} this adapter can read, so its TransformerLens weights are unknown."
    )


class NormHooks(nn.Module):
    """A norm as TransformerLens sees it: ``hook_scale`` (batch, pos, 1), ``hook_normalized``, ``w``, ``b``.

    ``hook_normalized`` is the norm's output, after its weight and bias (what the next layer reads;
    TransformerLens' folded models have the same). Calling it runs the backbone's own norm module.
    """

    norm: nn.Module
    hook_scale: HookPoint
    hook_normalized: HookPoint

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()
        _reference(self, "norm", norm)

    @property
    def w(self) -> torch.Tensor:
        """The norm's weight (ones when it has none)."""
        weight = getattr(self.norm, "weight", None)
        return weight if isinstance(weight, torch.Tensor) else torch.ones(norm_width(self.norm))

    @property
    def b(self) -> torch.Tensor:
        """The norm's bias (zeros when it has none, as RMSNorm)."""
        bias = getattr(self.norm, "bias", None)
        return bias if isinstance(bias, torch.Tensor) else torch.zeros_like(self.w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's norm applied to ``x`` (its HookPoints fire as in the model's own forward)."""
        return self.norm(x)


def norm_width(norm: nn.Module) -> int:
    """The feature width a norm module normalises."""
    shape = getattr(norm, "normalized_shape", None)
    if shape is None:
        raise _missing("normalized_shape", type(norm).__name__)
    return int(shape[-1] if isinstance(shape, (tuple, list)) else shape)


class AttentionHooks(nn.Module):
    """``blocks.{i}.attn``: the internals' HookPoints (eager path only) and ``W_Q`` ... ``b_O``."""

    block: nn.Module
    sites: BlockSites
    n_heads: int | None
    keep_z: bool
    kept_z: torch.Tensor | None
    hook_q: HookPoint
    hook_k: HookPoint
    hook_v: HookPoint
    hook_attn_scores: HookPoint
    hook_pattern: HookPoint
    hook_z: HookPoint
    hook_result: HookPoint

    def __init__(self, block: nn.Module, sites: BlockSites, n_heads: int | None, *, eager: bool) -> None:
        super().__init__()
        if eager:
            for site in (*ATTENTION_SITES, "hook_result"):
                setattr(self, site, HookPoint())
        _reference(self, "block", block)
        _reference(self, "sites", sites)
        _reference(self, "n_heads", n_heads)
        _reference(self, "keep_z", False)  # set while hook_result is on: the attn_out bridge needs z
        _reference(self, "kept_z", None)

    @property
    def module(self) -> nn.Module:
        """The backbone's attention module."""
        if self.sites.attn is None:
            raise _missing("attention module", type(self.block).__name__)
        return self.block.get_submodule(self.sites.attn)

    def _qkv(self) -> weights.QKV:
        if not self.n_heads:
            raise _missing("number of heads", type(self.block).__name__)
        return weights.qkv_weights(self.module, self.n_heads)

    @property
    def W_Q(self) -> torch.Tensor:  # noqa: N802 - TransformerLens' name
        """(n_heads, d_model, d_head), a view of the query weights."""
        return self._qkv().W_Q

    @property
    def W_K(self) -> torch.Tensor:  # noqa: N802
        """(n_heads, d_model, d_head), a view of the key weights."""
        return self._qkv().W_K

    @property
    def W_V(self) -> torch.Tensor:  # noqa: N802
        """(n_heads, d_model, d_head), a view of the value weights."""
        return self._qkv().W_V

    @property
    def b_Q(self) -> torch.Tensor:  # noqa: N802
        """(n_heads, d_head)."""
        return self._qkv().b_Q

    @property
    def b_K(self) -> torch.Tensor:  # noqa: N802
        """(n_heads, d_head)."""
        return self._qkv().b_K

    @property
    def b_V(self) -> torch.Tensor:  # noqa: N802
        """(n_heads, d_head)."""
        return self._qkv().b_V

    @property
    def W_O(self) -> torch.Tensor:  # noqa: N802
        """(n_heads, d_head, d_model): the output projection per head, LayerScale folded in when present."""
        if not self.n_heads:
            raise _missing("number of heads", type(self.block).__name__)
        return weights.head_out_weight(self.module, self.n_heads, self.gamma)

    @property
    def b_O(self) -> torch.Tensor:  # noqa: N802
        """(d_model,): the output projection's bias as the residual stream sees it."""
        return weights.out_bias(weights.out_projection(self.module), self.gamma)

    @property
    def gamma(self) -> torch.Tensor | None:
        """The attention branch's LayerScale vector, or None."""
        return weights.layer_scale(self.block, self.sites.ls1)


class MLPHooks(nn.Module):
    """``blocks.{i}.mlp``: ``hook_in``, ``hook_pre``, ``hook_post`` and ``W_in``/``b_in``/``W_out``/``b_out``."""

    block: nn.Module
    sites: BlockSites

    def __init__(self, block: nn.Module, sites: BlockSites) -> None:
        super().__init__()
        for site, path in (("hook_in", sites.mlp_in), ("hook_pre", sites.fc1), ("hook_post", sites.mlp_post)):
            if path is not None:
                setattr(self, site, HookPoint())
        _reference(self, "block", block)
        _reference(self, "sites", sites)

    def _linear(self, path: str | None, what: str) -> nn.Linear:
        linear = self.block.get_submodule(path) if path is not None else None
        if not isinstance(linear, nn.Linear):
            raise _missing(f"MLP {what} linear layer", type(self.block).__name__)
        return linear

    @property
    def W_in(self) -> torch.Tensor:  # noqa: N802
        """(d_model, d_mlp), a view of the first linear layer."""
        return weights.mlp_in_weight(self._linear(self.sites.fc1, "input"))

    @property
    def b_in(self) -> torch.Tensor:
        """(d_mlp,)."""
        return weights.linear_bias(self._linear(self.sites.fc1, "input"))

    @property
    def W_out(self) -> torch.Tensor:  # noqa: N802
        """(d_mlp, d_model): the second linear layer, LayerScale folded in when present."""
        return weights.mlp_out_weight(self._linear(self.sites.fc2, "output"), self.gamma)

    @property
    def b_out(self) -> torch.Tensor:
        """(d_model,): the second linear layer's bias as the residual stream sees it."""
        return weights.out_bias(self._linear(self.sites.fc2, "output"), self.gamma)

    @property
    def gamma(self) -> torch.Tensor | None:
        """The MLP branch's LayerScale vector, or None."""
        return weights.layer_scale(self.block, self.sites.ls2)


class BlockHooks(nn.Module):
    """``blocks.{i}``: the block-level HookPoints, ``ln1``/``ln2``, ``attn`` and ``mlp``."""

    ln1: NormHooks
    ln2: NormHooks
    attn: AttentionHooks
    mlp: MLPHooks
    hook_attn_in: HookPoint
    hook_q_input: HookPoint
    hook_k_input: HookPoint
    hook_v_input: HookPoint
    hook_mlp_in: HookPoint

    def __init__(
        self,
        block: nn.Module,
        sites: BlockSites,
        site_names: list[str],
        n_heads: int | None,
        *,
        eager: bool,
    ) -> None:
        super().__init__()
        for site in site_names:
            setattr(self, site, HookPoint())
        if eager and sites.ln1 is not None:
            for site in ("hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input"):
                setattr(self, site, HookPoint())
        if sites.ln2 is not None and sites.resid_mid == sites.ln2:
            self.hook_mlp_in = HookPoint()
        for name, path in (("ln1", sites.ln1), ("ln2", sites.ln2)):
            if path is not None:
                setattr(self, name, NormHooks(block.get_submodule(path)))
        self.attn = AttentionHooks(block, sites, n_heads, eager=eager and sites.attn is not None)
        self.mlp = MLPHooks(block, sites)


def hook_point_of(root: nn.Module, site: str) -> Callable[[], nn.Module]:
    """A function returning the module now at ``site`` (a HookPoint, or the SAE SAELens put there)."""
    parent_path, attr = site.rsplit(".", 1) if "." in site else ("", site)

    def hook_point() -> nn.Module:
        parent = root.get_submodule(parent_path) if parent_path else root
        return getattr(parent, attr)

    return hook_point


def needs_graph(module: nn.Module) -> bool:
    """Whether a site's output must be the value used downstream even when unchanged: a backward
    hook fires only if the gradient flows through the HookPoint's output."""
    return not isinstance(module, HookPoint) or bool(module.bwd_hooks)


def is_active(module: nn.Module) -> bool:
    """Whether calling a site's module could change or record anything: a HookPoint with hooks, or
    whatever SAELens put in its place. Lets bridges skip work that only a hook would read."""
    return not isinstance(module, HookPoint) or bool(module.fwd_hooks or module.bwd_hooks)
