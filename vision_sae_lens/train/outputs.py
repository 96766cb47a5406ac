"""What a training run leaves behind: the members of a group, their final SAELens folders and results.

A :class:`Member` is one SAE of a group (its config, folders, trainer, history); :class:`RunContext` is what
the group's members share (store, held-out split, normalisation, model and images for the downstream
metric). :func:`prepare_folder` checks a member's folders before training, :func:`finish_member` writes a member's final folder (vision facts in ``cfg.json`` metadata,
``eval.json``, ``train_config.json``, ``split.json``; assembled in a temp folder, sealed, renamed into
place) and :func:`load_result` reads a folder back as a :class:`TrainRun`.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_lens import SAE, SAETrainer, TrainingSAE

from vision_sae_lens import fsutil
from vision_sae_lens.errors import TrainingError
from vision_sae_lens.metadata import VisionFacts
from vision_sae_lens.normalization import InputNormalization
from vision_sae_lens.train import checkpoint as ckpt
from vision_sae_lens.train.config import TrainConfig, resolve_device
from vision_sae_lens.train.evaluate import evaluate_run
from vision_sae_lens.train.feed import Split, store_preprocessing
from vision_sae_lens.train.resume import run_settings

if TYPE_CHECKING:
    from vision_sae_lens.backbones import HookedSAEViT
    from vision_sae_lens.contracts import ActivationStoreReader
    from vision_sae_lens.train.downstream import DownstreamImages

logger = logging.getLogger(__name__)


@dataclass
class TrainRun:
    """One trained SAE: where it is, the SAE itself, and its evaluation report."""

    name: str
    config: TrainConfig
    path: Path
    """SAELens folder (``SAE.load_from_disk(path)``)."""
    sae: SAE
    """The inference SAE, loaded back from ``path``."""
    report: dict[str, Any]
    """Contents of ``eval.json``."""
    training_sae: TrainingSAE | None = None
    """The training SAE at the end of training (normalisation folded); None when the run was
    already finished and only loaded."""
    n_steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    """Per ``log_every`` steps: step, loss, l0, nmse."""
    train_seconds: float = 0.0
    """Wall time of the training loop up to this SAE's last step (shared by a group; no evaluation)."""


class Member:
    """One SAE of a group: its config, folders, trainer and what it has logged."""

    def __init__(self, cfg: TrainConfig, name: str, out: Path) -> None:
        self.cfg, self.name = cfg, name
        self.folder = out / name
        self.ckpt_root = out / "checkpoints" / name
        self.trainer: SAETrainer | None = None
        """Built when the group starts (or resumes) training; see :attr:`live`."""
        self.history: list[dict[str, float]] = []
        self.wandb_run: Any = None
        self.result: TrainRun | None = None
        self.train_seconds = 0.0
        self.step_seconds = 0.0
        """How long this SAE's last step took (the longest start first when SAEs step side by side)."""

    @property
    def live(self) -> SAETrainer:
        """The trainer of a member that is training (an invariant of the group loop)."""
        assert self.trainer is not None, f"{self.name}: no trainer built yet"
        return self.trainer

    @property
    def done(self) -> TrainRun:
        """The result of a member that finished (an invariant once the group's run returns)."""
        assert self.result is not None, f"{self.name}: no result yet"
        return self.result


@dataclass
class RunContext:
    """What the members of one group share."""

    store: ActivationStoreReader
    """The group's store (an ``ActivationStore``, or an object with its members: ``open_store``)."""
    split: Split
    fingerprint: str
    tokens: str
    normalization: InputNormalization | None
    device: str
    model: HookedSAEViT | None = None
    """A ``HookedSAEViT`` for the downstream metric (with ``images``), or None."""
    images: DownstreamImages | None = None
    progress: bool = True


