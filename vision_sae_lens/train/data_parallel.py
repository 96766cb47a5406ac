"""Data-parallel training of one SAE over the ranks of a ``torchrun`` job (``distributed="ddp"``).

Each global batch of B rows (the one a single process would read) is cut into ``world_size`` equal slices;
rank r reads the r-th slice of every batch of the same shuffled order (``shuffled(part=(r, n))``). Every
SAELens training loss is a mean over the batch's rows, so the mean of the ranks' gradients, all-reduced each
step, is the single-process gradient. What is not a per-row mean is reduced explicitly, so the run equals a
single-process run with the same global batch up to the order of float sums:

- the dead-latent window and firing statistics (``act_freq_scores``, ``n_forward_passes_since_fired``, which
  AuxK's dead mask and scale come from): each latent's firing count, summed over ranks;
- BatchTopK's choice (the k x B largest activations of the whole batch): every rank's own k x B largest are
  all-gathered (small: k x B values a rank), the global cut is the k x B-th largest of those, and each rank
  keeps its entries at or above it; the running ``topk_threshold`` (the smallest kept activation) takes the
  minimum over ranks. Matryoshka BatchTopK likewise;
- the decoder bias's init from the first batch's mean: the mean over all ranks' rows;
- the activation-normalisation estimate: made on rank 0 from the batches a single process reads, then sent;
- the loss and its parts (the NaN check, logging): the mean over ranks.

Weights start as rank 0's and stay equal on every rank (the same reduced gradients, the same optimizer), so
rank 0 alone writes checkpoints and final folders. :func:`vision_sae_lens.train.build.training_classes`
chooses these classes; on a GPU the step is :class:`~vision_sae_lens.train.fast_trainer.FastSAETrainer`'s
(SAELens' step with a fused Adam) on SAELens' own training SAEs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from sae_lens import BatchTopKTrainingSAE, TrainingSAE

from vision_sae_lens.compat import BatchTopK, SAETrainerConfig, TrainStepOutput
from vision_sae_lens.errors import ConfigError
from vision_sae_lens.train.fast_trainer import FastSAETrainer
from vision_sae_lens.train.ranks import Ranks

PER_ROW_ARCHITECTURES = ("standard", "topk", "jumprelu", "gated")
"""Training architectures whose every loss and statistic is a mean or count over rows: the reduced gradients
and firing counts alone make their data-parallel step the single-process one."""


class DataParallelSAETrainer(FastSAETrainer):
    """:class:`~vision_sae_lens.train.fast_trainer.FastSAETrainer` for one rank of a data-parallel job: its
    batch is this rank's slice of the global batch (``cfg.train_batch_size_samples`` rows over all ranks).
    Firing counts, gradients and the reported loss are reduced over ranks; the SAE starts from rank 0's
    weights."""

    def __init__(
        self,
        cfg: SAETrainerConfig,
        sae: TrainingSAE,
        data_provider: Iterator[torch.Tensor],
        *,
        ranks: Ranks,
        **kwargs: Any,
    ) -> None:
        super().__init__(cfg=cfg, sae=sae, data_provider=data_provider, **kwargs)
        self.ranks = ranks
        if isinstance(sae, BatchTopKAcrossRanks):
            sae.use_ranks(ranks)
        with torch.no_grad():
            for tensor in _state_tensors(sae):
                ranks.collective(dist.broadcast, tensor, src=0)

    def step(self, batch: torch.Tensor) -> TrainStepOutput:
        """SAELens' step on this rank's slice; ``out.loss`` and ``out.losses`` are the whole batch's."""
        out = super().step(batch)
        names = list(out.losses)
        device = out.loss.device
        parts = torch.stack(
            [out.loss.detach(), *(torch.as_tensor(out.losses[n], device=device).detach() for n in names)]
        )
        parts = self.mean_over_ranks(parts.float())
        out.loss = parts[0]
        out.losses = {n: parts[i + 1] for i, n in enumerate(names)}
        return out

    def rows_in_step(self, batch: torch.Tensor) -> int:
        return batch.shape[0] * self.ranks.world_size

    @torch.no_grad()
    def firing_counts(self, acts: torch.Tensor) -> torch.Tensor:
        counts = super().firing_counts(acts)
        self.ranks.collective(dist.all_reduce, counts)
        return counts

    @torch.no_grad()
    def reduce_gradients(self) -> None:
        for param in self.sae.parameters():
            if param.grad is not None:
                self.ranks.collective(dist.all_reduce, param.grad)
                param.grad.div_(self.ranks.world_size)

    @torch.no_grad()
    def mean_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over ranks (in place; equal-sized slices make it the whole batch's mean)."""
        self.ranks.collective(dist.all_reduce, tensor)
        return tensor.div_(self.ranks.world_size)

    @torch.no_grad()
    def sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over ranks (in place)."""
        self.ranks.collective(dist.all_reduce, tensor)
        return tensor


class DataParallelBatchTopK(BatchTopK):
    """SAELens' ``BatchTopK(k)`` over the whole global batch: of ``relu(x)`` on every rank, the
    ``int(k * rows * world_size)`` largest entries are kept (entries tied with the cut are all kept, where
    ``torch.topk`` keeps some of them: a measure-zero difference on real activations)."""

    def __init__(self, k: float) -> None:
        super().__init__(k)
        self.ranks: Ranks | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ranks = self.ranks
        if ranks is None or ranks.world_size == 1:
            return super().forward(x)
        acts = x.relu()
        flat = acts.flatten()
        wanted = int(self.k * acts.shape[:-1].numel() * ranks.world_size)
        with torch.no_grad():
            local = largest_entries(flat, wanted)
            gathered = [torch.empty_like(local) for _ in range(ranks.world_size)]
            ranks.collective(dist.all_gather, gathered, local)
        return keep_from_cut(flat, global_cut(gathered, wanted)).view(acts.shape)


def largest_entries(flat: torch.Tensor, wanted: int) -> torch.Tensor:
    """A rank's share of the global choice: its own ``wanted`` largest entries (all of them when fewer)."""
    return torch.topk(flat.detach(), min(wanted, flat.numel()), sorted=False).values


def global_cut(largest_per_rank: list[torch.Tensor], wanted: int) -> torch.Tensor | None:
    """The ``wanted``-th largest entry of the whole batch, from every rank's :func:`largest_entries` (each holds
    the rank's ``wanted`` largest, or all its entries when it has fewer); None when the batch has fewer
    entries than that (every positive entry is kept)."""
    everyone = torch.cat(largest_per_rank)
    if wanted < 1:
        return everyone.new_tensor(float("inf"))
    if wanted > everyone.numel():
        return None
    return torch.topk(everyone, wanted, sorted=False).values.min()


def keep_from_cut(flat: torch.Tensor, cut: torch.Tensor | None) -> torch.Tensor:
    """Of ``relu`` activations ``flat``, the positive entries at or above ``cut`` (gradients flow to those)."""
    keep = flat > 0 if cut is None else (flat >= cut) & (flat > 0)
    return torch.where(keep, flat, 0.0)


class BatchTopKAcrossRanks(BatchTopKTrainingSAE):
    """Mixin for a BatchTopK-family training SAE (SAELens' or the lean one): its choice of entries and its
    running ``topk_threshold`` are those of the whole global batch, once :meth:`use_ranks` has been called."""

    topk_threshold: torch.Tensor

    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return DataParallelBatchTopK(self.cfg.k)

    def use_ranks(self, ranks: Ranks) -> None:
        """Reduce over ``ranks`` from now on."""
        self._ranks = ranks
        assert isinstance(self.activation_fn, DataParallelBatchTopK)  # set by get_activation_fn
        self.activation_fn.ranks = ranks

    @torch.no_grad()
    def update_topk_threshold(self, acts_topk: torch.Tensor) -> None:
        """SAELens' ``BatchTopKTrainingSAE.update_topk_threshold`` with the smallest positive activation of
        the whole batch (``compat``-free: the mirrored lines are probed in ``train/mirrors.py``)."""
        ranks: Ranks | None = getattr(self, "_ranks", None)
        if ranks is None or ranks.world_size == 1:
            return super().update_topk_threshold(acts_topk)
        positive = acts_topk[acts_topk > 0]
        lowest = positive.min() if positive.numel() else acts_topk.new_tensor(float("inf"))
        lowest = lowest.to(self.topk_threshold.dtype).reshape(1)
        ranks.collective(dist.all_reduce, lowest, op=dist.ReduceOp.MIN)
        lr = self.cfg.topk_threshold_lr
        with torch.autocast(self.topk_threshold.device.type, enabled=False):
            if torch.isfinite(lowest).all():
                self.topk_threshold = (1 - lr) * self.topk_threshold + lr * lowest[0]


_DATA_PARALLEL_CLASSES: dict[type[TrainingSAE], type[TrainingSAE]] = {}
"""Made once per class, so every call (and every rank) trains the same class."""


def data_parallel_class(cls: type[TrainingSAE]) -> type[TrainingSAE]:
    """The class that trains like ``cls`` on a slice of each global batch: for the BatchTopK family (SAELens'
    classes, the lean CPU ones and their ReLU-AuxK variants alike) its subclass choosing over the whole global
    batch, made once per class; ``cls`` itself where every loss is per row
    (:func:`check_data_parallel` refuses the rest before training)."""
    if not issubclass(cls, BatchTopKTrainingSAE):
        return cls
    if cls not in _DATA_PARALLEL_CLASSES:
        made = type(f"DataParallel{cls.__name__}", (BatchTopKAcrossRanks, cls), {"__module__": __name__})
        _DATA_PARALLEL_CLASSES[cls] = made
    return _DATA_PARALLEL_CLASSES[cls]


def check_data_parallel(cfgs: list[Any], names: list[str], world_size: int) -> None:
    """Refuse (ConfigError, before any work) a run that cannot train data-parallel on ``world_size`` ranks: an
    architecture whose data-parallel step is not known to equal one process's, or a batch that does not split
    into equal slices."""
    known = (*PER_ROW_ARCHITECTURES, "batchtopk", "matryoshka_batchtopk")
    for cfg, name in zip(cfgs, names, strict=True):
        if cfg.architecture not in known:
            raise ConfigError(
                f"run {name!r}: architecture {cfg.architecture!r} cannot train data-parallel (--distributed ddp "
                f"supports {', '.join(known)}); train it in one process or as one SAE of a sweep over ranks "
                "(--distributed sweep)."
            )
        if cfg.rows_per_step % world_size:
            raise ConfigError(
                f"run {name!r}: batch_size {cfg.rows_per_step} does not split into {world_size} equal slices, one "
                f"per rank; choose a batch_size divisible by {world_size} (the global batch of the run)."
            )


@torch.no_grad()
def global_step_metrics(out: TrainStepOutput, trainer: DataParallelSAETrainer) -> dict[str, float]:
    """Loss, L0 and NMSE of the whole global batch, from sums over every rank's slice."""
    sae_in = out.sae_in.float()
    acts = out.feature_acts.to_dense() if out.feature_acts.is_sparse else out.feature_acts
    err, squares, fired = (out.sae_out.float() - sae_in).pow(2).sum(), sae_in.pow(2).sum(), (acts != 0).sum()
    sums = trainer.sum_over_ranks(torch.cat([torch.stack([err, squares, fired.float()]), sae_in.sum(0)]))
    rows = sae_in.shape[0] * trainer.ranks.world_size
    variance = (sums[1] - sums[3:].pow(2).sum() / rows).clamp_min(1e-12)
    return {"loss": float(out.loss), "l0": float(sums[2]) / rows, "nmse": float(sums[0] / variance)}


def _state_tensors(sae: TrainingSAE) -> Iterable[torch.Tensor]:
    yield from sae.parameters()
    yield from sae.buffers()
