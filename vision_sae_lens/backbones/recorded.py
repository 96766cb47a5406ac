"""The backbone a store was recorded from, built again and proven to be the same.

A store records its backbone's id, how it was built (``backbone_build``: pretrained, random or
file weights, and the constructor's keyword arguments) and a hash of its weights
(``backbone_weights_sha256``, :func:`weights_sha256`). Rebuilding the id alone is not enough: a
randomly initialised backbone rebuilt from its id would download *pretrained* weights, and a fine-tuned
one would silently become the original. So :func:`backbone_for` rebuilds what the store records and
compares the hash; anything it cannot rebuild, or that does not match, is refused with a message that
says to pass the weights file (``--weights FILE``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vision_sae_lens.errors import BackboneWeightsError, VisionSAELensError

if TYPE_CHECKING:
    from vision_sae_lens.backbones.hooked import HookedSAEViT

SAVE_HINT = (
    "Pass --weights FILE (weights=FILE) holding the weights it was recorded from, e.g. saved where it was "
    "recorded with torch.save(model.backbone.state_dict(), FILE) (timm: and open_clip: ids)."
)


def portable_backbone_id(backbone_id: str) -> str:
    """``backbone_id`` as files others may read record it: a local directory's id keeps only the folder's name
    (``local-dir:NAME``), never the absolute path."""
    return f"local-dir:{Path(backbone_id).name}" if os.path.isabs(backbone_id) else backbone_id


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict: every tensor's name, shape, dtype and bytes, in order."""
    # Each tensor's bytes are hashed in place, without a copy.
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(memoryview(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def backbone_for(
    model_id: str, recorded: Mapping[str, Any], *, weights: str | Path | None = None, what: str = "the store"
) -> HookedSAEViT:
    """The backbone ``--model`` names for a store whose metadata is ``recorded``.

    ``"store"`` rebuilds the recorded backbone (its id, build keyword arguments and, with ``weights``, that
    file); any other id is built as given. Whenever the result has the recorded id, its weights must hash
    to the recorded ``backbone_weights_sha256`` (BackboneWeightsError otherwise). ``what`` names the store
    in messages.
    """
    from vision_sae_lens.backbones.hooked import HookedSAEViT

    backbone_id = str(recorded.get("backbone_id") or "")
    if model_id != "store":
        model = HookedSAEViT.from_pretrained(model_id, **_weights_kwarg(weights))
    else:
        model = _rebuild(backbone_id, recorded, weights=weights, what=what)
    if model.backbone_id == backbone_id:
        check_recorded_weights(model, recorded, what=what)
    return model


def check_recorded_weights(
    model: HookedSAEViT, recorded: Mapping[str, Any], *, what: str = "the store"
) -> None:
    """Refuse (BackboneWeightsError) a backbone whose weights are not the ones ``recorded`` hashed."""
    expected = recorded.get("backbone_weights_sha256")
    if not expected:  # a store written by StoreWriter from rows it was given: no backbone was recorded
        return
    actual = weights_sha256(model.backbone)
    if actual != expected:
        raise BackboneWeightsError(
            f"{model.backbone_id} as built here is not the backbone {what} was recorded from: its weights hash to "
            f"{actual[:16]}, the recording's to {expected[:16]}. Using it would measure another model. "
            + SAVE_HINT
        )


def _rebuild(
    backbone_id: str, recorded: Mapping[str, Any], *, weights: str | Path | None, what: str
) -> HookedSAEViT:
    from vision_sae_lens.backbones.hooked import HookedSAEViT

    build = recorded.get("backbone_build")
    kwargs: dict[str, Any] = dict(build.get("kwargs") or {}) if isinstance(build, Mapping) else {}
    if weights is None:
        source = build.get("weights") if isinstance(build, Mapping) else None
        if source == "random-init":
            raise BackboneWeightsError(
                f"{what} was recorded from a randomly initialised {backbone_id}: rebuilding that id would load other "
                "(pretrained) weights, and random ones are not the recorded ones either. " + SAVE_HINT
            )
        if source == "file" or backbone_id.startswith(("local-dir:", "module:")):
            file = (recorded.get("backbone_weights_file") or {}).get("file")
            raise BackboneWeightsError(
                f"{what} was recorded from {backbone_id}"
                + (f" with the weights file {file!r}" if file else "")
                + ", which cannot be rebuilt from its id. "
                + SAVE_HINT
            )
    try:
        return HookedSAEViT.from_pretrained(backbone_id, **kwargs, **_weights_kwarg(weights))
    except VisionSAELensError:
        raise
    except (OSError, RuntimeError, ValueError) as exc:  # offline without the files, or another architecture
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise BackboneWeightsError(
            f"cannot rebuild {backbone_id}, the backbone of {what} ({type(exc).__name__}: {first}). "
            + SAVE_HINT
        ) from exc


def _weights_kwarg(weights: str | Path | None) -> dict[str, Any]:
    return {"weights": str(weights)} if weights else {}
