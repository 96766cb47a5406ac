"""``train_sae``: SAELens SAEs trained from an activation store, one or many per data pass.

Each SAE gets its own ``sae_lens.SAETrainer`` (its own Adam, lr and coefficient schedules, dead-
feature statistics, activation scaler), built from a ``SAETrainerConfig`` whose every field comes
from the :class:`TrainConfig`. We drive the trainers through SAELens' public ``step`` seam instead
of ``fit`` (as SAELens' ``MultiSAETrainer`` does), so configs in one group see each batch once:
read it, check it, move it to the device, and step every SAE on it. ``MultiSAETrainer`` itself is
not used because it shares one trainer config (one lr) across SAEs.

Output under ``out_dir``: ``<name>/`` (SAELens inference folder + ``eval.json`` + plots +
``train_config.json``), ``checkpoints/<name>/<step>/`` (resumable), and for sweeps
``sweep.json`` + ``sweep_l0_vs_nmse.png``.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
from sae_lens import SAE
from sae_lens.config import LoggingConfig
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.sae import TrainingSAE, TrainStepOutput
from sae_lens.training.prefetch import PrefetchingIterator
from sae_lens.training.sae_trainer import SAETrainer, SAETrainerConfig
from tqdm.auto import tqdm

from vision_sae_lens import fsutil
from vision_sae_lens.compat import quiet_norm_estimate, trainer_step, use_fused_adam
from vision_sae_lens.errors import ConfigError, TrainingError
from vision_sae_lens.metadata import VisionFacts
from vision_sae_lens.store.reader import ActivationStore
from vision_sae_lens.train import checkpoint as ckpt
from vision_sae_lens.train.config import TrainConfig, resolve_device
from vision_sae_lens.train.evaluate import evaluate_run
from vision_sae_lens.train.feed import (
    Split,
    batch_stream,
    check_finite_batch,
    check_store_for,
    estimation_batches,
    open_store,
    prepare_inputs,
    split_store,
    store_preprocessing,
)
from vision_sae_lens.train.plots import plot_sweep
from vision_sae_lens.train.sweep import group_configs, unique_names

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
    """
    if concurrent_steps is not None and concurrent_steps < 1:
        raise ConfigError(f"concurrent_steps must be at least 1, got {concurrent_steps}")
    single = isinstance(configs, TrainConfig)
    cfgs: list[TrainConfig] = [configs] if isinstance(configs, TrainConfig) else list(configs)
    if not cfgs:
        raise ConfigError("no configs to train")
    out = Path(out_dir)
    names = unique_names(cfgs)
    ckpt.check_writable(out)
    with fsutil.locked(out, what="train run"):  # a second train run into `out` is refused at once
        ckpt.remove_stale_temps(out)
        results: dict[int, TrainRun] = {}
        for group in group_configs(cfgs, names):
            members = [_Member(cfgs[i], names[i], out) for i in group]
            for i, run in zip(
                group,
                _GroupTrainer(members, resume, overwrite, model, images, progress, concurrent_steps).run(),
                strict=True,
            ):
                results[i] = run
        runs = [results[i] for i in range(len(cfgs))]
        if len(runs) > 1:
            summary = [
                {"name": r.name, "architecture": r.config.architecture, **_summary(r.report)} for r in runs
            ]
            fsutil.write_json_atomic(out / "sweep.json", summary)
            plot_sweep(summary, out / "sweep_l0_vs_nmse.png")
    return runs[0] if single else runs


def _summary(report: dict) -> dict:
    keys = ("l0", "nmse", "explained_variance", "dead_fraction")
    d = {k: report.get(k) for k in keys}
    d["fraction_recovered"] = (report.get("downstream") or {}).get("fraction_recovered")
    return d


class _Member:
    """One SAE of a group: its config, folders, training SAE and trainer."""

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


