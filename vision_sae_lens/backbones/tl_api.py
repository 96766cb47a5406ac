"""The parts of TransformerLens' ``HookedTransformer`` API that its analysis code calls on a model.

``set_use_attn_result`` / ``set_use_split_qkv_input`` / ``set_use_attn_in`` / ``set_use_hook_mlp_in``
switch the toggled sites on (``check_hooks_to_add`` refuses a hook on a site whose toggle is off, as
TransformerLens does); ``W_pos`` and ``accumulated_bias`` serve ``ActivationCache``'s decompositions;
``tokens_to_residual_directions`` / ``to_single_token`` give class directions (see
:mod:`~vision_sae_lens.backbones.class_directions`), so TransformerLens' own ``cache.logit_attrs``
attributes a class logit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch

from vision_sae_lens.backbones.class_directions import ClassReadout, build_readout
from vision_sae_lens.backbones.hook_tree import TOGGLED_SITES, BlockHooks
from vision_sae_lens.errors import ConfigError, OutOfRangeError, SiteDisabledError

if TYPE_CHECKING:
    from vision_sae_lens.backbones.config import HookedViTConfig
    from vision_sae_lens.backbones.spec import BackboneSpec
    from vision_sae_lens.compat import HookedRootModule

    _Host = HookedRootModule
else:
    _Host = object


@dataclass
class Toggles:
    """Which toggled sites run (all off by default, as in TransformerLens)."""

    use_attn_result: bool = False
    """``blocks.{i}.attn.hook_result`` (b, t, h, d_model): each head's contribution to hook_attn_out."""
    use_split_qkv_input: bool = False
    """``blocks.{i}.hook_q_input`` / ``hook_k_input`` / ``hook_v_input`` (b, t, h, d_model)."""
    use_attn_in: bool = False
    """``blocks.{i}.hook_attn_in`` (b, t, h, d_model): the stream copied per head, before the norm."""
    use_hook_mlp_in: bool = False
    """``blocks.{i}.hook_mlp_in`` (b, t, d_model): the stream entering the MLP's norm."""