def vision_facts(ctx: RunContext, m: Member) -> VisionFacts:
    """The vision facts written into ``m``'s ``cfg.json`` metadata (at a checkpoint or at the end)."""
    store = ctx.store
    return VisionFacts(
        backbone=store.backbone_id,
        hook_name=m.cfg.site,
        tokens=ctx.tokens,
        layout=store.layout,
        preprocessing=store_preprocessing(store),
        dataset={**dict(store.dataset or {}), "held_out": held_out_summary(ctx.split)},
        store_fingerprint=ctx.fingerprint or None,
        training_tokens=int(m.live.n_training_samples),
        backbone_weights_file=store.metadata.get("backbone_weights_file"),
        input_normalization=None if ctx.normalization is None else ctx.normalization.to_metadata(),
    )


def progress_record(ctx: RunContext, m: Member) -> dict[str, Any]:
    """What a checkpoint and a finished folder record about how far ``m`` got, and on what data."""
    return {
        "n_training_steps": m.live.n_training_steps,
        "n_training_samples": m.live.n_training_samples,
        "store_fingerprint": ctx.fingerprint,
        "data_seed": m.cfg.data_seed,
        "batch_size": m.cfg.batch_size,
        "settings": run_settings(m.cfg, ctx.fingerprint),
    }


def prepare_folder(ctx: RunContext, m: Member, *, resume: bool, overwrite: bool) -> bool:
    """Check (or, with ``overwrite``, clear) ``m``'s output folders before training; True when the member is
    already finished (``resume``) and only needs loading, which this does."""
    exists = m.folder.exists() and any(m.folder.iterdir()) or bool(ckpt.list_checkpoints(m.ckpt_root))
    if overwrite:  # only folders this package created: never a user's directory
        fsutil.remove_own_folder(m.folder)
        fsutil.remove_own_folder(m.ckpt_root)
    elif m.folder.exists() and any(m.folder.iterdir()) and not ckpt.is_own_sae_folder(m.folder):
        raise TrainingError(
            f"{m.folder} exists and was not written by vision_sae_lens; it is left alone. Choose another run "
            "name or --out-dir (or move that folder away)."
        )
    elif exists and not resume:
        raise TrainingError(
            f"{m.folder} already holds output of run {m.name!r}; pass resume=True (--resume) to continue it "
            "or overwrite=True (--overwrite) to start again."
        )
    if resume and m.folder.exists() and any(m.folder.iterdir()) and not ckpt.is_finished(m.folder):
        raise TrainingError(
            f"{m.folder} holds an SAE folder that is not complete (no checksums.json / train_state.json); "
            "pass --overwrite to train it again."
        )
    if resume and ckpt.is_finished(m.folder):
        ckpt.check_finished_settings(m.folder, m.cfg, ctx.fingerprint)
        logger.info("run %r is already finished in %s; loading it", m.name, m.folder)
        m.result = load_result(ctx, m, training_sae=None, n_steps=m.cfg.n_steps)
        return True
    return False


