"""Checkpoint folders: SAELens inference folders on the outside, resumable trainer state inside.

Every folder written here loads with plain ``sae_lens.SAE.load_from_disk``: ``cfg.json`` and
``sae_weights.safetensors`` are the *inference* form of the training SAE (BatchTopK / Matryoshka
become JumpReLU, activation normalisation is folded in) and ``sparsity.safetensors`` holds the
log10 feature density, as SAELens writes it. Periodic checkpoints add a ``trainer/`` sub-folder
with what ``SAETrainer`` needs to continue (training weights and cfg, Adam and scheduler state,
activation scaler, counters). A checkpoint is written to ``<step>.tmp`` and renamed when complete,
so a crash while writing never leaves a half checkpoint that resume would pick.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from sae_lens.constants import SPARSITY_FILENAME
from sae_lens.saes.sae import TrainingSAE
from sae_lens.training.sae_trainer import SAETrainer
from safetensors.torch import save_file

from vision_sae_lens.metadata import VisionFacts, apply_vision_facts
from vision_sae_lens.normalization import InputNormalization, fold_input_normalization

logger = logging.getLogger(__name__)

TRAINER_SUBDIR = "trainer"
PROGRESS_FILENAME = "progress.json"
FINISHED_FILENAME = "train_state.json"


def write_inference_folder(
    trainer: SAETrainer,
    path: Path,
    facts: VisionFacts,
    *,
    fold_in_place: bool = False,
    normalization: InputNormalization | None = None,
) -> TrainingSAE:
    """Write ``trainer.sae`` as an SAELens inference folder at ``path``; returns the SAE written.

    The activation normalisation estimated by the trainer, then the run's input ``normalization``
    (subtract_mean / scale_norm), are folded into the weights: on a copy (periodic checkpoints,
    training goes on) or, with ``fold_in_place``, on the SAE itself (the end of training, as
    ``SAETrainer.fit`` does).
    """
    sae = trainer.sae if fold_in_place else copy.deepcopy(trainer.sae)
    scaler = trainer.activation_scaler
    if scaler.scaling_factor is not None:
        sae.fold_activation_norm_scaling_factor(scaler.scaling_factor)
    if scaler.whitening is not None:
        sae.fold_activation_whitening(
            mean=scaler.whitening.mean,
            whitening_matrix=scaler.whitening.matrix,
            unwhitening_matrix=scaler.whitening.inverse_matrix,
        )
    if fold_in_place:
        scaler.scaling_factor = None
        scaler.whitening = None
    if normalization is not None:
        fold_input_normalization(sae, normalization)
    apply_vision_facts(sae, facts)
    path.mkdir(parents=True, exist_ok=True)
    sae.save_inference_model(path)
    save_file({"sparsity": trainer.log_feature_sparsity}, path / SPARSITY_FILENAME)
    return sae


def save_resumable(
    trainer: SAETrainer,
    root: Path,
    facts: VisionFacts,
    progress: dict[str, Any],
    *,
    keep: int,
    normalization: InputNormalization | None = None,
) -> Path:
    """Write checkpoint ``root/<n_steps>`` (inference folder + ``trainer/``) atomically; prune old ones."""
    step = trainer.n_training_steps
    final = root / str(step)
    tmp = root / f"{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write_inference_folder(trainer, tmp, facts, normalization=normalization)
    state_dir = tmp / TRAINER_SUBDIR
    trainer.sae.save_model(state_dir)
    trainer.save_trainer_state(state_dir)
    (state_dir / PROGRESS_FILENAME).write_text(json.dumps(progress, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(root / str(old), ignore_errors=True)
    logger.debug("checkpoint %s", final)
    return final


def list_checkpoints(root: Path) -> list[int]:
    """Steps of the complete checkpoints under ``root``, ascending."""
    if not root.is_dir():
        return []
    steps = [int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(s for s in steps if (root / str(s) / TRAINER_SUBDIR / PROGRESS_FILENAME).exists())


def read_progress(checkpoint: Path) -> dict[str, Any]:
    """The ``progress.json`` of a checkpoint (store fingerprint, data seed, steps)."""
    return json.loads((checkpoint / TRAINER_SUBDIR / PROGRESS_FILENAME).read_text())


def load_resumable(trainer: SAETrainer, checkpoint: Path) -> None:
    """Restore the SAE weights and all trainer state from a checkpoint folder."""
    state_dir = checkpoint / TRAINER_SUBDIR
    trainer.load_trainer_state(state_dir)
    trainer.sae.load_weights_from_checkpoint(state_dir)


def mark_finished(folder: Path, info: dict[str, Any]) -> None:
    """Record that the folder holds a finished run (written last, so its presence means complete)."""
    (folder / FINISHED_FILENAME).write_text(json.dumps({"finished": True, **info}, indent=1))


def is_finished(folder: Path) -> bool:
    """Whether ``folder`` holds a finished run."""
    path = folder / FINISHED_FILENAME
    return path.exists() and json.loads(path.read_text()).get("finished", False)