class TransformerLensAPIMixin(_Host):
    """Toggles, ``W_pos``, ``accumulated_bias`` and class directions for :class:`HookedSAEViT`."""

    # Provided by the host class (annotations only).
    spec: BackboneSpec
    attention: str
    backbone_id: str
    n_layers: int
    toggles: Toggles
    output_kind: str
    _class_readout: ClassReadout | None

    if TYPE_CHECKING:

        @property
        def cfg(self) -> HookedViTConfig: ...

    def block_hooks(self) -> list[BlockHooks]:
        """``model.blocks`` (a ``ModuleList`` of :class:`BlockHooks`), typed for indexing and slicing."""
        return cast(list[BlockHooks], self.get_submodule("blocks"))

    # ------------------------------------------------------------------------------------ toggles
    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Run ``attn.hook_result`` (per-head results; needs ``attention="eager"``)."""
        self._set_toggle("use_attn_result", use_attn_result, needs_eager=True)
        for block in self.block_hooks():
            block.attn.keep_z = use_attn_result

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Run ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input`` (needs ``attention="eager"``)."""
        self._set_toggle("use_split_qkv_input", use_split_qkv_input, needs_eager=True)

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """Run ``hook_attn_in`` (needs ``attention="eager"``)."""
        self._set_toggle("use_attn_in", use_attn_in, needs_eager=True)

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """Run ``hook_mlp_in``."""
        self._set_toggle("use_hook_mlp_in", use_hook_mlp_in, needs_eager=False)

    def _set_toggle(self, name: str, on: bool, *, needs_eager: bool) -> None:
        if on and needs_eager and self.attention != "eager":
            raise ConfigError(
                f"{name} needs the inside of attention: build the model with attention='eager' "
                "(HookedSAEViT.from_pretrained(..., attention='eager'))."
            )
        sites = [s for s, toggle in TOGGLED_SITES.items() if toggle == name]
        if on and not any(n.endswith(sites[0]) for n in self.hook_dict):
            raise ConfigError(
                f"{self.backbone_id} has no {sites[0]} site (the adapter knows no matching module)"
            )
        setattr(self.toggles, name, bool(on))

    def check_hooks_to_add(
        self, hook_point, hook_point_name, hook, dir="fwd", is_permanent=False, prepend=False
    ):  # noqa: ANN001
        """TransformerLens' check before a hook is added: a toggled site must be switched on."""
        toggle = TOGGLED_SITES.get(hook_point_name.rsplit(".", 1)[-1])
        if toggle is not None and not getattr(self.toggles, toggle):
            raise SiteDisabledError(
                f"Cannot add hook {hook_point_name} if {toggle} is False: call model.set_{toggle}(True) first."
            )

    # ------------------------------------------------------------------------------------ weights
    @property
    def W_pos(self) -> torch.Tensor:  # noqa: N802 - TransformerLens' name
        """(n_pos, d_model): the absolute position embedding, a view of the model's parameter. Its rows
        belong to the tokens ``spec.pos_embed.token_index`` (prefix tokens may have none)."""
        if self.spec.pos_embed is None:
            raise ConfigError(
                f"{self.backbone_id} has no separable absolute position embedding (a norm follows it, "
                "or positions enter inside attention)."
            )
        return self.spec.pos_embed.weight()

    def position_part(self, x_btd: torch.Tensor) -> torch.Tensor:
        """``hook_pos_embed``: (batch, tokens, d_model) zeros with ``W_pos`` added at its tokens."""
        pos = self.spec.pos_embed
        assert pos is not None, "hook_pos_embed exists only with a position embedding"
        out = x_btd.new_zeros(x_btd.shape)
        out[:, list(pos.token_index)] = pos.weight().to(x_btd.dtype)
        return out

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> torch.Tensor:
        """(d_model,) the sum of ``b_O`` (and ``b_out``) of blocks ``0..layer-1`` (plus block ``layer``'s
        ``b_O`` with ``mlp_input``), as the residual stream sees them (LayerScale folded)."""
        if not 0 <= layer <= self.n_layers:
            raise OutOfRangeError(f"layer must be in 0..{self.n_layers}, got {layer}")
        total = torch.zeros(self.cfg.d_model, device=self.cfg.device, dtype=self.cfg.dtype)
        with_mlp = include_mlp_biases and not self.cfg.attn_only
        blocks = self.block_hooks()
        for block in blocks[:layer]:
            total = total + block.attn.b_O
            if with_mlp:
                total = total + block.mlp.b_out
        if mlp_input:
            if layer == self.n_layers:
                raise OutOfRangeError("mlp_input needs a layer below n_layers (the final stream has no MLP)")
            total = total + blocks[layer].attn.b_O
        return total

    # ---------------------------------------------------------------------------- class directions
    @property
    def class_readout(self) -> ClassReadout:
        """The classes ``tokens_to_residual_directions`` reads: a classifier's head by default, or what
        :meth:`use_classes` set (text embeddings for an image-text tower)."""
        if self._class_readout is None:
            self._class_readout = build_readout(self)  # type: ignore[arg-type]
        return self._class_readout

    def use_classes(
        self,
        class_names: Sequence[str] | None = None,
        *,
        text_embeddings: torch.Tensor | None = None,
        templates: Sequence[str] | None = None,
        weights: str | None = None,
    ) -> ClassReadout:
        """Name a classifier's classes, or give an image-text tower its classes: unit ``text_embeddings``
        (n_classes, d_embed), or ``class_names`` embedded by the backbone's text tower (prompt
        ``templates``; ``weights``: the local file the model was loaded from, whose text tower is used;
        see :func:`~vision_sae_lens.backbones.text_tower.class_text_embeddings`)."""
        if self.output_kind == "logits" and text_embeddings is None:
            self._class_readout = build_readout(self, class_names=class_names)  # type: ignore[arg-type]
            return self._class_readout
        if text_embeddings is None:
            if class_names is None:
                raise ConfigError("give class_names or text_embeddings")
            from vision_sae_lens.backbones.text_tower import class_text_embeddings

            text_embeddings = class_text_embeddings(self, class_names, templates=templates, weights=weights)  # type: ignore[arg-type]
            if text_embeddings is None:
                raise ConfigError(f"{self.backbone_id} has no text tower; pass text_embeddings=")
        self._class_readout = build_readout(self, class_names=class_names, text_embeddings=text_embeddings)  # type: ignore[arg-type]
        return self._class_readout

    def tokens_to_residual_directions(self, tokens: Any) -> torch.Tensor:
        """Class directions (``*shape, d_model``) for class ids, names or a tensor of ids: what
        TransformerLens' ``cache.logit_attrs(stack, tokens=..., pos_slice=model.class_readout.pos_slice)``
        dots each (final-norm-scaled) component with."""
        readout = self.class_readout
        return readout.directions[readout.index(tokens)]

    def to_single_token(self, string: str) -> int:
        """The id of the class called ``string`` (see :meth:`use_classes`)."""
        return self.class_readout.index_of(string)

    def to_string(self, tokens: Any) -> str | list[str]:
        """The name of a class id, or the names of a sequence of ids (see :meth:`use_classes`)."""
        readout = self.class_readout
        if readout.class_names is None:
            raise ConfigError("the classes have no names: give class_names to model.use_classes(...)")
        ids = torch.as_tensor(readout.index(tokens))
        names = [readout.class_names[int(i)] for i in ids.reshape(-1)]
        return names[0] if ids.ndim == 0 else names

    def _check_no_loss(self, return_type: Any) -> None:
        if return_type in ("loss", "both"):
            raise ConfigError(
                f"return_type={return_type!r}: an image model has no next-token loss; use None, 'logits' or "
                "the default (the wrapped model's own output)."
            )
