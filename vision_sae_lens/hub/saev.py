"""Read saev ``sae.pt`` checkpoints and convert them to SAELens SAEs with the same latents.

A saev checkpoint is one JSON header line followed by a ``torch.save`` state dict (``W_enc``
(d_model, d_sae), ``W_dec`` (d_sae, d_model), ``b_enc``, ``b_dec``, and ``activation.threshold``
for BatchTopK). The header changed over saev's history (see docs/coming_from_saev.md):

- legacy (no ``schema``): flat ``d_vit``, ``exp_factor``; ReLU;
- schema 1: ``cls`` names the activation (Relu/TopK/BatchTopK, flat ``top_k``) or is
  ``SparseAutoencoderConfig`` with ``cfg.activation = {cls, params}``;
- schemas 2-5: ``cfg.activation = {cls, params}``; ``d_vit``/``exp_factor`` became
  ``d_model``/``d_sae``; params grew nested ``sparsity``/``aux`` objects.

Encoders up to schema 1 computed ``act((x - b_dec) @ W_enc + b_enc)``; later ones drop the
``- b_dec``. Mapping: Relu -> standard, TopK -> topk, BatchTopK with a stored threshold -> jumprelu
(saev's eval forward is ``x if x > theta`` with ReLU when ``theta <= 0``), BatchTopK without a
threshold (schema 2 era, per-sample top-k at eval) -> topk. Anything else raises
:class:`ConversionError` naming the field. The state dict is read with ``weights_only=True``.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sae_lens
import torch
from sae_lens import (
    SAE,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)

from vision_sae_lens.errors import ConfigError, ConversionError, UnsafeCheckpointError
from vision_sae_lens.fsutil import open_regular
from vision_sae_lens.metadata import VisionFacts

logger = logging.getLogger(__name__)

KNOWN_SCHEMAS = (None, 1, 2, 3, 4, 5)
ACTIVATIONS = ("Relu", "TopK", "BatchTopK")
STATE_KEYS = {"W_enc", "W_dec", "b_enc", "b_dec"}
MAX_HEADER_BYTES = 2**20
"""Longest JSON header line read from a ``sae.pt`` (saev's are about a kilobyte)."""


@dataclass(frozen=True)
class SaevCheckpoint:
    """A parsed saev checkpoint: what the header says and the tensors."""

    schema: int | None
    """Header schema; None for the legacy, pre-schema header."""
    d_model: int
    """Input width (saev's ``d_vit`` / ``d_model``)."""
    d_sae: int
    """Number of latents."""
    activation: str
    """saev activation class: Relu, TopK or BatchTopK."""
    top_k: int | None
    """k for TopK/BatchTopK."""
    subtracts_b_dec: bool
    """Whether saev's encoder of that era subtracted ``b_dec`` from the input."""
    state_dict: dict[str, torch.Tensor]
    """W_enc, W_dec, b_enc, b_dec and optionally activation.threshold."""
    header: dict[str, Any]
    """The raw JSON header (commit, lib version, training config)."""

    @property
    def threshold(self) -> torch.Tensor | None:
        """BatchTopK inference threshold (a scalar in saev), if stored."""
        return self.state_dict.get("activation.threshold")


@dataclass(frozen=True)
class SaevNormalization:
    """Input normalisation saev applied before its SAE: ``x_norm = (x - mean) * scalar``."""

    scalar: float = 1.0
    """Multiplier applied after centring."""
    mean: torch.Tensor | None = None
    """(d_model,) mean subtracted first; None for no centring."""

    def __post_init__(self) -> None:
        if not self.scalar > 0:
            raise ConfigError(f"normalisation scalar must be > 0, got {self.scalar}")


def read_saev_checkpoint(path: str | Path, *, subtract_b_dec: bool | None = None) -> SaevCheckpoint:
    """Parse a saev ``sae.pt`` (any header schema saev has written) without executing code.

    ``subtract_b_dec`` overrides the era default (True up to schema 1, False after).
    """
    path = Path(path)
    with open_regular(path) as fd:  # a FIFO or /dev/zero is refused, not read without end
        first = fd.readline(MAX_HEADER_BYTES + 1)
        if len(first) > MAX_HEADER_BYTES:
            raise ConversionError(
                f"{path}: the first line is longer than {MAX_HEADER_BYTES:,} bytes, so it is not a saev JSON header."
            )
        rest = fd.read()
    try:
        header = json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConversionError(
            f"{path}: the first line is not a JSON header, so this is not a saev sae.pt ({exc})."
        ) from exc
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: header is {type(header).__name__}, expected a JSON object.")
    schema = header.get("schema")
    if schema not in KNOWN_SCHEMAS:
        raise ConversionError(
            f"{path}: unknown header field schema={schema!r}; known schemas are legacy (none) and 1-5. "
            "Upgrade vision_sae_lens or convert with saev's own saev.nn.load and save as SAELens."
        )
    d_model, d_sae, activation, top_k = _parse_header(header, path)
    try:
        state = torch.load(io.BytesIO(rest), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{path}: the state dict holds objects other than tensors; refused to unpickle them because that "
            f"can run code from the file ({str(exc).splitlines()[0]})."
        ) from None
    except Exception as exc:
        raise ConversionError(
            f"{path}: the state dict after the header cannot be read safely: {exc}"
        ) from exc
    _check_state(state, d_model, d_sae, path)
    era_subtracts = schema is None or schema <= 1
    return SaevCheckpoint(
        schema=schema,
        d_model=d_model,
        d_sae=d_sae,
        activation=activation,
        top_k=top_k,
        subtracts_b_dec=era_subtracts if subtract_b_dec is None else subtract_b_dec,
        state_dict={k: v.detach().float() for k, v in state.items()},
        header=header,
    )


def convert_saev_checkpoint(
    ckpt: SaevCheckpoint,
    *,
    facts: VisionFacts | None = None,
    normalization: SaevNormalization | None = None,
) -> SAE:
    """A SAELens SAE whose ``encode(x)`` equals saev's latents on ``x`` (saev normalised ``x`` first
    when ``normalization`` is given; it is folded into the weights, so ``x`` is the raw activation).
    """
    sd = ckpt.state_dict
    W_enc, W_dec, b_enc, b_dec = sd["W_enc"], sd["W_dec"], sd["b_enc"], sd["b_dec"]
    apply_b_dec = ckpt.subtracts_b_dec
    if normalization is not None:
        s = float(normalization.scalar)
        mean = normalization.mean if normalization.mean is not None else torch.zeros(ckpt.d_model)
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        if mean.shape[0] != ckpt.d_model:
            raise ConversionError(
                f"normalisation mean has {mean.shape[0]} values, the SAE expects {ckpt.d_model}"
            )
        # saev: act(((x - mean) * s - c) @ W_enc + b_enc) with c = b_dec or 0; decode back to raw units.
        shift = mean * s + (b_dec if apply_b_dec else 0.0)
        b_enc = b_enc - shift @ W_enc
        W_enc = W_enc * s
        W_dec, b_dec = W_dec / s, b_dec / s + mean
        apply_b_dec = False
    common = {"d_in": ckpt.d_model, "d_sae": ckpt.d_sae, "apply_b_dec_to_input": apply_b_dec}
    arch, extra = saev_architecture(ckpt)
    if arch == "standard":
        sae: SAE = StandardSAE(StandardSAEConfig(**common))
    elif arch == "topk":
        if ckpt.top_k is None:
            raise ConversionError(
                f"the saev header names a TopK activation ({ckpt.activation}) without top_k"
            )
        sae = TopKSAE(TopKSAEConfig(k=int(ckpt.top_k), **common))
    else:
        sae = JumpReLUSAE(JumpReLUSAEConfig(**common))
    weights = {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec, **extra}
    sae.load_state_dict({k: v.contiguous() for k, v in weights.items()})
    _write_metadata(sae, ckpt, facts, normalization)
    return sae


def saev_architecture(ckpt: SaevCheckpoint) -> tuple[str, dict[str, torch.Tensor]]:
    """SAELens architecture for a saev activation, plus any extra tensors (the jumprelu threshold)."""
    if ckpt.activation == "Relu":
        return "standard", {}
    if ckpt.activation == "TopK":
        return "topk", {}
    if ckpt.threshold is None:
        if ckpt.schema == 1 and ckpt.header.get("cls") == "BatchTopK":
            raise ConversionError(
                "header field cls='BatchTopK' (schema 1): that saev version kept the top k values of the "
                "whole flattened batch, so a latent depends on the other images in the batch and no "
                "per-image SAE reproduces it. Re-export it from saev with a newer version."
            )
        return "topk", {}
    theta = float(ckpt.threshold.reshape(-1)[0]) if ckpt.threshold.numel() == 1 else None
    if theta is None:
        threshold = ckpt.threshold.float().clamp(min=0.0).reshape(ckpt.d_sae)
    else:
        # saev falls back to ReLU while theta <= 0; jumprelu with threshold 0 is exactly ReLU.
        threshold = torch.full((ckpt.d_sae,), max(theta, 0.0))
    return "jumprelu", {"threshold": threshold}


def load_saev_checkpoint(
    path: str | Path,
    *,
    facts: VisionFacts | None = None,
    input_mean: torch.Tensor | str | Path | None = None,
    input_scalar: float | None = None,
    subtract_b_dec: bool | None = None,
) -> SAE:
    """Load a saev ``sae.pt`` as a SAELens SAE (same latents as saev's forward).

    ``input_mean`` (tensor, or a ``.pt``/``.npy`` file) and ``input_scalar`` describe the
    normalisation saev applied to activations before this SAE (the DINOv2 24K release needs both);
    they are folded into the weights so the SAE takes raw activations.
    """
    ckpt = read_saev_checkpoint(path, subtract_b_dec=subtract_b_dec)
    norm = None
    if input_mean is not None or input_scalar is not None:
        norm = SaevNormalization(
            scalar=1.0 if input_scalar is None else float(input_scalar), mean=_read_mean(input_mean)
        )
    return convert_saev_checkpoint(ckpt, facts=facts, normalization=norm)


# --- helpers -------------------------------------------------------------------------------------


def _parse_header(header: dict[str, Any], path: Path) -> tuple[int, int, str, int | None]:
    schema = header.get("schema")
    if schema is None:
        cfg, act_cls, params = header, "Relu", {}
    elif schema == 1 and header.get("cls", "SparseAutoencoderConfig") in ACTIVATIONS:
        cfg = _field(header, "cfg", path)
        act_cls, params = header["cls"], {"top_k": cfg.get("top_k", 32)}
    else:
        cfg = _field(header, "cfg", path)
        act = cfg.get("activation")
        if act is None and schema == 1:
            act = {"cls": "Relu", "params": {}}
        if not isinstance(act, dict) or "cls" not in act:
            raise ConversionError(
                f"{path}: header field cfg.activation is {act!r}; expected {{cls, params}}."
            )
        act_cls, params = act["cls"], act.get("params") or {}
    if act_cls not in ACTIVATIONS:
        field_name = (
            "cls"
            if schema == 1 and "cls" in header and header["cls"] != "SparseAutoencoderConfig"
            else "cfg.activation.cls"
        )
        raise ConversionError(
            f"{path}: header field {field_name}={act_cls!r} is not an activation this importer knows "
            f"({', '.join(ACTIVATIONS)})."
        )
    d_model = cfg.get("d_model", cfg.get("d_vit"))
    if not isinstance(d_model, int):
        raise ConversionError(
            f"{path}: header field cfg.d_model (or d_vit) is missing or not an integer: {d_model!r}"
        )
    d_sae = cfg.get("d_sae")
    if d_sae is None and isinstance(cfg.get("exp_factor"), int):
        d_sae = d_model * cfg["exp_factor"]
    if not isinstance(d_sae, int):
        raise ConversionError(
            f"{path}: header field cfg.d_sae (or exp_factor) is missing or not an integer: {d_sae!r}"
        )
    top_k = params.get("top_k") if act_cls != "Relu" else None
    if act_cls != "Relu" and not (isinstance(top_k, int) and top_k > 0):
        raise ConversionError(
            f"{path}: header field top_k={top_k!r} must be a positive integer for {act_cls}."
        )
    return d_model, d_sae, act_cls, top_k


def _field(header: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = header.get(key)
    if not isinstance(value, dict):
        raise ConversionError(
            f"{path}: header field {key!r} is missing or not an object (schema {header.get('schema')})."
        )
    return value


def _check_state(state: object, d_model: int, d_sae: int, path: Path) -> None:
    if not isinstance(state, dict):
        raise ConversionError(f"{path}: the payload is a {type(state).__name__}, expected a state dict.")
    missing = STATE_KEYS - set(state)
    unknown = set(state) - STATE_KEYS - {"activation.threshold"}
    if missing or unknown:
        raise ConversionError(
            f"{path}: state dict keys {sorted(state)}: missing {sorted(missing)}, not understood {sorted(unknown)}."
        )
    shapes = {"W_enc": (d_model, d_sae), "W_dec": (d_sae, d_model), "b_enc": (d_sae,), "b_dec": (d_model,)}
    for key, shape in shapes.items():
        if tuple(state[key].shape) != shape:
            raise ConversionError(
                f"{path}: {key} has shape {tuple(state[key].shape)}, the header (d_model={d_model}, "
                f"d_sae={d_sae}) implies {shape}."
            )


def _write_metadata(
    sae: SAE, ckpt: SaevCheckpoint, facts: VisionFacts | None, norm: SaevNormalization | None
) -> None:
    md = sae.cfg.metadata
    md.sae_lens_version = sae_lens.__version__
    md.converted_from = "saev"
    md.saev_schema = ckpt.schema
    md.saev_activation = ckpt.activation
    md.saev_commit = ckpt.header.get("commit")
    md.saev_lib = ckpt.header.get("lib")
    md.saev_subtracts_b_dec = ckpt.subtracts_b_dec
    md.saev_normalization_folded = (
        None if norm is None else {"scalar": norm.scalar, "mean": norm.mean is not None}
    )
    if facts is not None:
        for key, value in facts.to_metadata().items():
            setattr(md, key, value)


def _read_mean(mean: torch.Tensor | str | Path | None) -> torch.Tensor | None:
    if mean is None or isinstance(mean, torch.Tensor):
        return mean
    path = Path(mean)
    if path.suffix == ".npy":
        import numpy as np

        return torch.from_numpy(np.load(path, allow_pickle=False)).float()
    value = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    if not isinstance(value, torch.Tensor):
        raise ConversionError(f"{path}: expected a tensor (the activation mean), got {type(value).__name__}")
    return value.float()
