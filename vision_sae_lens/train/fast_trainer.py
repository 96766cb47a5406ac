"""``FastSAETrainer``: SAELens' ``SAETrainer`` with a cheaper step, for training on a CPU.

On a CPU ``SAETrainer.step`` costs more than the SAE's own work: a non-fused Adam, a float copy of the whole
(batch, d_sae) activation matrix for the firing statistics, a reference to the pre-activations held through
the backward pass. The subclass keeps everything else of ``SAETrainer`` (schedules, activation scaler,
dead-latent statistics, checkpoint state, ``fit``) and changes only its optimizer (the same Adam, fused)
and its public ``step``, which follows SAELens' ``step`` and private ``_train_step`` line for line
(``compat`` probes that source). Same seed and batches give SAELens' weights, statistics and schedules
(``tests/train/test_train_step_equivalence.py``). :func:`vision_sae_lens.train.build.training_classes`
chooses it, on a CPU only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from sae_lens import SAETrainer, TrainingSAE

from vision_sae_lens.compat import (
    SAETrainerConfig,
    TrainStepInput,
    TrainStepOutput,
    get_lr_scheduler,
    is_logging_step,
)


class FastSAETrainer(SAETrainer):
    """``SAETrainer`` whose step uses a fused Adam (where the device has one), counts firing statistics on a
    boolean mask and frees the pre-activations before the backward pass. ``max_grad_norm``: the gradient
    clip (SAELens' fixed 1.0 by default; None skips it)."""

    def __init__(
        self,
        cfg: SAETrainerConfig,
        sae: TrainingSAE,
        data_provider: Iterator[torch.Tensor],
        *,
        max_grad_norm: float | None = 1.0,
        **kwargs: Any,  # SAETrainer's own (evaluator, save_checkpoint_fn)
    ) -> None:
        super().__init__(cfg=cfg, sae=sae, data_provider=data_provider, **kwargs)
        self.max_grad_norm = max_grad_norm
        self.fused_adam = self._use_fused_adam()
        """Whether the optimizer is the fused Adam (False: SAELens' own, on a device without one)."""

    def _use_fused_adam(self) -> bool:
        """SAELens' Adam and lr schedule, built as ``SAETrainer.__init__`` builds them, with ``fused=True``."""
        params = list(self.sae.parameters())
        if not all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params):
            return False
        cfg = self.cfg
        try:
            optimizer = torch.optim.Adam(
                params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), fused=True
            )
        except (RuntimeError, ValueError):  # a device without a fused Adam kernel keeps SAELens' own
            return False
        self.optimizer = optimizer
        self.lr_scheduler = get_lr_scheduler(
            cfg.lr_scheduler_name,
            lr=cfg.lr,
            optimizer=optimizer,
            warm_up_steps=cfg.lr_warm_up_steps,
            decay_steps=cfg.lr_decay_steps,
            training_steps=cfg.total_training_steps,
            lr_end=cfg.lr_end,
            num_cycles=cfg.n_restart_cycles,
        )
        return True

    def step(self, batch: torch.Tensor) -> TrainStepOutput:
        """SAELens' ``SAETrainer.step(batch)``; the returned output's ``hidden_pre`` is an empty tensor."""
        sae = self.sae
        batch = batch.to(sae.device)
        self.n_training_samples += self.rows_in_step(batch)
        sae_in = self.activation_scaler(batch)
        sae.train()
        with self.autocast_if_enabled:
            out = sae.training_forward_pass(
                step_input=TrainStepInput(
                    sae_in=sae_in,
                    dead_neuron_mask=self.dead_neurons,
                    coefficients=self.get_coefficients(),
                    n_training_steps=self.n_training_steps,
                    is_logging_step=is_logging_step(self),
                ),
            )
            with torch.no_grad():
                fired_d = self.firing_counts(out.feature_acts)
                self.n_forward_passes_since_fired += 1
                self.n_forward_passes_since_fired[fired_d > 0] = 0
                self.act_freq_scores += fired_d
                self.n_frac_active_samples += self.cfg.train_batch_size_samples
        # Nothing reads the pre-activations after the forward (SAELens' trainer, our logging). Where autograd
        # does not keep them (ReLU, TopK, BatchTopK), dropping the output's reference frees a (batch, d_sae)
        # tensor before the backward pass, whose peak is the run's peak memory.
        out.hidden_pre = out.hidden_pre.new_empty(0)
        out.loss.backward()
        self.reduce_gradients()
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_scheduler.step()
        for scheduler in self.coefficient_schedulers.values():
            scheduler.step()
        return out

    # What a data-parallel subclass (train/data_parallel.py) counts and reduces across ranks; one process here.
    def rows_in_step(self, batch: torch.Tensor) -> int:
        """Rows this step trains on (``batch``'s)."""
        return batch.shape[0]

    @torch.no_grad()
    def firing_counts(self, acts: torch.Tensor) -> torch.Tensor:
        """(d_sae,) int32: on how many rows of the step each latent fired."""
        # One boolean pass summed in int32: 2.4x faster on a CPU than a float copy summed twice
        return ((acts.to_dense() if acts.is_sparse else acts) != 0).sum(0, dtype=torch.int32)

    def reduce_gradients(self) -> None:
        """Nothing in one process: the gradients are the step's."""
