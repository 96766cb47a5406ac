"""Sweeps: one data pass for several SAEs, equal to training each alone; automatic group split; TOML."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from helpers import D_IN, OTHER_SITE, SITE, CountingStore
from sae_lens import JumpReLUTrainingSAEConfig, StandardTrainingSAEConfig, TopKTrainingSAEConfig
from safetensors.torch import load_file

from vision_sae_lens.errors import ConfigError, TrainingError
from vision_sae_lens.train import TrainConfig, load_sweep, train_sae
from vision_sae_lens.train.commands import register

BATCH, STEPS = 128, 150


def _configs(store, **overrides):
    common = dict(
        store=store, site=SITE, training_tokens=BATCH * STEPS, batch_size=BATCH, log_every=50, seed=3
    )
    common.update(overrides)
    return [
        TrainConfig(sae=TopKTrainingSAEConfig(d_in=D_IN, d_sae=64, k=4), lr=1e-3, **common),
        TrainConfig(
            sae=StandardTrainingSAEConfig(d_in=D_IN, d_sae=128, l1_coefficient=1.0), lr=5e-4, **common
        ),
        TrainConfig(
            sae=JumpReLUTrainingSAEConfig(d_in=D_IN, d_sae=96, l0_coefficient=0.1),
            lr=2e-3,
            lr_scheduler="cosineannealing",
            lr_warm_up_steps=10,
            **common,
        ),
    ]


def cli_main(argv):
    """Run this stage's sub-commands exactly as ``vision-sae-lens`` dispatches them."""
    import argparse

    parser = argparse.ArgumentParser(prog="vision-sae-lens")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def _weights(path):
    return load_file(path / "sae_weights.safetensors")


@pytest.mark.slow
def test_sweep_reads_each_batch_once_and_equals_separate_runs(store, tmp_path):
    shared = CountingStore(store)
    runs = train_sae(_configs(shared), out_dir=tmp_path / "sweep", progress=False)
    assert shared.batches_read == STEPS  # not 3 x STEPS
    assert len({r.path for r in runs}) == 3

    for cfg, swept in zip(_configs(store), runs, strict=True):
        alone_store = CountingStore(store)
        alone_cfg = TrainConfig(**{**cfg.__dict__, "store": alone_store})
        alone = train_sae(alone_cfg, out_dir=tmp_path / f"alone_{swept.name}", progress=False)
        assert alone_store.batches_read == STEPS
        a, b = _weights(swept.path), _weights(alone.path)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (swept.name, key)
        assert swept.report["nmse"] == alone.report["nmse"]

    summary = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [row["name"] for row in summary] == [r.name for r in runs]
    assert (tmp_path / "sweep" / "sweep_l0_vs_nmse.png").stat().st_size > 0


def test_config_on_another_site_is_split_into_its_own_pass(store, tmp_path, caplog):
    counting = CountingStore(store)
    cfgs = _configs(counting)[:2]
    other = TrainConfig(**{**cfgs[1].__dict__, "site": OTHER_SITE, "name": "other_site"})
    with caplog.at_level(logging.WARNING, logger="vision_sae_lens.train.sweep"):
        runs = train_sae([cfgs[0], other, cfgs[1]], out_dir=tmp_path, progress=False)
    assert counting.batches_read == 2 * STEPS  # two passes: SITE (2 SAEs) and OTHER_SITE (1 SAE)
    assert "other_site" in caplog.text and "site" in caplog.text and "separate pass" in caplog.text
    assert [r.name for r in runs][1] == "other_site"
    assert runs[1].sae.cfg.metadata.hook_name == OTHER_SITE


