"""Checkpoint folders: SAELens inference folders on the outside, resumable trainer state inside.

Every folder written here loads with plain ``sae_lens.SAE.load_from_disk``: ``cfg.json`` and
``sae_weights.safetensors`` are the *inference* form of the training SAE (BatchTopK / Matryoshka
become JumpReLU, activation normalisation is folded in) and ``sparsity.safetensors`` holds the
log10 feature density, as SAELens writes it. Periodic checkpoints add a ``trainer/`` sub-folder
with what ``SAETrainer`` needs to continue (training weights and cfg, Adam and scheduler state,
activation scaler, counters). A checkpoint is written to a unique temp folder, listed with checksums
in ``checkpoint.json`` (written last), fsynced and renamed when complete, so a crash while writing never
leaves a half checkpoint that resume would pick; a damaged one is detected and an older one used.
Resume reads trainer state with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_lens import SAE, SAETrainer, TrainingSAE
from safetensors.torch import save_file

from vision_sae_lens import fsutil
from vision_sae_lens.compat import SPARSITY_FILENAME, load_trainer_state
from vision_sae_lens.errors import (
    CheckpointCorruptError,
    SAEFolderError,
    SAEFolderNotFoundError,
    TrainingError,
)
from vision_sae_lens.metadata import VisionFacts, apply_vision_facts
from vision_sae_lens.normalization import InputNormalization, fold_input_normalization
from vision_sae_lens.train.resume import check_resume_settings

if TYPE_CHECKING:
    from vision_sae_lens.train.config import TrainConfig

logger = logging.getLogger(__name__)

TRAINER_SUBDIR = "trainer"
PROGRESS_FILENAME = "progress.json"
FINISHED_FILENAME = "train_state.json"
CHECKPOINT_MANIFEST = "checkpoint.json"


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
    sort_cfg_keys(path)
    save_file({"sparsity": trainer.log_feature_sparsity}, path / SPARSITY_FILENAME)
    return sae


def sort_cfg_keys(folder: Path) -> None:
    """Rewrite SAELens' ``cfg.json`` in ``folder`` with its keys sorted. SAELens lists the config's fields from a
    set, whose order changes with each process's string-hash seed; sorted, the same SAE gives the same bytes
    in every process (a sweep over ranks writes the folders one process would)."""
    path = folder / "cfg.json"
    fsutil.write_atomic(path, json.dumps(json.loads(path.read_text()), sort_keys=True).encode())


def save_resumable(
    trainer: SAETrainer,
    root: Path,
    facts: VisionFacts,
    progress: dict[str, Any],
    *,
    keep: int,
    normalization: InputNormalization | None = None,
) -> Path:
    """Write checkpoint ``root/<n_steps>`` (inference folder + ``trainer/``) atomically; prune old ones.

    Everything goes into a uniquely named temp folder; ``checkpoint.json`` (size and sha256 of every
    file) is written last, the folder is fsynced and renamed into place. Only folders with that file
    count as checkpoints, and resume checks it before loading.
    """
    root.mkdir(parents=True, exist_ok=True)
    if not (root / fsutil.MARKER_FILE).exists():
        fsutil.mark_folder(root, "checkpoints")
    step = trainer.n_training_steps
    final = root / str(step)
    tmp = fsutil.temp_folder(final)
    try:
        write_inference_folder(trainer, tmp, facts, normalization=normalization)
        state_dir = tmp / TRAINER_SUBDIR
        trainer.sae.save_model(state_dir)
        sort_cfg_keys(state_dir)
        trainer.save_trainer_state(state_dir)
        fsutil.write_json_atomic(state_dir / PROGRESS_FILENAME, progress)
        _write_checkpoint_manifest(tmp)
        fsutil.replace_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        doomed = fsutil.temp_name(root / str(old))  # renamed first: never seen half deleted
        os.replace(root / str(old), doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    logger.debug("checkpoint %s", final)
    return final


def list_checkpoints(root: Path) -> list[int]:
    """Steps of the complete checkpoints under ``root`` (with their ``checkpoint.json``), ascending."""
    if not root.is_dir():
        return []
    steps = [int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(s for s in steps if (root / str(s) / CHECKPOINT_MANIFEST).is_file())


def read_progress(checkpoint: Path) -> dict[str, Any]:
    """The ``progress.json`` of a checkpoint (store fingerprint, data seed, steps)."""
    path = checkpoint / TRAINER_SUBDIR / PROGRESS_FILENAME
    try:
        return fsutil.read_json(path)
    except (OSError, ValueError) as exc:
        raise CheckpointCorruptError(f"cannot read {path}: {exc}") from exc


def verify_checkpoint(checkpoint: Path) -> None:
    """Check every file of a checkpoint against its ``checkpoint.json``; CheckpointCorruptError names the bad ones."""
    path = checkpoint / CHECKPOINT_MANIFEST
    try:
        entries = fsutil.read_json(path)["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointCorruptError(f"cannot read {path}: {exc}") from exc
    problems = []
    for rel, entry in entries.items():
        file = fsutil.check_inside(checkpoint, rel, what=f"file in {path}")
        if not file.is_file():
            problems.append(f"{file}: missing")
        elif file.stat().st_size != entry["bytes"] or fsutil.sha256_file(file) != entry["sha256"]:
            problems.append(f"{file}: does not match {CHECKPOINT_MANIFEST}")
    if problems:
        raise CheckpointCorruptError(f"checkpoint {checkpoint} is damaged: {'; '.join(problems)}")


def load_resumable(trainer: SAETrainer, checkpoint: Path) -> None:
    """Verify a checkpoint, then restore the SAE weights and all trainer state from it.

    Nothing is unpickled: the trainer state is read with ``torch.load(weights_only=True)``, and a
    file that needs more than tensors and plain containers is refused (UnsafeCheckpointError).
    """
    verify_checkpoint(checkpoint)
    state_dir = checkpoint / TRAINER_SUBDIR
    load_trainer_state(trainer, state_dir)  # SAELens' loader with weights_only=True (a compat seam)
    trainer.sae.load_weights_from_checkpoint(state_dir)


def mark_finished(folder: Path, info: dict[str, Any]) -> None:
    """Record that the folder holds a finished run (atomic; written just before the folder is sealed)."""
    fsutil.write_json_atomic(folder / FINISHED_FILENAME, {"finished": True, **info})


def is_finished(folder: Path) -> bool:
    """Whether ``folder`` holds a finished run (its train_state.json says so and checksums.json exists)."""
    path = folder / FINISHED_FILENAME
    if not path.is_file() or not (folder / fsutil.SAE_CHECKSUMS_FILE).is_file():
        return False
    try:
        return bool(fsutil.read_json(path).get("finished", False))
    except ValueError as exc:
        raise CheckpointCorruptError(
            f"{path} is not valid JSON ({exc}); pass --overwrite to train again"
        ) from exc


def open_sae_folder(folder: str | Path, *, device: str = "cpu", require_checksums: bool = False) -> SAE:
    """``SAE.load_from_disk(folder)`` after checking its checksums.json (when it has one, or always with
    ``require_checksums``) and its cfg.json, with errors that name the file at fault."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SAEFolderNotFoundError(f"SAE folder {folder} does not exist (or is not a folder)")
    fsutil.verify_sae_folder(folder, require=require_checksums)
    cfg_path = folder / "cfg.json"
    try:
        cfg = fsutil.read_json(cfg_path)
    except FileNotFoundError:
        raise SAEFolderNotFoundError(f"{folder} is not a SAELens folder: it has no cfg.json") from None
    except (OSError, ValueError) as exc:
        raise SAEFolderError(f"{cfg_path} is not valid JSON ({exc}); the SAE folder is damaged") from exc
    if not isinstance(cfg, dict):
        raise SAEFolderError(f"{cfg_path} must hold a JSON object, got {type(cfg).__name__}")
    try:
        return SAE.load_from_disk(str(folder), device=device)
    except Exception as exc:
        raise SAEFolderError(
            f"{folder} does not load with SAELens' SAE.load_from_disk ({type(exc).__name__}: {exc}); check "
            f"{cfg_path} and sae_weights.safetensors"
        ) from exc


