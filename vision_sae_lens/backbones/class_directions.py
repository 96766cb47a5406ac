"""Class directions: the vision counterpart of TransformerLens' unembedding for ``logit_attrs``.

A classifier's logit for class ``c`` reads the final-normed tokens through pooling and a linear head::

    logit_c = mean_{p in read tokens} LN(resid_p) . W_head[c] + bias_c
            = mean_p ((resid_p - mean(resid_p)) / scale_p) . (w_norm * W_head[c])  +  (b_norm . W_head[c] + bias_c)
                                                             ^ direction_c            ^ offset_c

With the final norm's scale frozen at its cached value (``ln_final.hook_scale``, as TransformerLens'
``apply_ln_to_stack`` does) this is linear in the residual stream, so the logit is the sum over any
decomposition of the stream (heads, neurons, SAE latents, embeddings, biases) of each part's
contribution, plus ``offset_c``. For a CLIP / SigLIP-style image tower the "head" is the projection
into the joint space and class ``c`` is a text embedding ``t_c`` (unit norm, e.g. of the prompt "a photo
of a {c}."): ``logit_c = embedding . t_c`` (the cosine similarity times the image embedding's norm, a
per-image constant), so the head rows are ``t_c @ W_proj``.

Only readouts that are linear in the final-normed tokens qualify: CLS-token or mean pooling into a
linear head or projection. Attention pooling (SigLIP's MAP head) or a norm after pooling (timm's
``fc_norm``) is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from vision_sae_lens.errors import ConfigError, OutOfRangeError, UnknownSiteError, close_matches

if TYPE_CHECKING:
    from vision_sae_lens.backbones.hooked import HookedSAEViT


@dataclass(frozen=True)
class ClassReadout:
    """Class logits as linear functions of the stream after the final norm's centring and scale."""

    directions: torch.Tensor
    """(n_classes, d_model): ``w_norm * head_row``; dot it with ``(resid - mean) / scale``."""
    offsets: torch.Tensor
    """(n_classes,): what the norm's bias and the head's bias add to each logit."""
    token_index: tuple[int, ...]
    """The tokens the head reads (their mean when several)."""
    class_names: list[str] | None = None
    """Names of the classes, for ``to_single_token``."""
    text_embeddings: torch.Tensor | None = None
    """(n_classes, d_embed) class text embeddings, for an image-text tower; None for a classifier."""

    @property
    def pos_slice(self) -> int | list[int]:
        """The ``pos_slice`` that selects the read tokens in ``run_with_cache`` / ``ActivationCache``."""
        return self.token_index[0] if len(self.token_index) == 1 else list(self.token_index)

    def logits(self, output: torch.Tensor) -> torch.Tensor:
        """(batch, n_classes) class logits from the model's output tensor (``model.output_tensor(out)``)."""
        return output if self.text_embeddings is None else output @ self.text_embeddings.T

    def index(self, classes: Any) -> torch.Tensor | int:
        """Class ids from ids, names or a tensor of ids (checked against ``n_classes``)."""
        if isinstance(classes, str):
            return self.index_of(classes)
        if isinstance(classes, (list, tuple)) and classes and isinstance(classes[0], str):
            return torch.tensor([self.index_of(name) for name in classes])
        ids = torch.as_tensor(classes)
        n = self.directions.shape[0]
        if ids.numel() and (int(ids.min()) < -n or int(ids.max()) >= n):
            raise OutOfRangeError(f"class ids must be in [0, {n}), got {ids.tolist()}")
        return int(ids) if ids.ndim == 0 else ids

    def index_of(self, name: str) -> int:
        """The id of the class called ``name``."""
        if self.class_names is None:
            raise UnknownSiteError(
                f"this readout has no class names, so {name!r} cannot be looked up; pass class ids, or "
                "class_names= to model.use_classes(...)."
            )
        if name not in self.class_names:
            raise UnknownSiteError(f"no class {name!r}.{close_matches(name, self.class_names)}")
        return self.class_names.index(name)


def build_readout(
    model: HookedSAEViT,
    *,
    class_names: Sequence[str] | None = None,
    text_embeddings: torch.Tensor | None = None,
) -> ClassReadout:
    """The class readout of ``model``: its classifier head's classes, or for an image-text tower the
    given unit ``text_embeddings`` (n_classes, d_embed) of the classes ``class_names``."""
    spec = model.spec
    why = None
    if spec.readout is None:
        why = "its output is not a linear head on CLS or mean-pooled final-normed tokens (attention pooling, a norm after pooling, or an unsupported head)"
    elif spec.final_norm is None:
        why = "it has no final norm over every token"
    if why:
        raise ConfigError(f"{model.backbone_id}: no class directions: {why}.")
    assert spec.readout is not None and spec.final_norm is not None
    weight, bias = spec.readout.linear()  # (n_out, d_model), (n_out,)
    if model.output_kind == "logits":
        if text_embeddings is not None:
            raise ConfigError(
                f"{model.backbone_id} is a classifier: its classes are its head's; drop text_embeddings"
            )
        rows, row_bias = weight, bias
    else:
        if text_embeddings is None:
            raise ConfigError(
                f"{model.backbone_id} outputs an embedding: give the classes as text embeddings "
                "(model.use_classes(class_names) computes them with the text tower)."
            )
        text = text_embeddings.to(weight)
        if text.ndim != 2 or text.shape[1] != weight.shape[0]:
            raise ConfigError(
                f"text_embeddings must be (n_classes, {weight.shape[0]}), got {tuple(text_embeddings.shape)}"
            )
        rows = text @ weight
        row_bias = text @ bias if bias is not None else None
    n_classes = rows.shape[0]
    if class_names is not None and len(class_names) != n_classes:
        raise ConfigError(f"{len(class_names)} class names for {n_classes} classes")
    ln_final = model.ln_final
    directions = rows * ln_final.w
    offsets = rows @ ln_final.b + (row_bias if row_bias is not None else 0.0)
    return ClassReadout(
        directions=directions,
        offsets=offsets,
        token_index=tuple(spec.readout.token_index),
        class_names=list(class_names) if class_names is not None else None,
        text_embeddings=None if model.output_kind == "logits" else text,
    )