def test_toml_sweep_through_the_cli(store, tmp_path):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        f"""
out_dir = "out"
[defaults]
store = "{store.path}"
site = "{SITE}"
training_tokens = {BATCH * 40}
batch_size = {BATCH}
lr = 1e-3

[[sae]]
architecture = "topk"
d_sae = 64
k = 4

[[sae]]
architecture = "batchtopk"
d_sae = 64
k = 4
name = "btk"

[[sae]]
architecture = "l1"
d_in = {D_IN}
d_sae = 64
l1_coefficient = 2.0
lr = 3e-4
"""
    )
    cfgs, out_dir = load_sweep(sweep)
    assert out_dir == "out" and [c.architecture for c in cfgs] == ["topk", "batchtopk", "standard"]
    assert cfgs[0].sae.d_in == D_IN and cfgs[2].lr == 3e-4 and cfgs[1].name == "btk"

    with pytest.raises(ConfigError, match="concurrent_steps must be at least 1"):
        cli_main(["train", "--config", str(sweep), "--no-progress", "--concurrent-steps", "0"])
    assert not (tmp_path / "out" / "btk").exists()  # refused before any work
    argv = ["train", "--config", str(sweep), "--device", "cpu", "--no-progress", "--concurrent-steps", "3"]
    assert cli_main(argv) == 0
    out = tmp_path / "out"
    assert (out / "btk" / "cfg.json").is_file() and (out / "sweep.json").is_file()
    assert json.loads((out / "btk" / "cfg.json").read_text())["architecture"] == "jumprelu"

    assert (
        cli_main(["evaluate", str(out / "btk"), "--store", str(store.path), "--out", str(tmp_path / "ev")])
        == 0
    )
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["architecture"] == "jumprelu" and report["l0"] > 0


def test_bad_sweep_files_say_what_is_wrong(tmp_path, store):
    import pytest

    bad = tmp_path / "bad.toml"
    bad.write_text(
        f'[defaults]\nstore = "{store.path}"\nsite = "{SITE}"\ntraining_tokens = 1000\n[[sae]]\narchitecture = "topkk"\nd_sae = 8\n'
    )
    with pytest.raises(ValueError, match="Did you mean: topk"):
        load_sweep(bad)
    bad.write_text(
        f'[defaults]\nstore = "{store.path}"\nsite = "{SITE}"\ntraining_tokens = 1000\n[[sae]]\narchitecture = "topk"\nd_sae = 8\nkk = 3\n'
    )
    with pytest.raises(ValueError, match="no field"):
        load_sweep(bad)


def test_sweep_steps_saes_side_by_side_on_a_cpu(store, tmp_path, monkeypatch):
    """On a small CPU two SAEs of a sweep take their steps at the same time (by default), each SAE's steps
    still in order; ``concurrent_steps=1``, or a CPU of many threads, steps them one after another."""
    import threading
    import time

    from vision_sae_lens.train.fast_trainer import FastSAETrainer

    original = FastSAETrainer.step
    running, overlaps, lock = set(), [], threading.Lock()

    def watched_step(trainer, batch, **kwargs):
        with lock:
            running.add(id(trainer))
            overlaps.append(len(running))
        time.sleep(0.002)  # long enough for the other SAE's step to start, if it runs side by side
        try:
            return original(trainer, batch, **kwargs)
        finally:
            with lock:
                running.discard(id(trainer))

    monkeypatch.setattr(FastSAETrainer, "step", watched_step)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # a small CPU, whatever runs the tests
    configs = _configs(store, training_tokens=BATCH * 20)[:2]
    train_sae(configs, out_dir=tmp_path / "side", progress=False)
    assert max(overlaps) == 2 and len(overlaps) == 40
    overlaps.clear()
    train_sae(configs, out_dir=tmp_path / "one", progress=False, concurrent_steps=1)
    assert max(overlaps) == 1 and len(overlaps) == 40
    overlaps.clear()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)  # a larger CPU: one at a time by default
    train_sae(configs, out_dir=tmp_path / "big", progress=False)
    assert max(overlaps) == 1 and len(overlaps) == 40
    with pytest.raises(ConfigError, match="concurrent_steps must be at least 1"):
        train_sae(configs, out_dir=tmp_path / "zero", progress=False, concurrent_steps=0)


def test_a_failing_step_in_a_side_by_side_sweep_stops_the_sweep(store, tmp_path):
    """One SAE's loss becomes NaN while another steps beside it: the run stops with that SAE's error."""
    configs = _configs(store, training_tokens=BATCH * 20)[:2]
    configs[1] = TrainConfig(**{**configs[1].__dict__, "lr": 1e30})  # diverges within a few steps
    with pytest.raises(TrainingError, match="loss became"):
        train_sae(configs, out_dir=tmp_path, progress=False)
