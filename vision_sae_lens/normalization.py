"""Input normalisation of a training run (saev's ``scale_mean`` / ``scale_norm``), folded into the SAE.

Training may see ``z = (x - mean) * scale`` instead of the stored activation ``x``: ``mean`` is the
mean of the training rows of the selected tokens, ``scale`` brings their mean norm to ``sqrt(d)``.
Both maps are affine, so when the run ends they are folded into the weights with SAELens' own
``fold_activation_norm_scaling_factor`` and ``fold_activation_whitening`` (identity matrix): the
saved SAE takes raw activations and reconstructs in raw units, with the same latent values as during
training. Splicing, evaluation, analysis and plain ``SAE.load_from_disk`` therefore need no extra
step. The transform is recorded in ``cfg.metadata.input_normalization`` (mean included), so
:func:`unfold_input_normalization` gives back the SAE that takes ``z``, and
:meth:`InputNormalization.apply` computes ``z`` from raw rows.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens import SAE

from vision_sae_lens.errors import ConfigError

METADATA_KEY = "input_normalization"


@dataclass(frozen=True)
class InputNormalization:
    """The affine map ``z = (x - mean) * scale`` from stored activations to what the SAE trained on."""

    mean_d: torch.Tensor | None
    """(d,) float32 mean subtracted first; None when the run did not subtract the mean."""
    scale: float = 1.0
    """Factor applied after centring (``sqrt(d) / mean norm``); 1.0 when the run did not scale."""
    tokens: str = "all"
    """Token selection whose rows the statistics were computed over."""
    rows: int = 0
    """Rows the statistics were computed from."""
    mean_norm: float | None = None
    """Mean row norm of the (centred) rows before scaling."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ConfigError(f"scale must be a finite positive number, got {self.scale}")
        if self.mean_d is not None:
            object.__setattr__(self, "mean_d", torch.as_tensor(self.mean_d, dtype=torch.float32).reshape(-1))

    @property
    def subtract_mean(self) -> bool:
        """Whether the mean is removed."""
        return self.mean_d is not None

    @property
    def scale_norm(self) -> bool:
        """Whether rows are scaled."""
        return self.scale != 1.0

    def apply(self, acts_nd: torch.Tensor) -> torch.Tensor:
        """``(acts - mean) * scale`` in float32 (a new tensor), on ``acts``' device."""
        out = acts_nd.float()
        if self.mean_d is not None:
            out = out - self.mean_d.to(out.device)
        elif out is acts_nd:
            out = out.clone()
        return out * self.scale if self.scale != 1.0 else out

    def apply_(self, acts_nd: torch.Tensor) -> torch.Tensor:
        """:meth:`apply` in place on a float32 tensor the caller owns (the training feed's batches)."""
        if self.mean_d is not None:
            acts_nd.sub_(self.mean_d.to(acts_nd.device))
        if self.scale != 1.0:
            acts_nd.mul_(self.scale)
        return acts_nd

    def invert(self, z_nd: torch.Tensor) -> torch.Tensor:
        """``z / scale + mean``: back to stored units."""
        out = z_nd.float() / self.scale
        return out + self.mean_d.to(out.device) if self.mean_d is not None else out

    def to_metadata(self) -> dict[str, Any]:
        """JSON-ready record for ``cfg.metadata.input_normalization``."""
        return {
            "subtract_mean": self.subtract_mean,
            "scale_norm": self.scale_norm,
            "mean": None if self.mean_d is None else [float(v) for v in self.mean_d.tolist()],
            "scale": float(self.scale),
            "tokens": self.tokens,
            "rows": int(self.rows),
            "mean_norm": self.mean_norm,
            "folded": True,
            "formula": "z = (x - mean) * scale; folded into the weights, so the SAE takes raw x",
        }

    @classmethod
    def from_metadata(cls, record: dict[str, Any] | None) -> InputNormalization | None:
        """Inverse of :meth:`to_metadata` (None for None)."""
        if not record:
            return None
        mean = record.get("mean")
        return cls(
            mean_d=None if mean is None else torch.tensor(mean, dtype=torch.float32),
            scale=float(record.get("scale", 1.0)),
            tokens=str(record.get("tokens", "all")),
            rows=int(record.get("rows", 0)),
            mean_norm=record.get("mean_norm"),
        )


def estimate_input_normalization(
    store: Any,
    site: str,
    *,
    subtract_mean: bool,
    scale_norm: bool,
    tokens: str,
    token_types: list[str] | None,
    start_row: int = 0,
    stop_row: int | None = None,
    exclude_images: Any = None,
    max_rows: int = 262144,
) -> InputNormalization | None:
    """The normalisation of ``site`` over rows ``[start_row, stop_row)`` of the tokens ``token_types``
    (None: every row), leaving out the rows of ``exclude_images`` (held-out images); None when neither
    ``subtract_mean`` nor ``scale_norm`` is asked for."""
    if not (subtract_mean or scale_norm):
        return None
    stats = store.statistics(
        site,
        start_row=start_row,
        stop_row=stop_row,
        max_rows=max_rows,
        token_types=token_types,
        subtract_mean=subtract_mean,
        exclude_images=exclude_images,
    )
    return InputNormalization(
        mean_d=torch.from_numpy(stats["mean"]) if subtract_mean else None,
        scale=float(stats["scale"]) if scale_norm else 1.0,
        tokens=tokens,
        rows=int(stats["rows"]),
        mean_norm=float(stats["mean_norm"]),
    )


@torch.no_grad()
def fold_input_normalization(sae: SAE, norm: InputNormalization) -> None:
    """Fold ``norm`` into ``sae`` in place: an SAE trained on ``z`` becomes one that takes raw ``x``.

    The scale is folded first (SAELens' ``fold_activation_norm_scaling_factor``, which also rescales a
    BatchTopK threshold), then the mean with an identity ``fold_activation_whitening`` (decoder norms
    unchanged, so thresholds stay valid). Records ``norm`` in ``sae.cfg.metadata``.
    """
    if norm.scale != 1.0:
        sae.fold_activation_norm_scaling_factor(norm.scale)
    if norm.mean_d is not None:
        eye = torch.eye(sae.cfg.d_in, dtype=torch.float32)
        sae.fold_activation_whitening(mean=norm.mean_d, whitening_matrix=eye, unwhitening_matrix=eye)
    setattr(sae.cfg.metadata, METADATA_KEY, norm.to_metadata())


def input_normalization_of(sae: SAE) -> InputNormalization | None:
    """The normalisation an SAE was trained with (folded into its weights), or None."""
    return InputNormalization.from_metadata(getattr(sae.cfg.metadata, METADATA_KEY, None))


@torch.no_grad()
def unfold_input_normalization(sae: SAE) -> SAE:
    """A copy of ``sae`` that takes normalised activations ``z`` (as during training) instead of raw ones.

    Its latents equal ``sae``'s on the corresponding raw rows and its reconstruction is in ``z`` units
    (``norm.invert`` maps it back). An SAE without a recorded normalisation is returned as a plain copy.
    """
    out = copy.deepcopy(sae)
    norm = input_normalization_of(sae)
    if norm is None:
        return out
    if norm.mean_d is not None:
        eye = torch.eye(out.cfg.d_in, dtype=torch.float32)
        out.fold_activation_whitening(mean=-norm.mean_d, whitening_matrix=eye, unwhitening_matrix=eye)
    if norm.scale != 1.0:
        out.fold_activation_norm_scaling_factor(1.0 / norm.scale)
    setattr(out.cfg.metadata, METADATA_KEY, None)
    return out
