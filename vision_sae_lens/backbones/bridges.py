"""Bridges: PyTorch forward (pre-)hooks on the backbone's own modules that route activations through
the hooked model's HookPoints (see :mod:`~vision_sae_lens.backbones.hook_tree` for where they live).

Each bridge looks its HookPoint up by name at call time (SAELens' ``add_sae`` swaps the HookPoint for an
SAE wrapper) and leaves the module's value untouched unless a hook changed it, so a model whose sites
have no hooks computes exactly what the plain backbone computes. Sites that need extra arithmetic
(``ln*.hook_scale``, ``hook_embed``/``hook_pos_embed``, ``attn.hook_result``) do it only while a hook
or an SAE sits on them, and apply an edit only when the value really changed (in place or not).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vision_sae_lens.backbones.attention import install_eager_attention
from vision_sae_lens.backbones.hook_tree import AttentionHooks, hook_point_of, is_active, needs_graph
from vision_sae_lens.errors import InputTypeError

if TYPE_CHECKING:
    from vision_sae_lens.backbones.hooked import HookedSAEViT


class StopForward(Exception):
    """Raised after the last needed block (or the embedding) to end the forward early (``stop_at_layer``)."""

    def __init__(self, resid: torch.Tensor):
        self.resid = resid


def install_bridges(model: HookedSAEViT) -> list[Callable[[], None]]:
    """Hook every site of ``model`` onto its backbone; returns the functions that undo it."""
    spec, undo = model.spec, []

    def site(name: str) -> Callable[[], nn.Module]:
        return hook_point_of(model, name)

    def bridge(module: nn.Module, where: str, name: str, **kw: Any) -> None:
        undo.append(_bridge(model, module, where, site(name), **kw).remove)

    def norm(module: nn.Module, name: str) -> None:
        undo.append(_norm_bridge(module, site(f"{name}.hook_scale"), site(f"{name}.hook_normalized")))

    if spec.pre_norm is not None:
        norm(spec.pre_norm, "ln_pre")
    handle = spec.blocks[0].register_forward_pre_hook(_embed_bridge(model), with_kwargs=True)
    undo.append(handle.remove)
    for i, block in enumerate(spec.blocks):
        sites = spec.block_sites
        bridge(block, "input", f"blocks.{i}.hook_resid_pre")
        if sites.ln1 is not None:
            ln1 = block.get_submodule(sites.ln1)
            if model.attention == "eager":
                handle = ln1.register_forward_pre_hook(_per_head_input_bridge(model, i), with_kwargs=True)
                undo.append(handle.remove)
            norm(ln1, f"blocks.{i}.ln1")
        if sites.attn_out is not None:
            result = _head_result(model, i) if model.attention == "eager" else None
            bridge(block.get_submodule(sites.attn_out), "output", f"blocks.{i}.hook_attn_out", before=result)
        if sites.resid_mid is not None:
            bridge(block.get_submodule(sites.resid_mid), "input", f"blocks.{i}.hook_resid_mid", mid_of=i)
            if sites.ln2 == sites.resid_mid:
                bridge(
                    block.get_submodule(sites.ln2),
                    "input",
                    f"blocks.{i}.hook_mlp_in",
                    toggle="use_hook_mlp_in",
                )
        if sites.ln2 is not None:
            norm(block.get_submodule(sites.ln2), f"blocks.{i}.ln2")
        for name, path, where in (
            ("mlp.hook_in", sites.mlp_in, "input"),
            ("mlp.hook_pre", sites.fc1, "output"),
            ("mlp.hook_post", sites.mlp_post, "output"),
            ("hook_mlp_out", sites.mlp_out, "output"),
        ):
            if path is not None:
                bridge(block.get_submodule(path), where, f"blocks.{i}.{name}")
        bridge(block, "output", f"blocks.{i}.hook_resid_post", block_index=i)
    if spec.final_norm is not None:
        norm(spec.final_norm.module, "ln_final")
    if spec.pooled is not None:
        bridge(spec.pooled.module, spec.pooled.where, "hook_pooled")
    if model.attention == "eager":
        assert spec.block_sites.attn is not None, "checked before attention='eager' is installed"
        n_heads = int(spec.n_heads or 0)
        for i, block in enumerate(spec.blocks):
            attn = block.get_submodule(spec.block_sites.attn)
            hooks = _attention_hooks(model, i)
            undo.append(install_eager_attention(attn, hooks, n_heads))
    return undo


def _bridge(
    model: HookedSAEViT,
    module: nn.Module,
    where: str,
    hook_point: Callable[[], nn.Module],
    block_index: int | None = None,
    mid_of: int | None = None,
    toggle: str | None = None,
    before: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.utils.hooks.RemovableHandle:
    """One site at a module's first input or output. ``mid_of``: the site is block ``mid_of``'s
    resid_mid; ``block_index``: the site is that block's resid_post (where ``stop_at_layer`` stops);
    ``toggle``: a ``model.toggles`` flag that must be on; ``before``: a step applied to the value first."""
    if where == "input":

        def pre_hook(_module: nn.Module, args: tuple, kwargs: dict):
            if toggle is not None and not getattr(model.toggles, toggle):
                return None
            x, put = first_tensor(args, kwargs)
            new = hook_point()(x)
            if new is x:
                return None
            if mid_of is not None:
                # The residual branch still adds the unedited stream; the block's output bridge
                # adds this difference so an edit of resid_mid reaches the block output too.
                model._mid_delta[mid_of] = new - x
            return put(new)

        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def post_hook(_module: nn.Module, _args: tuple, output: Any):
        x, put = first_tensor((output,) if not isinstance(output, tuple) else output, {})
        original = x
        if block_index is not None and block_index in model._mid_delta:
            x = x + model._mid_delta.pop(block_index)
        if before is not None:
            x = before(x)
        new = hook_point()(x)
        if block_index is not None and block_index == model._stop_after:
            raise StopForward(new)
        if new is original:
            return None
        replaced = put(new)[0]
        return replaced if isinstance(output, tuple) else replaced[0]

    return module.register_forward_hook(post_hook)


def _norm_bridge(
    norm: nn.Module, scale_site: Callable[[], nn.Module], normalized_site: Callable[[], nn.Module]
) -> Callable[[], None]:
    """``hook_scale`` (…, 1) and ``hook_normalized`` (the norm's output) of a LayerNorm or RMSNorm.

    The scale is computed only while ``hook_scale`` is active; an edited scale (or a backward hook, which
    needs the gradient to pass through it) re-normalises the input with it and the norm's own weight and
    bias, as TransformerLens' LayerNorm does."""
    centre = isinstance(norm, nn.LayerNorm)

    def post_hook(module: nn.Module, args: tuple, output: torch.Tensor):
        out = output
        if is_active(scale_site()):
            x = args[0]
            x = x - x.mean(-1, keepdim=True) if centre else x
            scale = (x.pow(2).mean(-1, keepdim=True) + float(getattr(module, "eps", 1e-5) or 1e-6)).sqrt()
            clean = scale.clone()  # a hook may edit the scale in place
            new = scale_site()(scale)
            if new is not scale or not torch.equal(new, clean) or needs_graph(scale_site()):
                out = x / new
                weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
                out = out * weight if isinstance(weight, torch.Tensor) else out
                out = out + bias if isinstance(bias, torch.Tensor) else out
        new_out = normalized_site()(out)
        return None if new_out is output else new_out

    return norm.register_forward_hook(post_hook).remove


def _embed_bridge(model: HookedSAEViT):
    """``hook_embed`` and ``hook_pos_embed`` on the stream entering block 0 (a pre-hook of block 0).

    With a known position embedding the stream is split into tokens (patches, CLS, registers) and
    positions, so hook_embed + hook_pos_embed is block 0's input; otherwise (a norm in between, or
    positions inside attention) hook_embed is that input. ``stop_at_layer=0`` ends the forward here."""

    def pre_hook(_module: nn.Module, args: tuple, kwargs: dict):
        x, put = first_tensor(args, kwargs)
        new = x
        if hasattr(model, "hook_pos_embed") and (
            is_active(model.hook_pos_embed) or is_active(model.hook_embed)
        ):
            pos = model.position_part(x)
            tokens = x - pos
            clean = (tokens.clone(), pos.clone())  # hooks may edit either in place
            new_tokens, new_pos = model.hook_embed(tokens), model.hook_pos_embed(pos)
            edited = not (torch.equal(new_tokens, clean[0]) and torch.equal(new_pos, clean[1]))
            if edited or needs_graph(model.hook_embed) or needs_graph(model.hook_pos_embed):
                new = new_tokens + new_pos
        elif not hasattr(model, "hook_pos_embed"):
            new = model.hook_embed(x)
        if model._stop_after == -1:
            raise StopForward(new)
        return None if new is x else put(new)

    return pre_hook


def _per_head_input_bridge(model: HookedSAEViT, i: int):
    """With ``use_split_qkv_input`` / ``use_attn_in``, block ``i``'s norm before attention receives the
    residual stream copied per head: (b, t, h, d) through ``hook_attn_in``, or (b, t, 3, h, d) through
    ``hook_q_input``/``hook_k_input``/``hook_v_input``. The norm acts on the last axis, and the eager
    attention projects each head's copy with that head's weights."""

    def pre_hook(_module: nn.Module, args: tuple, kwargs: dict):
        toggles = model.toggles
        if not (toggles.use_split_qkv_input or toggles.use_attn_in):
            return None
        x, put = first_tensor(args, kwargs)
        n_heads, hooks = int(model.cfg.n_heads or 0), model.block_hooks()[i]

        def per_head() -> torch.Tensor:
            return x.unsqueeze(2).repeat(1, 1, n_heads, 1)  # a copy: hooks may edit it in place

        if toggles.use_split_qkv_input:
            inputs = [
                hooks.hook_q_input(per_head()),
                hooks.hook_k_input(per_head()),
                hooks.hook_v_input(per_head()),
            ]
            return put(torch.stack(inputs, dim=2))
        return put(hooks.hook_attn_in(per_head()))

    return pre_hook


def _head_result(model: HookedSAEViT, i: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``attn.hook_result`` (b, t, h, d_model): each head's z times its ``W_O`` (LayerScale folded), so
    the results plus ``b_O`` are ``hook_attn_out``; an edit changes attn_out by the change of their sum."""

    def with_result(attn_out: torch.Tensor) -> torch.Tensor:
        hooks = model.block_hooks()[i].attn
        z, hooks.kept_z = hooks.kept_z, None
        site = hooks.hook_result
        if z is None or not model.toggles.use_attn_result or not is_active(site):
            return attn_out
        result = torch.einsum("bthd,hdm->bthm", z, hooks.W_O)
        total = result.sum(2)  # before the hook: it may edit result in place
        new = site(result)
        return attn_out + (new.sum(2) - total)

    return with_result


def _attention_hooks(model: HookedSAEViT, i: int) -> Callable[[], AttentionHooks]:
    def hooks() -> AttentionHooks:
        return model.block_hooks()[i].attn

    return hooks


def first_tensor(args: tuple, kwargs: dict):
    """The first tensor among a call's arguments, and a function that rebuilds (args, kwargs)
    with it replaced. Transformers layers may get ``hidden_states`` as a keyword."""
    for i, arg in enumerate(args):
        if isinstance(arg, torch.Tensor):
            return arg, lambda new, i=i: ((*args[:i], new, *args[i + 1 :]), kwargs)
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor):
            return value, lambda new, key=key: (args, {**kwargs, key: new})
    raise InputTypeError("hooked module was called without a tensor argument")
