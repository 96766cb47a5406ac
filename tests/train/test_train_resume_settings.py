"""Resume continues only the run that was started: a changed setting is refused, naming it (old -> new)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import D_IN, SITE, CountingStore
from sae_lens import TopKTrainingSAEConfig

from vision_sae_lens.cli import main
from vision_sae_lens.errors import ConfigError
from vision_sae_lens.train import TrainConfig, train_sae
from vision_sae_lens.train.checkpoint import list_checkpoints

BATCH, STEPS = 128, 60


def _cfg(store, **kw):
    base = dict(
        store=store,
        site=SITE,
        sae=TopKTrainingSAEConfig(d_in=D_IN, d_sae=64, k=4),
        training_tokens=BATCH * STEPS,
        batch_size=BATCH,
        lr=1e-3,
        checkpoint_every_tokens=BATCH * 20,
        name="run",
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def crashed(store, tmp_path_factory):
    """A run killed after step 45: checkpoints at steps 20 and 40, no output folder."""
    out = tmp_path_factory.mktemp("crashed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_sae(_cfg(CountingStore(store, crash_after=45)), out_dir=out, progress=False)
    assert list_checkpoints(out / "checkpoints" / "run") == [20, 40]
    return out


def _snapshot(out):
    """Every file and its modification time (but the lock file, which each run rewrites)."""
    files = (p for p in out.rglob("*") if p.is_file() and p.name != ".vsl.lock")
    return sorted((p.relative_to(out).as_posix(), p.stat().st_mtime_ns) for p in files)


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        (dict(sae=TopKTrainingSAEConfig(d_in=D_IN, d_sae=64, k=8)), "sae.k: 4 -> 8"),
        (dict(sae=TopKTrainingSAEConfig(d_in=D_IN, d_sae=128, k=4)), "sae.d_sae: 64 -> 128"),
        (dict(data_seed=3), "data_seed: 0 -> 3"),
        (dict(lr=2e-3), "lr: 0.001 -> 0.002"),
        (dict(lr_scheduler="cosineannealing"), 'lr_scheduler: "constant" -> "cosineannealing"'),
        (
            dict(training_tokens=BATCH * (STEPS + 20)),
            f"training_tokens: {BATCH * STEPS} -> {BATCH * (STEPS + 20)}",
        ),
        (dict(batch_size=64, training_tokens=64 * 2 * STEPS), "batch_size: 128 -> 64"),
        (dict(eval_fraction=0.1), "eval_fraction: 0.05 -> 0.1"),
        (dict(subtract_mean=True), "subtract_mean: false -> true"),
    ],
)
def test_a_changed_setting_is_refused_by_name(store, crashed, change, shown):
    before = _snapshot(crashed)
    with pytest.raises(ConfigError, match="--overwrite") as err:
        train_sae(_cfg(store, **change), out_dir=crashed, resume=True, progress=False)
    assert shown in str(err.value) and "started with other settings" in str(err.value)
    assert _snapshot(crashed) == before  # nothing written, nothing deleted


def test_unchanged_settings_resume_and_a_finished_run_is_checked_too(store, tmp_path):
    from vision_sae_lens.train.resume import run_settings

    with pytest.raises(RuntimeError, match="simulated crash"):
        train_sae(_cfg(CountingStore(store, crash_after=45)), out_dir=tmp_path, progress=False)
    # Only the fields of MAY_CHANGE_ON_RESUME differ: the run goes on from step 40.
    resumed = CountingStore(store)
    cfg = _cfg(resumed, log_every=7, keep_checkpoints=1, checkpoint_every_tokens=BATCH * 10, device="cpu")
    run = train_sae(cfg, out_dir=tmp_path, resume=True, progress=False)
    assert run.n_steps == STEPS and resumed.batches_read == STEPS - 40
    state = json.loads((run.path / "train_state.json").read_text())
    assert state["settings"] == run_settings(cfg, store.fingerprint)

    with pytest.raises(ConfigError, match="sae.k: 4 -> 5"):
        train_sae(
            _cfg(store, sae=TopKTrainingSAEConfig(d_in=D_IN, d_sae=64, k=5)),
            out_dir=tmp_path,
            resume=True,
            progress=False,
        )
    again = train_sae(_cfg(store), out_dir=tmp_path, resume=True, progress=False)
    assert again.training_sae is None and again.report == run.report


def test_cli_resume_with_another_batch_size_names_it(store, crashed, capsys):
    argv = [
        "train", "--store", str(store.path), "--site", SITE, "--architecture", "topk", "--d-sae", "64",
        "--k", "4", "--lr", "0.001", "--checkpoint-every-tokens", str(BATCH * 20), "--name", "run",
        "--out-dir", str(crashed), "--resume", "--no-progress",
    ]  # fmt: skip
    assert main([*argv, "--training-tokens", str(64 * 2 * STEPS), "--batch-size", "64"]) == 1
    err = capsys.readouterr().err
    assert "ConfigError" in err and "batch_size: 128 -> 64" in err and "corrupt" not in err.lower()


def test_every_setting_is_recorded_except_the_listed_ones(store):
    from vision_sae_lens.train.resume import MAY_CHANGE_ON_RESUME, run_settings

    cfg = _cfg(store)
    settings = run_settings(cfg, store.fingerprint)
    described = cfg.to_dict()
    sae_fields = {f"sae.{k}" for k in described.pop("sae")}
    assert set(settings) | set(MAY_CHANGE_ON_RESUME) == set(described) | sae_fields | {"store_fingerprint"}
    assert all(reason.strip() for reason in MAY_CHANGE_ON_RESUME.values())
    assert torch.tensor(settings["sae.k"]) == 4 and settings["batch_size"] == BATCH
