"""One SAE's SAELens trainer, built from a :class:`TrainConfig`, and the one place its training step is chosen.

Every field of SAELens' ``SAETrainerConfig`` comes from the ``TrainConfig``; checkpoints, W&B and the data
stream are handled by ``train/trainer.py``, so SAELens' own are switched off. :func:`training_classes`
decides which step runs:

- on a CPU, the package's step: :class:`~vision_sae_lens.train.fast_trainer.FastSAETrainer` (fused Adam,
  boolean firing statistics) and the lean subclass of SAELens' training SAE
  (:mod:`~vision_sae_lens.train.lean_saes`: sparse TopK forward, lean AuxK and L1), 2.6-3.8x faster than
  SAELens' step on 2 cores, equal to it in losses and weights;
- on any other device (CUDA, MPS), SAELens' own ``SAETrainer`` and training class: there the dense products
  are cheap, and no gain of the package's step has been measured on a GPU;
- for one rank of a data-parallel job (``data_parallel``), on any device:
  :class:`~vision_sae_lens.train.data_parallel.DataParallelSAETrainer` (the CPU step's trainer with firing
  counts, gradients and loss reduced over ranks) and, for the BatchTopK family, the subclass that chooses
  its entries over the whole global batch.

Either way, with ``TrainConfig.auxk_relu`` (the default) a TopK-family SAE's AuxK loss decodes the dead
latents' ReLU'd pre-activations (:mod:`~vision_sae_lens.train.auxk`): a change of recipe, not of speed, so
it holds on every device and in data-parallel training.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from sae_lens import LoggingConfig, SAETrainer, TrainingSAE, TrainingSAEConfig

from vision_sae_lens.compat import SAETrainerConfig, get_sae_training_class, quiet_norm_estimate
from vision_sae_lens.train.auxk import with_auxk_relu
from vision_sae_lens.train.config import TrainConfig
from vision_sae_lens.train.data_parallel import DataParallelSAETrainer, data_parallel_class
from vision_sae_lens.train.fast_trainer import FastSAETrainer
from vision_sae_lens.train.lean_saes import lean_training_class
from vision_sae_lens.train.ranks import Ranks


def training_classes(
    sae_cls: type[TrainingSAE], device: str, *, auxk_relu: bool = False, data_parallel: bool = False
) -> tuple[type[TrainingSAE], type[SAETrainer]]:
    """The training-SAE class and trainer class that train SAELens' ``sae_cls`` on ``device``: the package's
    CPU step (CPU only) or SAELens' own (everywhere else); with ``auxk_relu``, the AuxK loss on ReLU'd
    pre-activations (:func:`~vision_sae_lens.train.auxk.with_auxk_relu`); with ``data_parallel``, their
    data-parallel versions (one rank's share of each global batch)."""
    on_cpu = torch.device(device).type == "cpu"
    chosen = lean_training_class(sae_cls) if on_cpu else sae_cls
    if auxk_relu:
        chosen = with_auxk_relu(chosen)
    if data_parallel:
        return data_parallel_class(chosen), DataParallelSAETrainer
    return chosen, (FastSAETrainer if on_cpu else SAETrainer)


def build_trainer(cfg: TrainConfig, device: str, *, ranks: Ranks | None = None) -> SAETrainer:
    """A fresh trainer (and its SAE, initialised from ``cfg.seed``) for one run of ``cfg`` on ``device``; with
    data-parallel ``ranks``, this rank's trainer of the job's SAE (starting from rank 0's weights)."""
    sae_cfg = copy_sae_config(cfg.sae, device=device)
    torch.manual_seed(cfg.seed)
    data_parallel = ranks is not None and ranks.data_parallel
    sae_cls, trainer_cls = training_classes(
        get_sae_training_class(sae_cfg.architecture())[0],
        device,
        auxk_relu=cfg.auxk_relu,
        data_parallel=data_parallel,
    )
    sae = sae_cls(sae_cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=cfg.n_steps * cfg.rows_per_step,
        train_batch_size_samples=cfg.rows_per_step,
        lr=cfg.lr,
        lr_end=cfg.lr_end,
        lr_scheduler_name=cfg.lr_scheduler,
        lr_warm_up_steps=cfg.lr_warm_up_steps,
        lr_decay_steps=cfg.lr_decay_steps,
        n_restart_cycles=cfg.n_restart_cycles,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        device=device,
        autocast=cfg.autocast,
        dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=cfg.feature_sampling_window,
        n_checkpoints=0,  # checkpoints are written by the training loop, on the group's schedule
        checkpoint_path=None,
        save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False),  # W&B runs are managed by the training loop, one per SAE
        n_batches_for_norm_estimate=cfg.n_batches_for_norm_estimate,
    )
    sae.to(device)
    extra = {"ranks": ranks} if data_parallel else {}
    return trainer_cls(cfg=trainer_cfg, sae=sae, data_provider=iter(()), **extra)


def copy_sae_config(sae_cfg: TrainingSAEConfig, *, device: str) -> TrainingSAEConfig:
    """A private copy of the user's SAELens config (its metadata object is mutated by training)."""
    d = sae_cfg.to_dict()
    d["device"] = device
    d.pop("metadata", None)
    return type(sae_cfg).from_dict(d)


def init_b_dec(trainer: SAETrainer, cfg: TrainConfig, batch: torch.Tensor) -> None:
    """``b_dec_init='mean'``: the decoder bias starts at the mean of the first training batch (as sparsify; of
    the whole global batch in a data-parallel job)."""
    sae = trainer.sae
    if cfg.b_dec_init != "mean" or not hasattr(sae, "b_dec"):
        return
    with torch.no_grad():
        mean = trainer.activation_scaler(batch.float()).mean(0)
        if isinstance(trainer, DataParallelSAETrainer):
            mean = trainer.mean_over_ranks(mean)
        sae.b_dec.data = mean.to(sae.b_dec.dtype)


SCALER_ESTIMATES = ("expected_average_only_in", "covariance_whitening")
"""SAELens normalisations whose statistics the trainer estimates before the first step."""


def needs_scaler_estimate(trainer: SAETrainer) -> bool:
    """Whether ``trainer``'s SAE normalises its input by statistics not estimated yet (a checkpoint's restored
    statistics are kept: the weights were trained against them)."""
    scaler = trainer.activation_scaler
    return trainer.sae.cfg.normalize_activations in SCALER_ESTIMATES and (
        scaler.scaling_factor is None and scaler.whitening is None
    )


def estimate_scaler(
    trainer: SAETrainer, cfg: TrainConfig, batches: Iterator[torch.Tensor], *, progress: bool
) -> tuple[float | None, Any]:
    """SAELens' estimate of the activation scaling (or whitening) of ``trainer`` from ``batches`` (the run's own
    seeded estimation batches); returns the statistics, the whitening on the CPU (to send to other ranks)."""
    scaler, sae = trainer.activation_scaler, trainer.sae
    estimate = (
        scaler.estimate_scaling_factor
        if sae.cfg.normalize_activations == "expected_average_only_in"
        else scaler.estimate_whitening
    )
    device = sae.W_dec.device
    with quiet_norm_estimate(progress):
        estimate(
            d_in=sae.cfg.d_in,
            data_provider=(b.to(device) for b in batches),
            n_batches_for_norm_estimate=cfg.n_batches_for_norm_estimate,
        )
    whitening = scaler.whitening
    return scaler.scaling_factor, None if whitening is None else whitening.to(torch.device("cpu"))
