"""Crash and resume, and clear stops on bad input (d_in, site, empty store, NaN/inf)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import D_IN, SITE, CountingStore, synthetic_rows, write_store
from sae_lens import SAE, BatchTopKTrainingSAEConfig, TopKTrainingSAEConfig
from safetensors.torch import load_file

from vision_sae_lens.errors import (
    NonFiniteError,
    SAEMismatchError,
    StoreNotFoundError,
    TrainingError,
    UnknownSiteError,
)
from vision_sae_lens.store import ActivationStore
from vision_sae_lens.train import TrainConfig, train_sae
from vision_sae_lens.train.checkpoint import list_checkpoints

BATCH, STEPS, EVERY = 128, 120, 128 * 25


def _cfg(store, **kw):
    base = dict(
        store=store,
        site=SITE,
        sae=BatchTopKTrainingSAEConfig(
            d_in=D_IN, d_sae=64, k=4, normalize_activations="expected_average_only_in"
        ),
        training_tokens=BATCH * STEPS,
        batch_size=BATCH,
        lr=1e-3,
        lr_scheduler="cosineannealing",
        lr_warm_up_steps=5,
        checkpoint_every_tokens=EVERY,
        n_batches_for_norm_estimate=4,
        name="run",
    )
    return TrainConfig(**{**base, **kw})


def test_crash_then_resume_reaches_the_same_end(store, tmp_path):
    crashing = CountingStore(store, crash_after=60)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_sae(_cfg(crashing), out_dir=tmp_path / "r", progress=False)
    ckpts = list_checkpoints(tmp_path / "r" / "checkpoints" / "run")
    assert ckpts == [25, 50]  # written atomically; nothing half-written after the crash
    assert not (tmp_path / "r" / "run" / "cfg.json").exists()
    mid = SAE.load_from_disk(tmp_path / "r" / "checkpoints" / "run" / "50")  # periodic checkpoints load too
    assert mid.cfg.metadata.training_tokens == 50 * BATCH

    with pytest.raises(TrainingError, match="resume"):
        train_sae(_cfg(store), out_dir=tmp_path / "r", progress=False)

    resumed_store = CountingStore(store)
    run = train_sae(_cfg(resumed_store), out_dir=tmp_path / "r", resume=True, progress=False)
    # The stream resumes after batch 50 without reading the batches it skips.
    assert resumed_store.batches_read == STEPS - 50
    assert run.n_steps == STEPS
    loaded = SAE.load_from_disk(run.path)
    assert loaded.cfg.metadata.training_tokens == STEPS * BATCH

    clean = train_sae(_cfg(store), out_dir=tmp_path / "clean", progress=False)
    a, b = load_file(run.path / "sae_weights.safetensors"), load_file(clean.path / "sae_weights.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)

    again = train_sae(_cfg(store), out_dir=tmp_path / "r", resume=True, progress=False)
    assert again.training_sae is None and again.report == run.report  # finished: loaded, not retrained


def test_d_in_mismatch_is_refused(store, tmp_path):
    cfg = _cfg(store, sae=TopKTrainingSAEConfig(d_in=D_IN + 1, d_sae=64, k=4))
    with pytest.raises(SAEMismatchError, match=f"set d_in={D_IN}"):
        train_sae(cfg, out_dir=tmp_path, progress=False)


def test_unknown_site_lists_close_names(store, tmp_path):
    with pytest.raises(UnknownSiteError, match="Did you mean: blocks.1.hook_resid_post"):
        train_sae(_cfg(store, site="blocks.1.hook_resid_pst"), out_dir=tmp_path, progress=False)


def test_empty_store_is_refused(tmp_path):
    empty = write_store(tmp_path / "empty", {SITE: np.zeros((0, D_IN), dtype=np.float32)})
    with pytest.raises(TrainingError, match="empty"):
        train_sae(_cfg(empty), out_dir=tmp_path / "o", progress=False)


def test_a_missing_store_is_the_readers_error(tmp_path):
    """No store at the path, or a folder without one: the StoreNotFoundError (a FileNotFoundError) the
    store's reader raises, not a training error."""
    (tmp_path / "not_a_store").mkdir()
    with pytest.raises(StoreNotFoundError):
        ActivationStore(tmp_path / "not_a_store")
    for path in (tmp_path / "missing", tmp_path / "not_a_store"):
        with pytest.raises(StoreNotFoundError, match="record one with") as raised:
            train_sae(_cfg(path), out_dir=tmp_path / "o", progress=False)
        assert isinstance(raised.value, FileNotFoundError) and not isinstance(raised.value, TrainingError)


