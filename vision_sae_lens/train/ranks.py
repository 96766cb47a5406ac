"""Training under ``torchrun``: which rank trains what, one hold on the output folder, and failures shared.

Under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`join_ranks` joins the job's process group (gloo; on GPUs
``cpu:gloo,cuda:nccl``, so gradients on the GPU reduce over NCCL) and picks the mode:

- ``sweep`` (several SAEs): :func:`assign_to_ranks` deals the SAEs to ranks by cost (d_sae x rows trained,
  longest first onto the least loaded rank); each rank trains its own exactly as one process would, reading
  the store once for them, so every SAE folder is the one a single process writes;
- ``ddp`` (one SAE, or ``distributed="ddp"``): every rank steps every SAE on its slice of each global batch
  (:mod:`~vision_sae_lens.train.data_parallel`); rank 0 alone writes checkpoints and final folders.

Rank 0 holds the output folder's lock for the whole job (a second ``train`` into it is refused, as in one
process) and checks that every rank sees the folder. A :class:`RankWatch` thread exchanges each rank's state
every second on a gloo group of its own: a rank that fails tells the others its error and they stop with it
(:class:`~vision_sae_lens.errors.RankFailedError`); a rank that dies or hangs is noticed by a broken or
timed-out collective. Every collective has the job's timeout (``dist_timeout``), so nothing waits forever.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import pickle
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from vision_sae_lens import fsutil
from vision_sae_lens.errors import ConfigError, RankFailedError, TrainingError, escape_control
from vision_sae_lens.store.distributed import DistContext, join_distributed
from vision_sae_lens.train import checkpoint as ckpt

logger = logging.getLogger(__name__)

T = TypeVar("T")
DISTRIBUTED_MODES = ("auto", "sweep", "ddp")
DEFAULT_TIMEOUT_S = 1800.0
"""Longest wait of any collective: rank 0 alone evaluates each finished SAE while the others wait."""
HEARTBEAT_S = 1.0
"""Seconds between two exchanges of the ranks' states."""


