"""What the training loop shows and logs at each step: loss, L0 and NMSE, the progress bar, W&B runs."""

from __future__ import annotations

from typing import Any, Literal, cast

import torch

from vision_sae_lens.compat import TrainStepOutput
from vision_sae_lens.train.data_parallel import DataParallelSAETrainer, global_step_metrics
from vision_sae_lens.train.outputs import Member


@torch.no_grad()
def step_metrics(out: TrainStepOutput, trainer: Any = None) -> dict[str, float]:
    """Loss, L0 and NMSE of the step's batch (of the whole global batch in a data-parallel job)."""
    if isinstance(trainer, DataParallelSAETrainer):
        return global_step_metrics(out, trainer)
    sae_in = out.sae_in.float()
    err = (out.sae_out.float() - sae_in).pow(2).sum()
    var = (sae_in - sae_in.mean(0)).pow(2).sum().clamp_min(1e-12)
    acts = out.feature_acts.to_dense() if out.feature_acts.is_sparse else out.feature_acts
    l0 = (acts != 0).sum(-1).float().mean()  # counted on a boolean mask: no float copy of the activations
    return {"loss": float(out.loss), "l0": float(l0), "nmse": float(err / var)}


def postfix(active: list[Member]) -> str:
    """The progress bar's text: each member's last logged loss, L0 and NMSE."""
    parts = []
    for m in active:
        if m.history:
            h = m.history[-1]
            label = "" if len(active) == 1 else f"{m.name[:16]} "
            parts.append(f"{label}loss={h['loss']:.4g} L0={h['l0']:.1f} nmse={h['nmse']:.3f}")
    return " | ".join(parts)


def start_wandb(m: Member) -> None:
    """A W&B run for member ``m`` when its config names a project (``m.wandb_run``)."""
    if not m.cfg.wandb_project or m.cfg.wandb_mode == "disabled":
        return
    import wandb

    m.wandb_run = wandb.init(
        project=m.cfg.wandb_project,
        name=m.name,
        mode=cast(Literal["online", "offline", "disabled"], m.cfg.wandb_mode),
        config=m.cfg.to_dict(),
        reinit="create_new",
    )