def test_store_smaller_than_a_batch_is_refused(tmp_path):
    small = write_store(tmp_path / "small", {SITE: synthetic_rows(64, D_IN)})
    with pytest.raises(TrainingError, match="fewer than one batch"):
        train_sae(_cfg(small), out_dir=tmp_path / "o", progress=False)


def test_nan_activations_stop_with_a_clear_message(store, tmp_path):
    # The package's one error for NaN/Inf in data (the reader, recorder and analysis raise it too).
    with pytest.raises(NonFiniteError, match="NaN/inf in 1 of 128 rows") as raised:
        train_sae(_cfg(CountingStore(store, corrupt_at=70)), out_dir=tmp_path, progress=False)
    assert isinstance(raised.value, ValueError) and not isinstance(raised.value, TrainingError)
    assert list_checkpoints(tmp_path / "checkpoints" / "run") == [25, 50]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(store, tmp_path, monkeypatch):
    from vision_sae_lens.train.fast_trainer import FastSAETrainer

    real_step = FastSAETrainer.step

    def poisoned(trainer, batch):
        out = real_step(trainer, batch)
        if trainer.n_training_steps == 60:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(FastSAETrainer, "step", poisoned)
    with pytest.raises(TrainingError, match=r"loss became nan at step 60.*checkpoints/run/50"):
        train_sae(_cfg(store), out_dir=tmp_path, progress=False)
    assert not (tmp_path / "run" / "cfg.json").exists()
    good = SAE.load_from_disk(tmp_path / "checkpoints" / "run" / "50")
    assert all(torch.isfinite(p).all() for p in good.parameters())


def test_config_validation_messages(store):
    with pytest.raises(ValueError, match="smaller than one batch"):
        _cfg(store, training_tokens=10)
    with pytest.raises(ValueError, match="unknown lr_scheduler"):
        _cfg(store, lr_scheduler="linear")
    with pytest.raises(ValueError, match="SAELens training config"):
        _cfg(store, sae={"d_in": 3})
    assert _cfg(store, lr=1e-3).lr_end == pytest.approx(1e-4)


@pytest.mark.slow
def test_wandb_offline_logs_without_network(store, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = _cfg(
        store,
        training_tokens=BATCH * 20,
        checkpoint_every_tokens=None,
        wandb_project="vsl-test",
        wandb_mode="offline",
        log_every=5,
        lr_warm_up_steps=0,
    )
    run = train_sae(cfg, out_dir=tmp_path / "o", progress=False)
    assert run.n_steps == 20
    logs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1 and logs[0].stat().st_size > 0


@pytest.mark.slow
def test_sigkill_mid_training_then_resume(store, tmp_path):
    """A real kill (SIGKILL of a training process), not an exception: resume still finishes the run."""
    import subprocess
    import sys
    import time

    steps = 400
    script = f"""
import torch; torch.set_num_threads(1)
from sae_lens import TopKTrainingSAEConfig
from vision_sae_lens.train import TrainConfig, train_sae
train_sae(TrainConfig(store={str(store.path)!r}, site={SITE!r}, name="run", batch_size={BATCH},
          sae=TopKTrainingSAEConfig(d_in={D_IN}, d_sae=64, k=4), training_tokens={BATCH * steps},
          checkpoint_every_tokens={BATCH * 50}), out_dir={str(tmp_path)!r}, progress=False)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    root = tmp_path / "checkpoints" / "run"
    deadline = time.monotonic() + 90
    while not list_checkpoints(root) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    _, err = proc.communicate()
    assert list_checkpoints(root), err.decode()[-2000:]
    assert not (tmp_path / "run" / "train_state.json").exists()

    cfg = TrainConfig(
        store=store.path,
        site=SITE,
        name="run",
        batch_size=BATCH,
        sae=TopKTrainingSAEConfig(d_in=D_IN, d_sae=64, k=4),
        training_tokens=BATCH * steps,
        checkpoint_every_tokens=BATCH * 50,
    )
    run = train_sae(cfg, out_dir=tmp_path, resume=True, progress=False)
    assert run.n_steps == steps
    assert SAE.load_from_disk(run.path).cfg.metadata.training_tokens == BATCH * steps