def join_ranks(mode: str, n_saes: int, *, timeout_s: float = DEFAULT_TIMEOUT_S, cuda: bool = False) -> Ranks:
    """This process's place in the training job: a single-process :class:`Ranks` outside ``torchrun``.

    ``mode``: ``auto`` (``ddp`` for one SAE, ``sweep`` for several), ``sweep`` or ``ddp``. ``cuda``: the SAEs
    train on CUDA, so the default group also reduces CUDA tensors (NCCL).
    """
    if mode not in DISTRIBUTED_MODES:
        raise ConfigError(f"distributed must be one of {', '.join(DISTRIBUTED_MODES)}, got {mode!r}")
    if not timeout_s > 0:
        raise ConfigError(f"dist_timeout must be > 0 seconds, got {timeout_s}")
    if cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.cuda.is_available():
        # one GPU per process: "cuda" (and NCCL) then mean cuda:LOCAL_RANK
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    ctx = join_distributed(timeout_s / 3600, backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
    if not ctx.distributed:
        return single_process()
    resolved = ("ddp" if n_saes == 1 else "sweep") if mode == "auto" else mode
    ranks = Ranks(ctx, resolved, timeout_s)
    if resolved == "sweep" and n_saes < ctx.world_size:
        logger.warning(
            "%d ranks for %d SAEs: %d ranks have nothing to train; --distributed ddp trains each SAE on all ranks",
            ctx.world_size,
            n_saes,
            ctx.world_size - n_saes,
        )
    logger.info("training as rank %d of %d (%s)", ctx.rank, ctx.world_size, resolved)
    return ranks


def single_process() -> Ranks:
    """The job of a process outside ``torchrun``: one rank, which trains and writes everything."""
    return Ranks(DistContext(), "single", DEFAULT_TIMEOUT_S)


def assign_to_ranks(costs: Sequence[float], world_size: int) -> list[int]:
    """The rank of each job: longest first, each onto the least loaded rank (ties: lower job index, lower
    rank). Deterministic, and within 4/3 of the best balance (Graham's LPT bound)."""
    owners = [0] * len(costs)
    loads = [(0.0, rank) for rank in range(world_size)]
    for job in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        load, rank = heapq.heappop(loads)
        owners[job] = rank
        heapq.heappush(loads, (load + costs[job], rank))
    return owners


class Ranks:
    """This process's rank, the job's mode, and the collectives the training loop needs (each bounded by the
    job's timeout, a broken one raised as :class:`~vision_sae_lens.errors.RankFailedError`)."""

    def __init__(self, ctx: DistContext, mode: str, timeout_s: float) -> None:
        self.ctx, self.mode, self.timeout_s = ctx, mode, timeout_s
        self.watch = RankWatch(ctx, timeout_s=timeout_s) if ctx.distributed else None

    def __deepcopy__(self, memo: dict) -> Ranks:
        return self  # a handle on the job: a copied training SAE (a checkpoint's) belongs to the same one

    @property
    def rank(self) -> int:
        return self.ctx.rank

    @property
    def world_size(self) -> int:
        return self.ctx.world_size

    @property
    def lead(self) -> bool:
        """Whether this is rank 0 (the one that writes shared files)."""
        return self.ctx.rank == 0

    @property
    def data_parallel(self) -> bool:
        """Whether every SAE trains on all ranks, each on a slice of every batch."""
        return self.mode == "ddp"

    def mine(self, costs: Sequence[float]) -> list[int]:
        """Indices of the SAEs (of these ``costs``) this rank trains: all but in a sweep over ranks."""
        if self.mode != "sweep":
            return list(range(len(costs)))
        owners = assign_to_ranks(costs, self.world_size)
        if self.lead:
            loads = [
                sum(c for c, o in zip(costs, owners, strict=True) if o == r) for r in range(self.world_size)
            ]
            logger.info("SAEs per rank: %s (cost per rank: %s)", owners, [f"{v:.3g}" for v in loads])
        return [i for i, owner in enumerate(owners) if owner == self.rank]

    # ------------------------------------------------------------------------------ collectives
    def lead_only(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 alone; its value on every rank (its error raised on every rank)."""
        if not self.ctx.distributed:
            return fn()
        outcome: tuple[str, Any] | None = None
        error: BaseException | None = None
        if self.lead:
            try:
                outcome = ("ok", fn())
            except Exception as exc:
                error, outcome = exc, ("error", _portable(exc))
        status, value = self.collective(self.ctx.broadcast, outcome)
        if error is not None:
            raise error
        if status == "error":
            raise value
        return value

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (small, picklable), in rank order."""
        return self.collective(self.ctx.all_gather, obj)

    def collective(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, a collective: a peer that failed, died or timed out raises RankFailedError."""
        try:
            return fn(*args, **kwargs)
        except RuntimeError as exc:
            raise self.broken(exc) from exc

    def broken(self, exc: BaseException) -> RankFailedError:
        """The error for a collective that failed with ``exc``: a peer's own error when it sent one."""
        if self.watch is not None and (told := self.watch.wait_for_news(seconds=3 * HEARTBEAT_S)):
            return RankFailedError(told)
        return RankFailedError(lost_contact(self.rank, exc, self.timeout_s))

    # ------------------------------------------------------------------------------ the job
    @contextlib.contextmanager
    def holding_output(self, out: Path) -> Iterator[None]:
        """The job's hold on ``out``: one lock (rank 0's, for the whole job; a second ``train`` into ``out``
        is refused at once), stale temp files of killed runs removed, and every rank seeing the folder."""
        if not self.ctx.distributed:
            ckpt.check_writable(out)
            with fsutil.locked(out, what="train run"):
                ckpt.remove_stale_temps(out)
                yield
            return
        lock: fsutil.DirLock | None = None

        def claim() -> str:
            nonlocal lock
            ckpt.check_writable(out)
            lock = fsutil.DirLock(out, what="train run").acquire()
            ckpt.remove_stale_temps(out)  # under the lock, before any rank writes
            probe = fsutil.temp_name(out / "shared-by-ranks")
            probe.write_bytes(b"")
            return probe.name

        try:
            probe = out / self.lead_only(claim)
            seen = self.all_gather((socket.gethostname(), probe.is_file(), _write_problem(out)))
            self.lead_only(lambda: probe.unlink(missing_ok=True))
            problems = [
                f"rank {r} on {host}: " + ("does not see it" if not sees else problem)
                for r, (host, sees, problem) in enumerate(seen)
                if not sees or problem
            ]
            if problems:
                raise TrainingError(
                    f"every rank must see and write the output folder {escape_control(out)} (one folder on a "
                    f"filesystem all nodes share); {'; '.join(problems)}."
                )
            yield
        finally:
            if lock is not None:
                lock.release()

    def check(self) -> None:
        """Raise a peer's failure, if one has been reported (cheap: called every step)."""
        if self.watch is not None and self.watch.news is not None:
            raise RankFailedError(self.watch.news)

    def finish(self) -> None:
        """Wait until every rank has finished its share; a peer's failure is raised."""
        if self.watch is not None:
            self.watch.finish()

    def fail(self, exc: BaseException) -> None:
        """Tell the other ranks that this one stopped with ``exc`` (before it is raised)."""
        if self.watch is not None:
            self.watch.fail(exc)

    def close(self, *, clean: bool) -> None:
        """Leave the job. After a failure the process group is left to the process's exit: a peer may
        still be inside a collective with it."""
        if self.watch is not None:
            self.watch.stop()
        if clean:
            self.ctx.close()


class RankWatch:
    """A thread that exchanges this rank's state (``running``, ``done``, ``failed`` + message) with every other
    rank each :data:`HEARTBEAT_S` seconds, on a gloo group of its own, until all are done or one has failed.
    ``news`` is the first failure heard of (a peer's error, or the broken exchange itself)."""

    def __init__(self, ctx: DistContext, *, timeout_s: float) -> None:
        self.ctx, self.timeout_s = ctx, timeout_s
        group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
        assert isinstance(group, dist.ProcessGroup)  # every rank is a member
        self.group = group
        self.state, self.message = "running", ""
        self.news: str | None = None
        self._changed = threading.Condition()
        self._wake, self._stopping = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="vision-sae-lens-rank-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            mine = (self.state, self.message)
            states: list[Any] = [None] * self.ctx.world_size
            try:
                dist.all_gather_object(states, mine, group=self.group)
            except RuntimeError as exc:
                self._tell(lost_contact(self.ctx.rank, exc, self.timeout_s), end=True)
                return
            others = [
                f"rank {r} failed: {m}"
                for r, (s, m) in enumerate(states)
                if s == "failed" and r != self.ctx.rank
            ]
            failed = bool(others) or mine[0] == "failed"
            finished = failed or all(s == "done" for s, _ in states)
            self._tell(others[0] if others else None, end=finished)
            if finished:
                return
            self._wake.wait(HEARTBEAT_S)
            self._wake.clear()

    def _tell(self, news: str | None, *, end: bool) -> None:
        with self._changed:
            if news is not None and self.news is None:
                self.news = news
            if end:
                self._stopping.set()
            self._changed.notify_all()

    def wait_for_news(self, *, seconds: float) -> str | None:
        """A peer's failure, waiting up to ``seconds`` for the exchange that may bring it."""
        with self._changed:
            self._changed.wait_for(lambda: self.news is not None or self._stopping.is_set(), timeout=seconds)
            return self.news

    def finish(self) -> None:
        """Report this rank done and wait for all the others (raising the first failure heard of); bounded by
        the job's timeout, as every exchange is."""
        self.state = "done"
        self._wake.set()
        self._thread.join()
        if self.news is not None:
            raise RankFailedError(self.news)

    def fail(self, exc: BaseException) -> None:
        """Report ``exc`` and wait (briefly) until an exchange has carried it to the others."""
        self.state, self.message = "failed", f"{type(exc).__name__}: {escape_control(exc)}"[:4000]
        self._wake.set()
        self._thread.join(timeout=3 * HEARTBEAT_S)  # ends once the failure went out (or the exchange broke)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()


def lost_contact(rank: int, exc: BaseException, timeout_s: float) -> str:
    """What a rank says when a collective with the others broke (a peer died, or hung past the timeout)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return (
        f"rank {rank} lost contact with another rank of the job (its process ended, or did not answer within "
        f"dist_timeout={timeout_s:g}s): {escape_control(first)}. Look for that rank's own error; re-run the same "
        "command with --resume (any number of processes) to continue from the last checkpoint."
    )


def _portable(exc: Exception) -> Exception:
    """``exc`` when it survives pickling (to be raised on the other ranks), else a TrainingError saying it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return TrainingError(f"rank 0 failed: {type(exc).__name__}: {escape_control(exc)}")


def _write_problem(out: Path) -> str:
    try:
        ckpt.check_writable(out)
    except TrainingError as exc:
        return str(exc)
    return ""


def uses_cuda(device: str) -> bool:
    """Whether training on ``device`` puts tensors on CUDA (then the job's group also needs NCCL)."""
    if device == "auto":
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda"
