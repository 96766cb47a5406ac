"""HookedSAEViT: TransformerLens hook points around a real timm / open_clip / transformers ViT.

The model is wrapped, never re-implemented: PyTorch forward (pre-)hooks on the model's own modules
("bridges", installed once) route each activation through a TransformerLens ``HookPoint`` held in
a parallel module tree, so names read ``blocks.{i}.hook_resid_post`` and ``run_with_cache``,
``run_with_hooks`` and SAELens' splicing API behave as on a ``HookedTransformer``. A HookPoint
with no hooks returns its input object unchanged, so outputs are bit-identical to the plain model.

Bridges look the HookPoint up by name at call time (never a captured object), because SAELens'
``add_sae`` swaps the HookPoint at ``blocks.{i}.hook_resid_post`` for an SAE wrapper module.

Attention internals (``blocks.{i}.attn.hook_q`` ... ``hook_pattern``, ``hook_z``) exist only with
``attention="eager"`` (see :mod:`vision_sae_lens.backbones.attention`); the default keeps the model's
own fused attention. Every string site name given to ``run_with_cache``, ``run_with_hooks``, ``hooks``
or ``add_hook`` is checked before the forward runs: a typo raises :class:`UnknownSiteError` with the
close matches (TransformerLens would cache nothing, or raise a bare ``KeyError``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from vision_sae_lens.backbones.attention import (
    ATTENTION_MODES,
    AttentionHooks,
    install_eager_attention,
)
from vision_sae_lens.backbones.config import HookedViTConfig
from vision_sae_lens.backbones.images import prepare_pixels
from vision_sae_lens.backbones.site_checks import CheckedSitesMixin
from vision_sae_lens.backbones.spec import BackboneSpec, ModuleSite
from vision_sae_lens.compat import HookedRootModule, HookPoint
from vision_sae_lens.errors import ConfigError, InputTypeError, UnknownBackboneError
from vision_sae_lens.layout import TokenLayout
from vision_sae_lens.splice import SAESpliceMixin

BLOCK_SITES = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")
_BLOCK_SITE_RE = re.compile(r"^blocks\.(\d+)\.")


class _StopForward(Exception):
    """Raised by the last needed block to end the forward early (``stop_at_layer``)."""

    def __init__(self, resid: torch.Tensor):
        self.resid = resid


class _MLPHooks(nn.Module):
    def __init__(self, has_in: bool, has_post: bool) -> None:
        super().__init__()
        if has_in:
            self.hook_in = HookPoint()
        if has_post:
            self.hook_post = HookPoint()


class _BlockHooks(nn.Module):
    """HookPoints of one block; only the sites the family exposes exist as attributes."""

    def __init__(self, sites: Sequence[str], has_mlp_in: bool, has_mlp_post: bool, has_attn: bool) -> None:
        super().__init__()
        for site in sites:
            setattr(self, site, HookPoint())
        if has_mlp_in or has_mlp_post:
            self.mlp = _MLPHooks(has_mlp_in, has_mlp_post)
        if has_attn:
            self.attn = AttentionHooks()


class _FinalHooks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hook_normalized = HookPoint()


class HookedSAEViT(SAESpliceMixin, CheckedSitesMixin, HookedRootModule):
    """A vision transformer from timm, open_clip or transformers with TransformerLens hook points.

    Build one with :meth:`from_pretrained` (an id such as ``timm:vit_base_patch16_clip_224.openai``)
    or :meth:`from_module` (a model object you already have). Calling it on images returns exactly
    what the wrapped model returns.
    """

    def __init__(self, spec: BackboneSpec, *, attention: str = "fused") -> None:
        super().__init__()
        if attention not in ATTENTION_MODES:
            raise ConfigError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        if attention == "eager" and spec.block_sites.attn is None:
            raise UnknownBackboneError(
                f"{spec.backbone_id}: the adapter does not know its attention modules, so attention='eager' "
                "cannot hook them; use attention='fused'."
            )
        self.attention = attention
        self.spec = spec
        self.backbone = spec.model.eval()
        self.backbone_id = spec.backbone_id
        self.layout: TokenLayout = spec.layout
        self.preprocessing = spec.preprocessing
        self.output_kind = spec.output_kind
        self.d_model = spec.d_model
        self.n_layers = len(spec.blocks)
        sites = spec.block_sites
        optional = {
            "hook_attn_out": sites.attn_out,
            "hook_resid_mid": sites.resid_mid,
            "hook_mlp_out": sites.mlp_out,
        }
        block_site_names = [name for name in BLOCK_SITES if optional.get(name, "always") is not None]
        self.blocks = nn.ModuleList(
            _BlockHooks(
                block_site_names, sites.mlp_in is not None, sites.mlp_post is not None, attention == "eager"
            )
            for _ in spec.blocks
        )
        if spec.embed is not None:
            self.hook_embed = HookPoint()
        if spec.final_norm is not None:
            self.ln_final = _FinalHooks()
        if spec.pooled is not None:
            self.hook_pooled = HookPoint()
        self._stop_after: int | None = None
        self._mid_delta: dict[int, torch.Tensor] = {}
        self._bridges: list[torch.utils.hooks.RemovableHandle] = []
        self._restores: list[Any] = []
        self._install_bridges()
        if attention == "eager":
            self._install_eager_attention()
        self._acts_to_saes: dict[str, Any] = {}
        self._transcoder_output_hooks: dict[str, str] = {}
        self.setup()

    # ----------------------------------------------------------------------------------- building
    @classmethod
    def from_pretrained(
        cls,
        backbone_id: str,
        *,
        pretrained: bool = True,
        device: str | torch.device | None = None,
        attention: str = "fused",
        **kwargs: Any,
    ) -> HookedSAEViT:
        """Load a backbone by id and hook it.

        Ids: ``timm:NAME``, ``open_clip:ARCH[/TAG]``, ``hf:MODEL_ID_OR_DIR``, ``demo:mnist-vit``, or a local
        directory saved by timm or transformers. ``pretrained=False`` builds random weights (no download);
        ``attention="eager"`` adds the attention-internal sites (``attn.hook_q`` ... ``attn.hook_z``);
        extra keyword arguments go to the library's model constructor (e.g. ``img_size=224``).
        """
        from vision_sae_lens.backbones.registry import load_backbone_spec

        model = cls(load_backbone_spec(backbone_id, pretrained=pretrained, **kwargs), attention=attention)
        return model.to(device) if device is not None else model

    @classmethod
    def from_module(
        cls, module: nn.Module, *, backbone_id: str | None = None, attention: str = "fused", **kwargs: Any
    ) -> HookedSAEViT:
        """Hook a model object you already have (e.g. your fine-tuned checkpoint).

        timm, open_clip and transformers models are recognised; for any other module pass ``blocks``
        (the list of transformer blocks or their attribute path), ``layout`` and ``transform``;
        see :func:`vision_sae_lens.backbones.custom.spec_from_module`.
        """
        from vision_sae_lens.backbones.custom import spec_from_module

        return cls(spec_from_module(module, backbone_id=backbone_id, **kwargs), attention=attention)

    # ------------------------------------------------------------------------------------ running
    @property
    def device(self) -> torch.device:
        """Device of the backbone's parameters."""
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the backbone's parameters."""
        return next(self.backbone.parameters()).dtype

    @property
    def cfg(self) -> HookedViTConfig:
        """TransformerLens-named facts (``d_model``, ``n_layers``, ``n_heads``, ``d_head``, ``d_mlp``, ``n_ctx``,
        ``model_name``, ``device``, ``dtype``), read fresh so ``device``/``dtype`` follow ``.to()``."""
        n_heads = self.spec.n_heads
        return HookedViTConfig(
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=n_heads,
            d_head=self.d_model // n_heads if n_heads else None,
            d_mlp=self.spec.d_mlp,
            n_ctx=self.layout.n_tokens,
            model_name=self.backbone_id,
            device=self.device,
            dtype=self.dtype,
            n_prefix_tokens=self.layout.n_prefix,
            attention=self.attention,
        )

    def preprocess(self, images: Any) -> torch.Tensor:
        """Images (PIL, paths, uint8 tensors) -> (b, c, h, w) float pixels on the model's device and dtype.

        A float tensor is taken as already preprocessed: only checked for shape and moved to the
        model's device and dtype (a no-op, gradients included, when it is already there).
        """
        return prepare_pixels(images, self.spec).to(device=self.device, dtype=self.dtype)

    def forward(self, images: Any, *, stop_at_layer: int | None = None, **kwargs: Any) -> Any:
        """Run the wrapped model; with ``stop_at_layer=n`` run blocks ``0..n-1`` and return the
        residual stream after block ``n-1`` (b, t, d)."""
        kwargs.pop("return_cache_object", None)  # SAELens passes it through run_with_cache
        pixels = self.preprocess(images)
        if stop_at_layer is not None and not 0 < stop_at_layer <= self.n_layers:
            raise ConfigError(f"stop_at_layer must be in 1..{self.n_layers}, got {stop_at_layer}")
        self._stop_after = None if stop_at_layer is None else stop_at_layer - 1
        self._mid_delta.clear()
        try:
            with self._sae_token_masks(pixels.shape[0]):
                return self.spec.call(self.backbone, pixels, **kwargs)
        except _StopForward as stop:
            return stop.resid
        finally:
            self._stop_after = None
            self._mid_delta.clear()

    def output_tensor(self, out: Any) -> torch.Tensor:
        """The tensor metrics compare (logits for a classifier, else the image embedding)."""
        return self.spec.output_tensor(out)

    # -------------------------------------------------------------------------------------- sites
    def site_names(self) -> list[str]:
        """Every hook name of the model (SAE-internal hooks included when SAEs are attached)."""
        return list(self.hook_dict)

    def layer_of(self, site: str) -> int | None:
        """The smallest ``stop_at_layer`` that still computes ``site``, or None when the site needs the
        full forward (``ln_final.hook_normalized``, ``hook_pooled``)."""
        self.check_site(site)
        match = _BLOCK_SITE_RE.match(site)
        if match:
            return int(match.group(1)) + 1
        return 1 if site == "hook_embed" else None

    def site_dim(self, site: str) -> int | None:
        """Width of a site's last dimension when it is known without running the model."""
        if site.endswith("mlp.hook_post"):
            return self.spec.d_mlp
        if ".attn." in site:
            return None  # per-head shapes; an SAE on hook_z reads n_heads * d_head after reshaping
        if _BLOCK_SITE_RE.match(site) or site in ("hook_embed", "ln_final.hook_normalized"):
            return self.d_model
        return None

    def setup(self) -> None:
        # HookedRootModule.setup names every sub-module; skip the backbone so the user's model is
        # left untouched (it sets a `.name` attribute on each module it visits).
        self.mod_dict, self.hook_dict = {}, {}
        for name, module in self._own_modules():
            # What HookedRootModule.setup sets on each module it names.
            module.name = name  # type: ignore[assignment]  # nn.Module.__setattr__ is typed Tensor | Module, yet keeps any value
            self.mod_dict[name] = module
            if isinstance(module, HookPoint):
                self.hook_dict[name] = module

    def _own_modules(self) -> Iterator[tuple[str, nn.Module]]:
        for child_name, child in self.named_children():
            if child_name != "backbone":
                yield from child.named_modules(prefix=child_name)

    # ------------------------------------------------------------------------------------ bridges
    def _install_bridges(self) -> None:
        spec = self.spec
        for i, block in enumerate(spec.blocks):
            self._bridge(block, "input", f"blocks.{i}.hook_resid_pre", block_index=None)
            self._bridge(block, "output", f"blocks.{i}.hook_resid_post", block_index=i)
            for site, path, where in (
                ("hook_attn_out", spec.block_sites.attn_out, "output"),
                ("hook_resid_mid", spec.block_sites.resid_mid, "input"),
                ("hook_mlp_out", spec.block_sites.mlp_out, "output"),
                ("mlp.hook_post", spec.block_sites.mlp_post, "output"),
                ("mlp.hook_in", spec.block_sites.mlp_in, "input"),
            ):
                if path is not None:
                    mid = i if site == "hook_resid_mid" else None
                    self._bridge(block.get_submodule(path), where, f"blocks.{i}.{site}", mid_of=mid)
        for site, module_site in (
            ("hook_embed", spec.embed),
            ("ln_final.hook_normalized", spec.final_norm),
            ("hook_pooled", spec.pooled),
        ):
            if module_site is not None:
                self._bridge(module_site.module, module_site.where, site)

    def _bridge(
        self,
        module: nn.Module,
        where: str,
        site: str,
        block_index: int | None = None,
        mid_of: int | None = None,
    ) -> None:
        parent_path, attr = site.rsplit(".", 1) if "." in site else ("", site)

        def hook_point() -> nn.Module:
            parent = self.get_submodule(parent_path) if parent_path else self
            return getattr(parent, attr)

        if where == "input":

            def pre_hook(_module: nn.Module, args: tuple, kwargs: dict):
                x, put = _first_tensor(args, kwargs)
                new = hook_point()(x)
                if new is x:
                    return None
                if mid_of is not None:
                    # The residual branch still adds the unedited stream; the block's output bridge
                    # adds this difference so an edit of resid_mid reaches the block output too.
                    self._mid_delta[mid_of] = new - x
                return put(new)

            handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
        else:

            def post_hook(_module: nn.Module, _args: tuple, output: Any):
                x, put = _first_tensor((output,) if not isinstance(output, tuple) else output, {})
                if block_index is not None and block_index in self._mid_delta:
                    x = x + self._mid_delta.pop(block_index)
                new = hook_point()(x)
                if block_index is not None and block_index == self._stop_after:
                    raise _StopForward(new)
                if new is x and x is (output if not isinstance(output, tuple) else output[0]):
                    return None
                replaced = put(new)[0]
                return replaced if isinstance(output, tuple) else replaced[0]

            handle = module.register_forward_hook(post_hook)
        self._bridges.append(handle)

    def _install_eager_attention(self) -> None:
        attn_path = self.spec.block_sites.attn
        assert attn_path is not None, "checked in __init__ before attention='eager' is installed"
        for i, block in enumerate(self.spec.blocks):
            attn = block.get_submodule(attn_path)

            def hook(name: str, i: int = i) -> nn.Module:
                return getattr(self.blocks[i].attn, name)

            self._restores.append(install_eager_attention(attn, hook))

    def remove_bridges(self) -> None:
        """Detach the wrapper from the backbone (the backbone is then a plain model again)."""
        for handle in self._bridges:
            handle.remove()
        self._bridges.clear()
        for restore in self._restores:
            restore()
        self._restores.clear()

    def __repr__(self) -> str:
        lay = self.layout
        return (
            f"HookedSAEViT({self.backbone_id!r}, n_layers={self.n_layers}, d_model={self.d_model}, "
            f"grid={lay.grid}, prefix_tokens={lay.n_prefix}, output={self.output_kind}, attention={self.attention})"
        )


def _first_tensor(args: tuple, kwargs: dict):
    """The first tensor among a call's arguments, and a function that rebuilds (args, kwargs)
    with it replaced. Transformers layers may get ``hidden_states`` as a keyword."""
    for i, arg in enumerate(args):
        if isinstance(arg, torch.Tensor):
            return arg, lambda new, i=i: ((*args[:i], new, *args[i + 1 :]), kwargs)
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor):
            return value, lambda new, key=key: (args, {**kwargs, key: new})
    raise InputTypeError("hooked module was called without a tensor argument")


__all__ = ["HookedSAEViT", "BLOCK_SITES", "ModuleSite"]
