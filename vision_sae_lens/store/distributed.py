"""torch.distributed for recording (and training): joining the job, and the few CPU collectives we need.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the recorder joins a process group; coordination (settings
check, "all shards done", merge) only moves small Python objects, so it always runs on a gloo group,
also when the model runs on CUDA. Shard k belongs to rank ``k % world_size``: the slice is a pure
function of the shard index, so the merged store equals a single-process one byte for byte. Training
joins the same way (``train/ranks.py``), with a default group that reduces CUDA tensors over NCCL.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass
class DistContext:
    """This process's place in the recording job."""

    rank: int = 0
    """Rank of this process (0 when not distributed)."""
    world_size: int = 1
    """Number of recording processes."""
    local_rank: int = 0
    """Rank on this node (selects the CUDA device)."""
    group: Any = None
    """gloo process group for coordination (None when not distributed)."""
    owns_default_group: bool = False
    """Whether we created the default process group (and must destroy it)."""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def owns_shard(self, shard: int) -> bool:
        """Whether this rank records shard ``shard``."""
        return shard % self.world_size == self.rank

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.group)

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        box: list[Any] = [None] * self.world_size
        dist.all_gather_object(box, obj, group=self.group)
        return box

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def close(self) -> None:
        if self.owns_default_group and dist.is_initialized():
            dist.destroy_process_group()


def join_distributed(timeout_hours: float = 12.0, *, backend: str = "gloo") -> DistContext:
    """Join (or reuse) the torchrun process group; a single-process context outside torchrun.

    ``timeout_hours`` bounds every collective (recording's ranks meet only at the end, which can take
    hours); ``backend`` is the default group's (``"cpu:gloo,cuda:nccl"`` also reduces CUDA tensors).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    owns = False
    timeout = timedelta(hours=timeout_hours)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout)
        owns = True
    group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
    ctx = DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        group=group,
        owns_default_group=owns,
    )
    logger.info("joined torch.distributed as rank %d of %d", ctx.rank, ctx.world_size)
    return ctx


def default_device(ctx: DistContext) -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", ctx.local_rank % torch.cuda.device_count())
    return torch.device("cpu")
