"""Resume only the run that was started: a checkpoint records every setting that decides the result.

Each resumable checkpoint's ``progress.json`` (and a finished run's ``train_state.json``) holds
:func:`run_settings`: the ``TrainConfig`` with its defaults resolved (batch size, lr and its schedule,
training rows, seeds, site, tokens, normalisation, held-out split, ...), every field of the SAE's SAELens
config (``sae.k``, ``sae.d_sae``, ``sae.architecture``, ...) and the store's fingerprint. ``resume`` compares
them with the new config and refuses any difference, naming each field with its old and new value, so a
run is never continued with other settings and sealed as one. The few fields that may change are listed,
with the reason, in :data:`MAY_CHANGE_ON_RESUME`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vision_sae_lens.errors import ConfigError

if TYPE_CHECKING:
    from vision_sae_lens.train.config import TrainConfig

logger = logging.getLogger(__name__)

MAY_CHANGE_ON_RESUME: dict[str, str] = {
    "store": "the store's path: a moved store resumes; the store itself is compared by its fingerprint",
    "eval_store": "read only by the evaluation after the last step, never by training",
    "downstream_images": "used only by the evaluation after the last step",
    "device": "where the steps run; the state loads on any device (results agree up to rounding)",
    "sae.device": "as device",
    "log_every": "how often the progress bar and W&B show loss, L0 and NMSE",
    "wandb_project": "where the logs go",
    "wandb_mode": "where the logs go",
    "checkpoint_every_tokens": "when checkpoints are written, not what is trained",
    "keep_checkpoints": "how many checkpoints stay on disk",
}
"""Settings a resumed run may change, with the reason. Every other setting must be the one the run
started with."""

_LEGACY_KEYS = ("store_fingerprint", "data_seed", "batch_size")
"""What checkpoints written before :func:`run_settings` existed recorded."""


def run_settings(cfg: TrainConfig, store_fingerprint: str) -> dict[str, Any]:
    """The settings that decide a run's result: flat names (``lr``, ``sae.k``) to JSON values."""
    described = cfg.to_dict()
    sae = described.pop("sae")
    flat = {**described, **{f"sae.{key}": value for key, value in sae.items()}}
    flat = {key: value for key, value in flat.items() if key not in MAY_CHANGE_ON_RESUME}
    flat["store_fingerprint"] = store_fingerprint
    return json.loads(json.dumps(flat, default=str, allow_nan=False))  # tuples -> lists, as read back


def check_resume_settings(
    recorded: Mapping[str, Any], cfg: TrainConfig, store_fingerprint: str, where: Path
) -> None:
    """Refuse (ConfigError) to continue the run recorded at ``where`` with other settings.

    ``recorded`` is the checkpoint's ``progress.json`` (or a finished run's ``train_state.json``).
    """
    current = run_settings(cfg, store_fingerprint)
    before = recorded.get("settings")
    if not isinstance(before, Mapping):
        logger.warning(
            "%s predates the recording of every training setting; only the store, data seed and batch size "
            "can be compared with the new config",
            where,
        )
        before = {key: recorded[key] for key in _LEGACY_KEYS if key in recorded}
        current = {key: current[key] for key in before}
    missing = object()
    changed = [
        key
        for key in sorted(set(before) | set(current))
        if before.get(key, missing) != current.get(key, missing)
    ]
    if not changed:
        return
    shown = "; ".join(f"{key}: {_value(before, key)} -> {_value(current, key)}" for key in changed)
    raise ConfigError(
        f"cannot resume {where}: the run was started with other settings ({shown}). Resume with the "
        "settings it started with (the values before '->'), or pass --overwrite (overwrite=True) to delete "
        "this run's checkpoints and output and train it again with the new settings."
    )


def _value(settings: Mapping[str, Any], key: str) -> str:
    if key not in settings:
        return "(not set)"
    text = json.dumps(settings[key])
    return text if len(text) <= 80 else text[:77] + "..."
