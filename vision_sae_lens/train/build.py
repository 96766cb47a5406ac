"""One SAE's SAELens trainer, built from a :class:`TrainConfig`, and the one place its training step is chosen.

Every field of SAELens' ``SAETrainerConfig`` comes from the ``TrainConfig``; checkpoints, W&B and the data
stream are handled by ``train/trainer.py``, so SAELens' own are switched off. :func:`training_classes`
decides which step runs:

- on a CPU, the package's step: :class:`~vision_sae_lens.train.fast_trainer.FastSAETrainer` (fused Adam,
  boolean firing statistics) and the lean subclass of SAELens' training SAE
  (:mod:`~vision_sae_lens.train.lean_saes`: sparse TopK forward, lean AuxK and L1), 2.6-3.8x faster than
  SAELens' step on 2 cores, equal to it in losses and weights;
- on any other device (CUDA, MPS), SAELens' own ``SAETrainer`` and training class: there the dense products
  are cheap, and no gain of the package's step has been measured on a GPU.

Either way, with ``TrainConfig.auxk_relu`` (the default) a TopK-family SAE's AuxK loss decodes the dead
latents' ReLU'd pre-activations (:mod:`~vision_sae_lens.train.auxk`): a change of recipe, not of speed, so
it holds on every device.
"""

from __future__ import annotations

import torch
from sae_lens import LoggingConfig, SAETrainer, TrainingSAE, TrainingSAEConfig

from vision_sae_lens.compat import SAETrainerConfig, get_sae_training_class
from vision_sae_lens.train.auxk import with_auxk_relu
from vision_sae_lens.train.config import TrainConfig
from vision_sae_lens.train.fast_trainer import FastSAETrainer
from vision_sae_lens.train.lean_saes import lean_training_class


def training_classes(
    sae_cls: type[TrainingSAE], device: str, *, auxk_relu: bool = False
) -> tuple[type[TrainingSAE], type[SAETrainer]]:
    """The training-SAE class and trainer class that train SAELens' ``sae_cls`` on ``device``: the package's
    CPU step (CPU only) or SAELens' own (everywhere else); with ``auxk_relu``, the AuxK loss on ReLU'd
    pre-activations (:func:`~vision_sae_lens.train.auxk.with_auxk_relu`)."""
    if torch.device(device).type != "cpu":
        chosen, trainer_cls = sae_cls, SAETrainer
    else:
        chosen, trainer_cls = lean_training_class(sae_cls), FastSAETrainer
    return (with_auxk_relu(chosen) if auxk_relu else chosen), trainer_cls


def build_trainer(cfg: TrainConfig, device: str) -> SAETrainer:
    """A fresh trainer (and its SAE, initialised from ``cfg.seed``) for one run of ``cfg`` on ``device``."""
    sae_cfg = copy_sae_config(cfg.sae, device=device)
    torch.manual_seed(cfg.seed)
    sae_cls, trainer_cls = training_classes(
        get_sae_training_class(sae_cfg.architecture())[0], device, auxk_relu=cfg.auxk_relu
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
    trainer = trainer_cls(cfg=trainer_cfg, sae=sae, data_provider=iter(()))
    sae.to(device)
    return trainer


def copy_sae_config(sae_cfg: TrainingSAEConfig, *, device: str) -> TrainingSAEConfig:
    """A private copy of the user's SAELens config (its metadata object is mutated by training)."""
    d = sae_cfg.to_dict()
    d["device"] = device
    d.pop("metadata", None)
    return type(sae_cfg).from_dict(d)


def init_b_dec(trainer: SAETrainer, cfg: TrainConfig, batch: torch.Tensor) -> None:
    """``b_dec_init='mean'``: the decoder bias starts at the mean of the first training batch (as sparsify)."""
    sae = trainer.sae
    if cfg.b_dec_init != "mean" or not hasattr(sae, "b_dec"):
        return
    with torch.no_grad():
        sae.b_dec.data = trainer.activation_scaler(batch.float()).mean(0).to(sae.b_dec.dtype)
