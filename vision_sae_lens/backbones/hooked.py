"""HookedSAEViT: TransformerLens hook points around a real timm / open_clip / transformers ViT.

The model is wrapped, never re-implemented: PyTorch forward (pre-)hooks on the model's own modules
("bridges", :mod:`~vision_sae_lens.backbones.bridges`, installed once) route each activation through
a TransformerLens ``HookPoint`` held in a parallel module tree (:mod:`~vision_sae_lens.backbones.hook_tree`),
so names read ``blocks.{i}.hook_resid_post`` and ``run_with_cache``, ``run_with_hooks``, TransformerLens'
``ActivationCache`` analysis and SAELens' splicing API behave as on a ``HookedTransformer``. A HookPoint
with no hooks returns its input object unchanged, so outputs are bit-identical to the plain model.

Attention internals (``blocks.{i}.attn.hook_q`` ... ``hook_z``, ``hook_result``, ``hook_attn_in``,
``hook_q_input`` ...) exist only with ``attention="eager"`` (see :mod:`~vision_sae_lens.backbones.attention`);
the default keeps the model's own fused attention. Every string site name given to ``run_with_cache``,
``run_with_hooks``, ``hooks`` or ``add_hook`` is checked before the forward runs: a typo raises
:class:`UnknownSiteError` with the close matches (TransformerLens would cache nothing, or raise a bare
``KeyError``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from vision_sae_lens.backbones.attention import ATTENTION_MODES
from vision_sae_lens.backbones.bridges import StopForward, install_bridges
from vision_sae_lens.backbones.class_directions import ClassReadout
from vision_sae_lens.backbones.config import HookedViTConfig
from vision_sae_lens.backbones.hook_tree import BlockHooks, NormHooks
from vision_sae_lens.backbones.images import prepare_pixels
from vision_sae_lens.backbones.site_checks import CheckedSitesMixin
from vision_sae_lens.backbones.spec import BackboneSpec, ModuleSite
from vision_sae_lens.backbones.tl_api import Toggles, TransformerLensAPIMixin
from vision_sae_lens.compat import HookedRootModule, HookPoint
from vision_sae_lens.errors import ConfigError, UnknownBackboneError
from vision_sae_lens.layout import TokenLayout
from vision_sae_lens.splice import SAESpliceMixin

BLOCK_SITES = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")
_BLOCK_SITE_RE = re.compile(r"^blocks\.(\d+)\.")
RETURN_TYPES = ("output", "logits", "embedding", None)


class HookedSAEViT(SAESpliceMixin, CheckedSitesMixin, TransformerLensAPIMixin, HookedRootModule):
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
        self.toggles = Toggles()
        sites = spec.block_sites
        optional = {
            "hook_attn_out": sites.attn_out,
            "hook_resid_mid": sites.resid_mid,
            "hook_mlp_out": sites.mlp_out,
        }
        block_site_names = [name for name in BLOCK_SITES if optional.get(name, "always") is not None]
        self.hook_embed = HookPoint()
        if spec.pos_embed is not None:
            self.hook_pos_embed = HookPoint()
        if spec.pre_norm is not None:
            self.ln_pre = NormHooks(spec.pre_norm)
        self.blocks = nn.ModuleList(
            BlockHooks(block, sites, block_site_names, spec.n_heads, eager=attention == "eager")
            for block in spec.blocks
        )
        if spec.final_norm is not None:
            self.ln_final = NormHooks(spec.final_norm.module)
        if spec.pooled is not None:
            self.hook_pooled = HookPoint()
        self._stop_after: int | None = None
        self._mid_delta: dict[int, torch.Tensor] = {}
        self._class_readout: ClassReadout | None = None
        self._undo_bridges: list[Callable[[], None]] = install_bridges(self)
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
        ``normalization_type``, ``attn_only``, the ``use_*`` toggles, ``device``, ``dtype``, ...), read fresh
        so ``device``/``dtype`` follow ``.to()`` and the toggles follow ``set_use_*``."""
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
            normalization_type=_normalization_type(self.spec),
            attn_only=_attn_only(self.spec),
            positional_embedding_type="standard" if self.spec.pos_embed is not None else None,
            **vars(self.toggles),
        )

    def preprocess(self, images: Any) -> torch.Tensor:
        """Images (PIL, paths, uint8 tensors) -> (b, c, h, w) float pixels on the model's device and dtype.

        A float tensor is taken as already preprocessed: only checked for shape and moved to the
        model's device and dtype (a no-op, gradients included, when it is already there).
        """
        return prepare_pixels(images, self.spec).to(device=self.device, dtype=self.dtype)

    def forward(
        self,
        images: Any,
        *,
        stop_at_layer: int | None = None,
        return_type: str | None = "output",
        **kwargs: Any,
    ) -> Any:
        """Run the wrapped model and return its own output.

        ``stop_at_layer=n`` runs blocks ``0..n-1`` and returns the residual stream after them (b, t, d):
        ``0`` returns the stream entering block 0, a negative ``n`` counts from the end (``-1`` skips the
        last block), as in TransformerLens. ``return_type``: ``"output"`` (the wrapped model's output,
        unchanged), ``"logits"`` (a classifier's logits tensor), ``"embedding"`` (an image tower's
        embedding tensor) or None (run for the hooks only).
        """
        kwargs.pop("return_cache_object", None)  # SAELens passes it through run_with_cache
        self._check_no_loss(return_type)
        if return_type not in RETURN_TYPES:
            raise ConfigError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}")
        if return_type in ("logits", "embedding") and return_type != self.output_kind:
            raise ConfigError(
                f"{self.backbone_id} outputs {self.output_kind}, not {return_type}; use return_type="
                f"{self.output_kind!r} or the default 'output'."
            )
        pixels = self.preprocess(images)
        self._stop_after = self._last_block(stop_at_layer)
        self._mid_delta.clear()
        try:
            with self._sae_token_masks(pixels.shape[0]):
                out = self.spec.call(self.backbone, pixels, **kwargs)
        except StopForward as stop:
            return stop.resid
        finally:
            self._stop_after = None
            self._mid_delta.clear()
        if return_type is None:
            return None
        return out if return_type == "output" else self.output_tensor(out)

    def _last_block(self, stop_at_layer: int | None) -> int | None:
        """The index of the last block to run (-1: none, stop after the embedding), or None."""
        if stop_at_layer is None:
            return None
        n = self.n_layers
        if not -n <= stop_at_layer <= n:
            raise ConfigError(
                f"stop_at_layer must be in -{n}..{n} (negative counts from the end), got {stop_at_layer}"
            )
        return (stop_at_layer if stop_at_layer >= 0 else n + stop_at_layer) - 1

    def output_tensor(self, out: Any) -> torch.Tensor:
        """The tensor metrics compare (logits for a classifier, else the image embedding)."""
        return self.spec.output_tensor(out)

    # -------------------------------------------------------------------------------------- sites
    def site_names(self) -> list[str]:
        """Every hook name of the model (SAE-internal hooks included when SAEs are attached)."""
        return list(self.hook_dict)

    def layer_of(self, site: str) -> int | None:
        """The smallest ``stop_at_layer`` that still computes ``site``, or None when the site needs the
        full forward (``ln_final.*``, ``hook_pooled``)."""
        self.check_site(site)
        match = _BLOCK_SITE_RE.match(site)
        if match:
            return int(match.group(1)) + 1
        return 0 if site.startswith(("hook_embed", "hook_pos_embed", "ln_pre.")) else None

    def site_dim(self, site: str) -> int | None:
        """Width of a site's last dimension when it is known without running the model."""
        last = site.rsplit(".", 1)[-1]
        if site.endswith(("mlp.hook_post", "mlp.hook_pre")):
            return self.spec.d_mlp
        if last == "hook_scale":
            return 1
        if ".attn." in site or last in ("hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input"):
            return None  # per-head shapes; an SAE on hook_z reads n_heads * d_head after reshaping
        if _BLOCK_SITE_RE.match(site) or site.split(".")[0] in (
            "hook_embed",
            "hook_pos_embed",
            "ln_final",
            "ln_pre",
        ):
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

    def remove_bridges(self) -> None:
        """Detach the wrapper from the backbone (the backbone is then a plain model again)."""
        for undo in self._undo_bridges:
            undo()
        self._undo_bridges.clear()

    def _install_bridges(self) -> None:
        """Attach the wrapper to the backbone again after :meth:`remove_bridges`."""
        if not self._undo_bridges:
            self._undo_bridges = install_bridges(self)

    def __repr__(self) -> str:
        lay = self.layout
        return (
            f"HookedSAEViT({self.backbone_id!r}, n_layers={self.n_layers}, d_model={self.d_model}, "
            f"grid={lay.grid}, prefix_tokens={lay.n_prefix}, output={self.output_kind}, attention={self.attention})"
        )


def _attn_only(spec: BackboneSpec) -> bool:
    """Blocks whose attention the adapter knows and that have no MLP at all."""
    sites = spec.block_sites
    return sites.attn is not None and all(p is None for p in (sites.mlp_in, sites.mlp_out, sites.fc2))


def _normalization_type(spec: BackboneSpec) -> str | None:
    """TransformerLens' ``normalization_type`` of the block norms: "LN", "RMS" or None (no norm known)."""
    path = spec.block_sites.ln1
    norm = spec.blocks[0].get_submodule(path) if path is not None else None
    if isinstance(norm, nn.LayerNorm):
        return "LN"
    if norm is not None and "rms" in type(norm).__name__.lower():
        return "RMS"
    return None


__all__ = ["HookedSAEViT", "BLOCK_SITES", "ModuleSite"]