def check_writable(out: Path) -> None:
    """Fail before any training step when ``out`` cannot hold files (permissions, a file in the way, ...)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = fsutil.temp_name(out / "write-test")
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise TrainingError(
            f"cannot write into the output folder {out} ({exc.strerror or exc}); choose a writable --out-dir "
            "(nothing was trained)."
        ) from exc


def remove_stale_temps(out: Path) -> None:
    """Delete temp files and folders of killed runs under ``out`` and ``out/checkpoints/*``."""
    # Only under the lock: then every temp folder is a killed run's leftover, never a live writer's.
    parents = [out, *((out / "checkpoints").iterdir() if (out / "checkpoints").is_dir() else [])]
    for parent in parents:
        fsutil.remove_stale_temps(parent, recursive=False)  # only our own temp names: never a user's .tmp


def checkpoint_problem(path: Path, fingerprint: str, cfg: TrainConfig) -> str | None:
    """None when checkpoint ``path`` is intact and continues a run of ``cfg`` on store ``fingerprint``;
    what is damaged otherwise.

    A checkpoint of a run with other settings (another store, k, lr, batch size, ...) is no damage but
    a mistake: ConfigError naming every differing setting (see :mod:`vision_sae_lens.train.resume`).
    """
    try:
        verify_checkpoint(path)
        progress = read_progress(path)
    except CheckpointCorruptError as exc:
        return str(exc)
    check_resume_settings(progress, cfg, fingerprint, path)
    return None


def check_finished_settings(folder: Path, cfg: TrainConfig, fingerprint: str) -> None:
    """Refuse to hand back a finished run in ``folder`` as the result of ``cfg`` when its settings differ."""
    path = folder / FINISHED_FILENAME
    try:
        state = fsutil.read_json(path)
    except (OSError, ValueError) as exc:
        raise CheckpointCorruptError(f"cannot read {path}: {exc}; pass --overwrite to train again") from exc
    check_resume_settings(state if isinstance(state, dict) else {}, cfg, fingerprint, folder)


def resume_step(members: list[Any], fingerprint: str) -> int:
    """Newest step at which every one of ``members`` (a group's unfinished runs, each with ``ckpt_root``,
    ``cfg`` and ``name``) has an intact checkpoint of this run; 0 when there is none."""
    available = [set(list_checkpoints(m.ckpt_root)) for m in members]
    common = set.intersection(*available) if available else set()
    names = [m.name for m in members]
    if not common:
        if any(available):
            logger.warning("no checkpoint step common to all runs of this group; starting from step 0")
        else:
            logger.info("nothing to resume for %s; starting from step 0", names)
        return 0
    for step in sorted(common, reverse=True):  # newest first; a damaged one falls back to the one before
        damaged = [
            err for m in members if (err := checkpoint_problem(m.ckpt_root / str(step), fingerprint, m.cfg))
        ]
        if not damaged:
            logger.info("resuming %s from step %d", names, step)
            return step
        logger.warning("skipping damaged checkpoint step %d: %s", step, "; ".join(damaged))
    logger.warning("every checkpoint of %s is damaged; starting from step 0", names)
    return 0


def load_step(members: list[Any], step: int) -> None:
    """Every member's trainer (``m.live``) from its checkpoint at ``step``."""
    for m in members:
        path = m.ckpt_root / str(step)
        load_resumable(m.live, path)
        if m.live.n_training_steps != step:
            raise TrainingError(f"checkpoint {path} holds step {m.live.n_training_steps}, expected {step}")


def disk_full_error(where: Path, exc: BaseException) -> TrainingError:
    """The error for a full disk while writing under ``where`` (say so, and how to go on)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return TrainingError(
        f"the disk holding {where} is full: writing a checkpoint or the final SAE failed ({first}). Nothing "
        "incomplete was kept. Free some space and re-run the same command with --resume: it continues from "
        "the newest complete checkpoint."
    )


def is_own_sae_folder(folder: Path) -> bool:
    """Whether an SAE folder was written by this package (sealed, marked, or with our train_state.json)."""
    return fsutil.is_own_folder(folder) or (folder / FINISHED_FILENAME).is_file()


def _write_checkpoint_manifest(folder: Path) -> None:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKPOINT_MANIFEST):
        rel = path.relative_to(folder).as_posix()
        files[rel] = {"bytes": path.stat().st_size, "sha256": fsutil.sha256_file(path)}
    fsutil.write_json_atomic(folder / CHECKPOINT_MANIFEST, {"files": files})
