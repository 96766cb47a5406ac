"""``train_sae``: SAELens SAEs trained from an activation store, one or many per data pass.

Each SAE gets its own ``sae_lens.SAETrainer`` (its own Adam, lr and coefficient schedules, dead-
feature statistics, activation scaler), built by :func:`~vision_sae_lens.train.build.build_trainer`
(on a CPU the package's ``FastSAETrainer`` subclass and lean training SAE, elsewhere SAELens' own).
The trainers are driven through ``SAETrainer.step``, SAELens' public step, instead of ``fit`` (as
SAELens' ``MultiSAETrainer`` does), so configs in one group see each batch once: read it, check it,
move it to the device, and step every SAE on it. ``MultiSAETrainer`` itself is not used because it
shares one trainer config (one lr) across SAEs. What a finished run writes is in
:mod:`~vision_sae_lens.train.outputs`.

Output under ``out_dir``: ``<name>/`` (SAELens inference folder + ``eval.json`` + plots +
``train_config.json``), ``checkpoints/<name>/<step>/`` (resumable), and for sweeps
``sweep.json`` + ``sweep_l0_vs_nmse.png``.

Under ``torchrun`` the same call is one rank's part of the job (:mod:`~vision_sae_lens.train.ranks`): in a
sweep over ranks it trains the SAEs dealt to this rank; in a data-parallel job it steps every SAE on this
rank's slice of each batch (:mod:`~vision_sae_lens.train.data_parallel`), and rank 0 alone writes.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from vision_sae_lens import fsutil
from vision_sae_lens.compat import PrefetchingIterator
from vision_sae_lens.errors import ConfigError, TrainingError
from vision_sae_lens.store.transfer import device_batches, pins_for
from vision_sae_lens.train import checkpoint as ckpt
from vision_sae_lens.train.build import build_trainer, estimate_scaler, init_b_dec, needs_scaler_estimate
from vision_sae_lens.train.config import TrainConfig, resolve_device
from vision_sae_lens.train.data_parallel import check_data_parallel
from vision_sae_lens.train.feed import (
    Split,
    batch_stream,
    check_finite_batch,
    check_store_for,
    estimation_batches,
    open_store,
    prepare_inputs,
    split_store,
)
from vision_sae_lens.train.outputs import (
    Member,
    RunContext,
    TrainRun,
    finish_member,
    load_result,
    prepare_folder,
    progress_record,
    read_finished_run,
    sweep_summary,
    vision_facts,
    warn_short_window,
)
from vision_sae_lens.train.plots import plot_sweep
from vision_sae_lens.train.progress import postfix, start_wandb, step_metrics
from vision_sae_lens.train.ranks import DEFAULT_TIMEOUT_S, Ranks, join_ranks, single_process, uses_cuda
from vision_sae_lens.train.sweep import group_configs, training_cost, unique_names

logger = logging.getLogger(__name__)
T = TypeVar("T")


def train_sae(
    configs: TrainConfig | list[TrainConfig],
    *,
    out_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    model: Any = None,
    images: Any = None,
    progress: bool = True,
    concurrent_steps: int | None = None,
    distributed: str = "auto",
    dist_timeout: float = DEFAULT_TIMEOUT_S,
) -> TrainRun | list[TrainRun]:
    """Train one SAE (a ``TrainConfig``) or a sweep (a list) and write SAELens checkpoint folders.

    Configs that read the same batch stream train in one pass over the data; others are split
    into their own pass (logged). ``resume=True`` continues every unfinished run from its newest
    checkpoint (finished runs are loaded, not retrained); ``overwrite=True`` deletes earlier
    output of these runs. With ``model`` (a ``HookedSAEViT``) and ``images``, the evaluation at the
    end includes the spliced downstream metric. ``concurrent_steps``: how many SAEs of a sweep take their
    step on a batch at the same time (default :data:`CPU_CONCURRENT_STEPS` on a CPU of up to
    :data:`SMALL_CPU_THREADS` threads, else 1); each one stepping adds its own step's memory. Returns a
    ``TrainRun`` (or a list, for a list).

    Under ``torchrun`` every rank makes the same call. ``distributed``: ``sweep`` deals the SAEs to the
    ranks by cost, ``ddp`` trains each SAE on all ranks (the global batch ``batch_size`` split between
    them), ``auto`` is ``ddp`` for one SAE and ``sweep`` for several. ``dist_timeout``: the longest any
    rank waits for the others (seconds). Every rank returns every run.
    """
    if concurrent_steps is not None and concurrent_steps < 1:
        raise ConfigError(f"concurrent_steps must be at least 1, got {concurrent_steps}")
    single = isinstance(configs, TrainConfig)
    cfgs: list[TrainConfig] = [configs] if isinstance(configs, TrainConfig) else list(configs)
    if not cfgs:
        raise ConfigError("no configs to train")
    out = Path(out_dir)
    names = unique_names(cfgs)
    ranks = join_ranks(
        distributed, len(cfgs), timeout_s=dist_timeout, cuda=any(uses_cuda(c.device) for c in cfgs)
    )
    clean = False
    try:
        if ranks.data_parallel:
            check_data_parallel(cfgs, names, ranks.world_size)
        with ranks.holding_output(out):  # a second train run into `out` is refused at once
            results: dict[int, TrainRun] = {}
            mine = ranks.mine([training_cost(c) for c in cfgs])
            for group in group_configs([cfgs[i] for i in mine], [names[i] for i in mine]):
                members = [Member(cfgs[mine[j]], names[mine[j]], out) for j in group]
                trainer = _GroupTrainer(
                    members, resume, overwrite, model, images, progress, concurrent_steps, ranks
                )
                for j, run in zip(group, trainer.run(), strict=True):
                    results[mine[j]] = run
            ranks.finish()  # every rank's SAEs are written
            runs = [results.get(i) or read_finished_run(cfgs[i], names[i], out) for i in range(len(cfgs))]
            if len(runs) > 1 and ranks.lead:
                summary = sweep_summary(runs)
                fsutil.write_json_atomic(out / "sweep.json", summary)
                plot_sweep(summary, out / "sweep_l0_vs_nmse.png")
        clean = True
    except BaseException as exc:
        ranks.fail(exc)  # the other ranks stop with this error
        raise
    finally:
        ranks.close(clean=clean)
    return runs[0] if single else runs


class _GroupTrainer:
    """Trains the members of one group in lockstep over one batch stream (in a data-parallel job, this
    rank's slice of it)."""

    def __init__(
        self,
        members: list[Member],
        resume: bool,
        overwrite: bool,
        model,
        images,
        progress,
        concurrent_steps: int | None = None,
        ranks: Ranks | None = None,
    ) -> None:
        self.ranks = ranks or single_process()
        self.data_parallel = self.ranks.data_parallel
        progress = progress and self.ranks.lead  # one progress bar per job: rank 0's
        self.members, self.resume, self.overwrite, self.progress = members, resume, overwrite, progress
        lead = members[0].cfg
        self.lead = lead
        self.store = open_store(lead.store)
        for m in members:
            check_store_for(self.store, m.cfg.site, m.cfg.sae.d_in, m.name)
        self.split: Split = split_store(
            self.store,
            eval_fraction=lead.eval_fraction,
            max_eval_rows=lead.max_eval_rows,
            batch_size=lead.rows_per_step,
            seed=lead.split_seed,
        )
        self.device = resolve_device(lead.device)
        # measured on 2 cores; on a many-core CPU each step's own threads already fill the machine, and
        # side-by-side steps would multiply the OpenMP threads. Data-parallel steps take their collectives in
        # one order on every rank: one at a time.
        small_cpu = self.device == "cpu" and torch.get_num_threads() <= SMALL_CPU_THREADS
        default = CPU_CONCURRENT_STEPS if small_cpu and not self.data_parallel else 1
        self.concurrent_steps = 1 if self.data_parallel else min(len(members), concurrent_steps or default)
        self.fingerprint = self.store.fingerprint
        self.inputs = prepare_inputs(self.store, lead, split=self.split)
        self.token_types, self.normalization = self.inputs.token_types, self.inputs.normalization
        self.context = RunContext(
            store=self.store,
            split=self.split,
            fingerprint=self.fingerprint,
            tokens=self.inputs.tokens,
            normalization=self.normalization,
            device=self.device,
            model=model,
            images=images,
            progress=progress,
        )

    def _once(self, fn: Callable[[], T]) -> T:
        """``fn()`` where it writes the group's files: here, or on rank 0 alone in a data-parallel job (its
        value, or its error, on every rank)."""
        return self.ranks.lead_only(fn) if self.data_parallel else fn()

    # ------------------------------------------------------------------------------------ driver
    def run(self) -> list[TrainRun]:
        finished = self._once(
            lambda: [
                prepare_folder(self.context, m, resume=self.resume, overwrite=self.overwrite)
                for m in self.members
            ]
        )
        for m, done in zip(self.members, finished, strict=True):
            if done and m.result is None:  # finished before: rank 0 checked and loaded it, the others load it
                m.result = load_result(self.context, m, training_sae=None, n_steps=m.cfg.n_steps)
        active = [m for m, done in zip(self.members, finished, strict=True) if not done]
        for m in active:
            m.trainer = build_trainer(m.cfg, self.device, ranks=self.ranks)
        start = self._once(lambda: ckpt.resume_step(active, self.fingerprint)) if self.resume else 0
        if start:
            ckpt.load_step(active, start)
        for m in active:
            self._estimate_normalisation(m)
            warn_short_window(m)
            if self._writes:  # one W&B run per SAE, from the rank that trains (and writes) it
                start_wandb(m)
        try:
            if active:
                self._loop(active, start)
        except (OSError, RuntimeError) as exc:
            if not fsutil.is_disk_full(exc):
                raise
            raise ckpt.disk_full_error(self.members[0].folder.parent, exc) from exc
        finally:
            for m in active:
                if m.wandb_run is not None:
                    m.wandb_run.finish()
        return [m.done for m in self.members]

    def _loop(self, active: list[Member], start: int) -> None:
        lead = self.lead
        n_steps = max(m.cfg.n_steps for m in active)
        every = lead.checkpoint_every_tokens // lead.rows_per_step if lead.checkpoint_every_tokens else 0
        source = batch_stream(
            self.store,
            lead.site,
            batch_size=lead.rows_per_step,
            seed=lead.data_seed,
            split=self.split,
            skip_batches=start,
            token_types=self.token_types,
            normalization=self.normalization,
            # One read-ahead queue: the store's reader runs inside the prefetch thread below.
            prefetch=0,
            part=(self.ranks.rank, self.ranks.world_size) if self.data_parallel else (0, 1),
        )
        source = itertools.islice(source, n_steps - start)  # read ahead, never past the last step
        # Checking and pinning run in the prefetch thread, overlapped with the training steps; the copy to the
        # device is issued ahead, on its own stream (device_batches).
        checked = _checked(source, start=start, site=lead.site, pin=pins_for(self.device))
        stream = PrefetchingIterator(checked, prefetch=4)
        desc = active[0].name if len(active) == 1 else f"{len(active)} SAEs"
        pbar = tqdm(total=n_steps, initial=start, desc=desc, unit="step", disable=not self.progress)
        self._t0 = time.perf_counter()
        pool = ThreadPoolExecutor(self.concurrent_steps) if self.concurrent_steps > 1 else None
        try:
            for step, batch in enumerate(device_batches(stream, self.device), start):
                self.ranks.check()  # another rank failed: stop with its error
                if step == 0:
                    for m in active:
                        init_b_dec(m.live, m.cfg, batch)
                stepping = [m for m in active if step < m.cfg.n_steps]
                if pool is None or len(stepping) == 1:
                    for m in stepping:
                        self._step(m, batch, step)
                else:
                    # On a CPU much of a step runs on one core (sparse ops, allocation, Python); SAEs stepping
                    # side by side keep both busy. The slowest start first, so the others fill in beside them.
                    # Each SAE's own work stays in order; the first failure is raised once every step on this
                    # batch has ended.
                    stepping.sort(key=lambda m: m.step_seconds, reverse=True)
                    futures = [pool.submit(self._step, m, batch, step) for m in stepping]
                    wait(futures)
                    for future in futures:
                        future.result()
                done = step + 1
                for m in active:
                    if done == m.cfg.n_steps:
                        self._finish(m)
                    elif every and done % every == 0 and done < m.cfg.n_steps and self._writes:
                        ckpt.save_resumable(
                            m.live,
                            m.ckpt_root,
                            vision_facts(self.context, m),
                            progress_record(self.context, m),
                            keep=m.cfg.keep_checkpoints,
                            normalization=self.normalization,
                        )
                pbar.update(1)
                if done % lead.log_every == 0 or done == n_steps:
                    pbar.set_postfix_str(postfix(active))
        finally:
            if pool is not None:
                pool.shutdown()
            stream.close()
            pbar.close()

    @property
    def _writes(self) -> bool:
        """Whether this process writes the group's checkpoints (all but data-parallel ranks other than 0)."""
        return not self.data_parallel or self.ranks.lead

    def _step(self, m: Member, batch: torch.Tensor, step: int) -> None:
        trainer = m.live
        sparsity_log = trainer.maybe_reset_sparsity()
        if sparsity_log and m.wandb_run is not None:
            m.wandb_run.log(sparsity_log, step=trainer.n_training_steps)
        t0 = time.perf_counter()
        out = trainer.step(batch)  # SAELens' step, or FastSAETrainer's on a CPU (see train/build.py)
        m.step_seconds = time.perf_counter() - t0
        if not torch.isfinite(out.loss):
            last = ckpt.list_checkpoints(m.ckpt_root)
            keep = (
                f"the last good checkpoint is {m.ckpt_root / str(last[-1])}"
                if last
                else "no checkpoint was written"
            )
            raise TrainingError(
                f"run {m.name!r}: the loss became {out.loss.item()} at step {step}; stopped ({keep}). "
                "Lower lr, add lr_warm_up_steps, or enable normalize_activations='expected_average_only_in'."
            )
        trainer.n_training_steps += 1
        if trainer.n_training_steps % m.cfg.log_every == 0:
            m.history.append({"step": trainer.n_training_steps, **step_metrics(out, trainer)})
            if m.wandb_run is not None:
                log = trainer.build_train_step_log_dict(
                    output=out, n_training_samples=trainer.n_training_samples
                )
                m.wandb_run.log(log, step=trainer.n_training_steps)

    # ------------------------------------------------------------------------------- set-up bits
    def _estimate_normalisation(self, m: Member) -> None:
        trainer = m.live
        if not needs_scaler_estimate(trainer):
            return
        batches = lambda: estimation_batches(  # noqa: E731
            self.store,
            m.cfg.site,
            n=m.cfg.n_batches_for_norm_estimate,
            batch_size=m.cfg.rows_per_step,
            seed=m.cfg.data_seed,
            split=self.split,
            token_types=self.token_types,
            normalization=self.normalization,
        )
        if not self.data_parallel:
            estimate_scaler(trainer, m.cfg, batches(), progress=self.progress)
            return
        # rank 0 estimates from the batches one process reads; every rank scales by that
        factor, whitening = self._once(
            lambda: estimate_scaler(trainer, m.cfg, batches(), progress=self.progress)
        )
        trainer.activation_scaler.scaling_factor = factor
        trainer.activation_scaler.whitening = (
            None if whitening is None else whitening.to(torch.device(self.device))
        )

    # ------------------------------------------------------------------------------- finishing
    def _finish(self, m: Member) -> None:
        if m.cfg.device.startswith("cuda") or self.device.startswith("cuda"):
            torch.cuda.synchronize()
        m.train_seconds = time.perf_counter() - self._t0
        self._once(lambda: finish_member(self.context, m))
        if m.result is None:  # a data-parallel rank other than 0: rank 0 wrote and evaluated the folder
            m.result = load_result(self.context, m, training_sae=None, n_steps=m.cfg.n_steps)
        self._t0 += time.perf_counter() - self._t0 - m.train_seconds  # saving and evaluating are not training


CPU_CONCURRENT_STEPS = 2
"""SAEs of a sweep that step at the same time by default on a CPU of at most :data:`SMALL_CPU_THREADS` torch
threads. On 2 cores a 4-SAE sweep's training took 0.83-0.85x the time of 4 separate runs this way, 0.91x
stepping one SAE at a time (``scripts/bench/train.py``); four at once gained little more and hold twice the
memory."""

SMALL_CPU_THREADS = 4
"""Up to this many torch threads a CPU counts as small: there a step leaves cores idle often enough for a
second SAE's step to fill them."""


def _checked(source: Iterator[torch.Tensor], *, start: int, site: str, pin: bool) -> Iterator[torch.Tensor]:
    for step, batch in enumerate(source, start):
        check_finite_batch(batch, step=step, site=site)
        yield batch.pin_memory() if pin else batch