def finish_member(ctx: RunContext, m: Member) -> None:
    """Write ``m``'s final SAELens folder (never seen half written), evaluate it and set ``m.result``."""
    trainer = m.live
    trainer.set_final_sae_metadata()
    tmp = fsutil.temp_folder(m.folder)
    try:
        ckpt.write_inference_folder(
            trainer, tmp, vision_facts(ctx, m), fold_in_place=True, normalization=ctx.normalization
        )
        fsutil.write_json_atomic(tmp / "train_config.json", m.cfg.to_dict())
        fsutil.write_json_atomic(tmp / "split.json", ctx.split.describe())
        m.result = load_result(ctx, m, training_sae=trainer.sae, n_steps=trainer.n_training_steps, path=tmp)
        ckpt.mark_finished(tmp, progress_record(ctx, m))
        fsutil.seal_sae_folder(tmp)
        fsutil.replace_folder(tmp, m.folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    m.result.path = m.folder
    warn_poor_result(m.name, m.result.report)
    if m.wandb_run is not None:
        m.wandb_run.summary.update({k: v for k, v in m.result.report.items() if isinstance(v, (int, float))})


def load_result(
    ctx: RunContext, m: Member, *, training_sae: TrainingSAE | None, n_steps: int, path: Path | None = None
) -> TrainRun:
    """``m``'s SAE folder (``path``, or its final folder) as a :class:`TrainRun`; evaluated unless it is a
    finished run that already holds its ``eval.json``."""
    folder = path or m.folder
    sae = ckpt.open_sae_folder(folder, device=ctx.device, require_checksums=path is None)
    report_path = folder / "eval.json"
    if report_path.exists() and training_sae is None:
        report = fsutil.read_json(report_path)
    else:
        report = evaluate_run(
            sae,
            m.cfg,
            store=ctx.store,
            split=ctx.split,
            name=m.name,
            model=ctx.model,
            images=ctx.images,
            out_dir=folder,
            progress=ctx.progress,
        )
    return TrainRun(
        name=m.name,
        config=m.cfg,
        path=m.folder,
        sae=sae,
        report=report,
        training_sae=training_sae,
        n_steps=n_steps,
        history=m.history,
        train_seconds=m.train_seconds,
    )


def read_finished_run(cfg: TrainConfig, name: str, out: Path) -> TrainRun:
    """The finished run ``name`` under ``out`` as a :class:`TrainRun` (one another rank of the job trained)."""
    folder = out / name
    sae = ckpt.open_sae_folder(folder, device=resolve_device(cfg.device), require_checksums=True)
    return TrainRun(
        name=name,
        config=cfg,
        path=folder,
        sae=sae,
        report=fsutil.read_json(folder / "eval.json"),
        n_steps=cfg.n_steps,
    )


def sweep_summary(runs: list[TrainRun]) -> list[dict[str, Any]]:
    """One row per run of a sweep (``sweep.json``): name, architecture and the headline metrics."""
    keys = ("l0", "nmse", "explained_variance", "dead_fraction")
    rows = []
    for run in runs:
        report = run.report
        row = {"name": run.name, "architecture": run.config.architecture, **{k: report.get(k) for k in keys}}
        row["fraction_recovered"] = (report.get("downstream") or {}).get("fraction_recovered")
        rows.append(row)
    return rows


DEAD_WARNING_FRACTION = 0.2
"""Dead fraction above which the end of training warns."""


def warn_short_window(m: Member) -> None:
    """Warn when ``m`` trains fewer steps than its dead-latent window: its dead-latent loss would never act."""
    # L1 and gated SAEs' losses never read the window; the others' dead-latent losses act only through it
    if m.cfg.architecture not in ("standard", "gated") and m.cfg.n_steps < m.cfg.dead_window:
        logger.warning(
            "run %r trains %d steps, fewer than its dead_feature_window of %d: no latent will ever count as "
            "dead in training, so its dead-latent loss (TopK's AuxK, JumpReLU's pre-activation loss) never "
            "revives any. Lower dead_feature_window (default: 1%% of the steps) or train longer.",
            m.name,
            m.cfg.n_steps,
            m.cfg.dead_feature_window,
        )


def warn_poor_result(name: str, report: dict[str, Any]) -> None:
    """Warn when a finished run reconstructs worse than the mean, or has many dead latents."""
    nmse, dead = report.get("nmse"), report.get("dead_fraction")
    if nmse is not None and nmse > 1:
        logger.warning(
            "run %r: held-out NMSE %.3f > 1, worse than predicting the mean activation; lower lr, add warm-up "
            "or enable normalize_activations='expected_average_only_in'.",
            name,
            nmse,
        )
    if dead is not None and dead > DEAD_WARNING_FRACTION:
        logger.warning(
            "run %r: %.0f%% of latents are dead (never fire on %s store rows); train longer, lower "
            "dead_feature_window, use decoder_init_norm=1.0 for TopK SAEs, or shrink d_sae.",
            name,
            100 * dead,
            f"{report.get('density_rows', 0):,}",
        )


def held_out_summary(split: Split) -> dict[str, Any]:
    """The held-out draw without its image list (that is in ``split.json``)."""
    return {k: v for k, v in split.describe().items() if k != "eval_images"}
