"""Host-to-device copies that overlap the compute: pinned host buffers and copies issued ahead (CUDA only).

A batch read from a store (or preprocessed images) lives in host memory. On CUDA a copy from pageable memory
is synchronous; from pinned (page-locked) memory it is a DMA that runs beside the GPU's work. So the batches
are pinned where they are made (a reader or loader thread, :func:`pinned`), and :func:`device_batches` issues
the copy of batch i+1 on a side stream before batch i is handed to the step, the step's stream waiting on an
event only for the batch it uses. On a CPU (and MPS) none of this applies: batches pass through unchanged.
Which path runs is decided by :func:`pins_for`, a function of the device alone (tested on a CPU).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch


def pins_for(device: str | torch.device) -> bool:
    """Whether host batches bound for ``device`` should be pinned: a CUDA device, with CUDA present."""
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def pinned(tensor: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """``tensor`` in pinned host memory when it is bound for a CUDA ``device`` (else as it is)."""
    return tensor.pin_memory() if tensor.device.type == "cpu" and pins_for(device) else tensor


def device_batches(batches: Iterable[torch.Tensor], device: str | torch.device) -> Iterator[torch.Tensor]:
    """``batches`` on ``device``. On CUDA each copy is issued on a side stream one batch ahead (overlapping
    the step on the batch before); elsewhere each batch is moved when it is handed out (no copy on a CPU)."""
    target = torch.device(device)
    if not pins_for(target):
        for batch in batches:
            yield batch.to(target)
        return
    copies = torch.cuda.Stream(device=target)
    ahead: tuple[torch.Tensor, torch.Tensor, torch.cuda.Event] | None = None
    for host in batches:
        with torch.cuda.stream(copies):
            on_device = host.to(target, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(copies)
        if ahead is not None:
            yield _when_ready(*ahead)
        ahead = (host, on_device, ready)  # the host tensor is kept until its copy has been waited for
    if ahead is not None:
        yield _when_ready(*ahead)


def _when_ready(host: torch.Tensor, on_device: torch.Tensor, ready: torch.cuda.Event) -> torch.Tensor:
    step_stream = torch.cuda.current_stream(on_device.device)
    step_stream.wait_event(ready)
    # Made on the side stream, used on the step's: the caching allocator must not reuse its memory before the
    # step's stream is done with it.
    on_device.record_stream(step_stream)
    return on_device