class _GroupTrainer:
    """Trains the members of one group in lockstep over one batch stream."""

    def __init__(
        self,
        members: list[_Member],
        resume: bool,
        overwrite: bool,
        model,
        images,
        progress,
        concurrent_steps: int | None = None,
    ) -> None:
        self.members, self.resume, self.overwrite = members, resume, overwrite
        self.model, self.images, self.progress = model, images, progress
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
        # side-by-side steps would multiply the OpenMP threads
        small_cpu = self.device == "cpu" and torch.get_num_threads() <= SMALL_CPU_THREADS
        default = CPU_CONCURRENT_STEPS if small_cpu else 1
        self.concurrent_steps = min(len(members), concurrent_steps or default)
        self.fingerprint = str(getattr(self.store, "fingerprint", ""))
        self.inputs = prepare_inputs(self.store, lead, split=self.split)
        self.token_types, self.tokens = self.inputs.token_types, self.inputs.tokens
        self.normalization = self.inputs.normalization

    # ------------------------------------------------------------------------------------ driver
    def run(self) -> list[TrainRun]:
        active = [m for m in self.members if not self._prepare_folder(m)]
        for m in active:
            m.trainer = self._build_trainer(m)
        start = self._resume_step(active) if self.resume else 0
        for m in active:
            self._estimate_normalisation(m)
            _warn_short_window(m)
            self._start_wandb(m)
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

    def _loop(self, active: list[_Member], start: int) -> None:
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
            prefetch=0 if isinstance(self.store, ActivationStore) else None,
        )
        source = itertools.islice(source, n_steps - start)  # read ahead, never past the last step
        pin = self.device.startswith("cuda")
        # Checking and pinning run in the prefetch thread, overlapped with the training steps.
        stream = PrefetchingIterator(_checked(source, start=start, site=lead.site, pin=pin), prefetch=4)
        desc = active[0].name if len(active) == 1 else f"{len(active)} SAEs"
        pbar = tqdm(total=n_steps, initial=start, desc=desc, unit="step", disable=not self.progress)
        self._t0 = time.perf_counter()
        pool = ThreadPoolExecutor(self.concurrent_steps) if self.concurrent_steps > 1 else None
        try:
            for step in range(start, n_steps):
                batch = next(stream).to(self.device, non_blocking=True)
                if step == 0:
                    for m in active:
                        _init_b_dec(m, batch)
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
                    elif every and done % every == 0 and done < m.cfg.n_steps:
                        ckpt.save_resumable(
                            m.trainer,
                            m.ckpt_root,
                            self._facts(m),
                            self._progress(m),
                            keep=m.cfg.keep_checkpoints,
                            normalization=self.normalization,
                        )
                pbar.update(1)
                if done % lead.log_every == 0 or done == n_steps:
                    pbar.set_postfix_str(_postfix(active))
        finally:
            if pool is not None:
                pool.shutdown()
            stream.close()
            pbar.close()

    def _step(self, m: _Member, batch: torch.Tensor, step: int) -> None:
        trainer = m.live
        sparsity_log = trainer.maybe_reset_sparsity()
        if sparsity_log and m.wandb_run is not None:
            m.wandb_run.log(sparsity_log, step=trainer.n_training_steps)
        t0 = time.perf_counter()
        # SAETrainer.step without its avoidable cost (see compat)
        out = trainer_step(trainer, batch, auxk_relu=m.cfg.auxk_relu)
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
            m.history.append({"step": trainer.n_training_steps, **_step_metrics(out)})
            if m.wandb_run is not None:
                log = trainer.build_train_step_log_dict(
                    output=out, n_training_samples=trainer.n_training_samples
                )
                m.wandb_run.log(log, step=trainer.n_training_steps)

    # ------------------------------------------------------------------------------- set-up bits
    def _prepare_folder(self, m: _Member) -> bool:
        """True when the member is already finished (resume) and only needs loading."""
        exists = m.folder.exists() and any(m.folder.iterdir()) or bool(ckpt.list_checkpoints(m.ckpt_root))
        if self.overwrite:  # only folders this package created: never a user's directory
            fsutil.remove_own_folder(m.folder)
            fsutil.remove_own_folder(m.ckpt_root)
        elif m.folder.exists() and any(m.folder.iterdir()) and not ckpt.is_own_sae_folder(m.folder):
            raise TrainingError(
                f"{m.folder} exists and was not written by vision_sae_lens; it is left alone. Choose another run "
                "name or --out-dir (or move that folder away)."
            )
        elif exists and not self.resume:
            raise TrainingError(
                f"{m.folder} already holds output of run {m.name!r}; pass resume=True (--resume) to continue it "
                "or overwrite=True (--overwrite) to start again."
            )
        if self.resume and m.folder.exists() and any(m.folder.iterdir()) and not ckpt.is_finished(m.folder):
            raise TrainingError(
                f"{m.folder} holds an SAE folder that is not complete (no checksums.json / train_state.json); "
                "pass --overwrite to train it again."
            )
        if self.resume and ckpt.is_finished(m.folder):
            logger.info("run %r is already finished in %s; loading it", m.name, m.folder)
            m.result = self._load_result(m, training_sae=None, n_steps=m.cfg.n_steps)
            return True
        return False

    def _build_trainer(self, m: _Member) -> SAETrainer:
        cfg = m.cfg
        sae_cfg = _copy_sae_config(cfg.sae, device=self.device)
        torch.manual_seed(cfg.seed)
        sae_cls = get_sae_training_class(sae_cfg.architecture())[0]
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
            device=self.device,
            autocast=cfg.autocast,
            dead_feature_window=cfg.dead_feature_window,
            feature_sampling_window=cfg.feature_sampling_window,
            n_checkpoints=0,  # checkpoints are written here, on the group's schedule
            checkpoint_path=None,
            save_final_checkpoint=False,
            logger=LoggingConfig(log_to_wandb=False),  # W&B runs are managed here, one per SAE
            n_batches_for_norm_estimate=cfg.n_batches_for_norm_estimate,
        )
        trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(()))
        sae.to(self.device)
        use_fused_adam(trainer)
        return trainer

    def _resume_step(self, active: list[_Member]) -> int:
        """Newest step at which every unfinished member has a checkpoint; loads them there."""
        available = [set(ckpt.list_checkpoints(m.ckpt_root)) for m in active]
        common = set.intersection(*available) if available else set()
        if not common:
            if any(available):
                logger.warning("no checkpoint step common to all runs of this group; starting from step 0")
            else:
                logger.info("nothing to resume for %s; starting from step 0", [m.name for m in active])
            return 0
        for step in sorted(common, reverse=True):  # newest first; a damaged one falls back to the one before
            damaged = [
                err
                for m in active
                if (err := ckpt.checkpoint_problem(m.ckpt_root / str(step), self.fingerprint))
            ]
            if damaged:
                logger.warning("skipping damaged checkpoint step %d: %s", step, "; ".join(damaged))
                continue
            for m in active:
                path = m.ckpt_root / str(step)
                ckpt.load_resumable(m.trainer, path)
                if m.live.n_training_steps != step:
                    raise TrainingError(
                        f"checkpoint {path} holds step {m.live.n_training_steps}, expected {step}"
                    )
            logger.info("resuming %s from step %d", [m.name for m in active], step)
            return step
        logger.warning("every checkpoint of %s is damaged; starting from step 0", [m.name for m in active])
        for m in active:  # no state was loaded into the trainers, but rebuild them to be sure
            m.trainer = self._build_trainer(m)
        return 0

    def _estimate_normalisation(self, m: _Member) -> None:
        scaler, sae, cfg = m.live.activation_scaler, m.live.sae, m.cfg
        norm = sae.cfg.normalize_activations
        if norm not in ("expected_average_only_in", "covariance_whitening"):
            return
        if scaler.scaling_factor is not None or scaler.whitening is not None:
            return  # restored from a checkpoint: the weights were trained against these statistics
        batches = estimation_batches(
            self.store,
            cfg.site,
            n=cfg.n_batches_for_norm_estimate,
            batch_size=cfg.rows_per_step,
            seed=cfg.data_seed,
            split=self.split,
            token_types=self.token_types,
            normalization=self.normalization,
        )
        batches = (b.to(self.device) for b in batches)
        estimate = (
            scaler.estimate_scaling_factor
            if norm == "expected_average_only_in"
            else scaler.estimate_whitening
        )
        with quiet_norm_estimate(self.progress):
            estimate(
                d_in=sae.cfg.d_in,
                data_provider=batches,
                n_batches_for_norm_estimate=cfg.n_batches_for_norm_estimate,
            )

    def _start_wandb(self, m: _Member) -> None:
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

    # ------------------------------------------------------------------------------- finishing
    def _facts(self, m: _Member) -> VisionFacts:
        store = self.store
        return VisionFacts(
            backbone=str(getattr(store, "backbone_id", "") or ""),
            hook_name=m.cfg.site,
            tokens=self.tokens,
            layout=store.layout,
            preprocessing=store_preprocessing(store),
            dataset={**dict(store.dataset or {}), "held_out": _held_out_summary(self.split)},
            store_fingerprint=self.fingerprint or None,
            training_tokens=int(m.live.n_training_samples),
            backbone_weights_file=store.metadata.get("backbone_weights_file"),
            input_normalization=None if self.normalization is None else self.normalization.to_metadata(),
        )

    def _progress(self, m: _Member) -> dict[str, Any]:
        return {
            "n_training_steps": m.live.n_training_steps,
            "n_training_samples": m.live.n_training_samples,
            "store_fingerprint": self.fingerprint,
            "data_seed": m.cfg.data_seed,
            "batch_size": m.cfg.batch_size,
        }

    def _finish(self, m: _Member) -> None:
        if m.cfg.device.startswith("cuda") or self.device.startswith("cuda"):
            torch.cuda.synchronize()
        m.train_seconds = time.perf_counter() - self._t0
        trainer = m.live
        trainer.set_final_sae_metadata()
        # Assembled in a temp folder and renamed into place: m.folder is never seen half written.
        tmp = fsutil.temp_folder(m.folder)
        try:
            ckpt.write_inference_folder(
                trainer, tmp, self._facts(m), fold_in_place=True, normalization=self.normalization
            )
            (tmp / "train_config.json").write_text(json.dumps(m.cfg.to_dict(), indent=1, default=str))
            (tmp / "split.json").write_text(json.dumps(self.split.describe(), indent=1))
            m.result = self._load_result(
                m, training_sae=trainer.sae, n_steps=trainer.n_training_steps, path=tmp
            )
            ckpt.mark_finished(tmp, self._progress(m))
            fsutil.seal_sae_folder(tmp)
            fsutil.replace_folder(tmp, m.folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        m.result.path = m.folder
        _warn_poor_result(m.name, m.result.report)
        if m.wandb_run is not None:
            m.wandb_run.summary.update(
                {k: v for k, v in m.result.report.items() if isinstance(v, (int, float))}
            )
        self._t0 += time.perf_counter() - self._t0 - m.train_seconds  # saving and evaluating are not training

    def _evaluate(self, m: _Member, sae: SAE, folder: Path) -> dict[str, Any]:
        return evaluate_run(
            sae,
            m.cfg,
            store=self.store,
            split=self.split,
            name=m.name,
            model=self.model,
            images=self.images,
            out_dir=folder,
            progress=self.progress,
        )

    def _load_result(
        self, m: _Member, *, training_sae: TrainingSAE | None, n_steps: int, path: Path | None = None
    ) -> TrainRun:
        folder = path or m.folder
        sae = ckpt.open_sae_folder(folder, device=self.device, require_checksums=path is None)
        report_path = folder / "eval.json"
        if report_path.exists() and training_sae is None:
            report = json.loads(report_path.read_text())
        else:
            report = self._evaluate(m, sae, folder)
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


def _init_b_dec(m: _Member, batch: torch.Tensor) -> None:
    """``b_dec_init='mean'``: the decoder bias starts at the mean of the first training batch (as sparsify)."""
    sae = m.live.sae
    if m.cfg.b_dec_init != "mean" or not hasattr(sae, "b_dec"):
        return
    with torch.no_grad():
        sae.b_dec.data = m.live.activation_scaler(batch.float()).mean(0).to(sae.b_dec.dtype)


CPU_CONCURRENT_STEPS = 2
"""SAEs of a sweep that step at the same time by default on a CPU of at most :data:`SMALL_CPU_THREADS` torch
threads. On 2 cores a 4-SAE sweep's training took 0.83-0.85x the time of 4 separate runs this way, 0.91x
stepping one SAE at a time (``scripts/bench/train.py``); four at once gained little more and hold twice the
memory."""

SMALL_CPU_THREADS = 4
"""Up to this many torch threads a CPU counts as small: there a step leaves cores idle often enough for a
second SAE's step to fill them."""

DEAD_WARNING_FRACTION = 0.2
"""Dead fraction above which the end of training warns."""


def _warn_short_window(m: _Member) -> None:
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


def _warn_poor_result(name: str, report: dict[str, Any]) -> None:
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


def _held_out_summary(split: Split) -> dict[str, Any]:
    """The held-out draw without its image list (that is in ``split.json``)."""
    return {k: v for k, v in split.describe().items() if k != "eval_images"}


def _checked(source: Iterator[torch.Tensor], *, start: int, site: str, pin: bool) -> Iterator[torch.Tensor]:
    for step, batch in enumerate(source, start):
        check_finite_batch(batch, step=step, site=site)
        yield batch.pin_memory() if pin else batch


def _copy_sae_config(sae_cfg: Any, *, device: str) -> Any:
    """A private copy of the user's SAELens config (its metadata object is mutated by training)."""
    d = sae_cfg.to_dict()
    d["device"] = device
    d.pop("metadata", None)
    return type(sae_cfg).from_dict(d)


@torch.no_grad()
def _step_metrics(out: TrainStepOutput) -> dict[str, float]:
    sae_in = out.sae_in.float()
    err = (out.sae_out.float() - sae_in).pow(2).sum()
    var = (sae_in - sae_in.mean(0)).pow(2).sum().clamp_min(1e-12)
    acts = out.feature_acts.to_dense() if out.feature_acts.is_sparse else out.feature_acts
    l0 = (acts != 0).sum(-1).float().mean()  # counted on a boolean mask: no float copy of the activations
    return {"loss": float(out.loss), "l0": float(l0), "nmse": float(err / var)}


def _postfix(active: list[_Member]) -> str:
    parts = []
    for m in active:
        if m.history:
            h = m.history[-1]
            label = "" if len(active) == 1 else f"{m.name[:16]} "
            parts.append(f"{label}loss={h['loss']:.4g} L0={h['l0']:.1f} nmse={h['nmse']:.3f}")
    return " | ".join(parts)
