"""Out-of-the-box training: defaults scaled to the run, warnings for traps, every field on the CLI."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
from helpers import D_IN, SITE
from sae_lens import StandardTrainingSAEConfig, TopKTrainingSAEConfig
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

from vision_sae_lens.cli import main as cli_main
from vision_sae_lens.train import TrainConfig, build_sae_config, train_sae
from vision_sae_lens.train.config import default_batch_size, default_lr


def test_defaults_scale_with_the_run():
    cfg = TrainConfig(
        store="x", site=SITE, sae=TopKTrainingSAEConfig(d_in=8, d_sae=512, k=4), training_tokens=10**6
    )
    assert cfg.batch_size == 512 and cfg.n_steps == 1953  # 1M / 1000 rounded down to a power of two
    assert cfg.dead_feature_window == 19 < cfg.n_steps  # AuxK switches on early in the run
    assert cfg.auxk_relu  # on ReLU'd pre-activations, as OpenAI's reference
    assert cfg.lr_warm_up_steps == 97 and cfg.lr_scheduler == "constant"
    assert cfg.lr == pytest.approx(2e-4 * (2**14 / 512) ** 0.5) and cfg.lr_end == pytest.approx(cfg.lr / 10)
    big = TrainConfig(
        store="x", site=SITE, sae=TopKTrainingSAEConfig(d_in=8, d_sae=2**14, k=4), training_tokens=10**9
    )
    assert big.batch_size == 4096 and big.dead_feature_window == 1000 and big.lr_warm_up_steps == 1000
    assert big.lr == pytest.approx(2e-4)
    assert (
        default_batch_size(1000) == 256
        and default_batch_size(5 * 10**6) == 4096
        and default_lr(2**16) == 1e-4
    )


def test_topk_family_starts_from_a_unit_norm_decoder():
    assert build_sae_config("topk", d_in=8, d_sae=16, k=2).decoder_init_norm == 1.0
    assert build_sae_config("batchtopk", d_in=8, d_sae=16, k=2).decoder_init_norm == 1.0
    assert (
        build_sae_config("standard", d_in=8, d_sae=16).decoder_init_norm
        == StandardTrainingSAEConfig(d_in=8, d_sae=16).decoder_init_norm
    )  # L1 SAEs keep SAELens' default
    assert build_sae_config("topk", d_in=8, d_sae=16, k=2, decoder_init_norm=0.1).decoder_init_norm == 0.1
    # AuxK weighted 4x for TopK / BatchTopK (measured with auxk_relu); others keep SAELens' weight
    assert build_sae_config("topk", d_in=8, d_sae=16, k=2).aux_loss_coefficient == 4.0
    assert build_sae_config("batchtopk", d_in=8, d_sae=16, k=2).aux_loss_coefficient == 4.0
    assert (
        build_sae_config("matryoshka", d_in=8, d_sae=16, k=2, matryoshka_widths=[4, 16]).aux_loss_coefficient
        == 1.0
    )


def test_b_dec_starts_at_zeros_or_on_request_at_the_data_mean(store, tmp_path):
    cfg = TrainConfig(
        store=store.path, site=SITE, sae=TopKTrainingSAEConfig(d_in=D_IN, d_sae=64, k=4), training_tokens=64,
        batch_size=64, lr=1e-12, lr_warm_up_steps=0,
    )  # fmt: skip
    zeros = train_sae(cfg, out_dir=tmp_path / "z", progress=False)
    assert zeros.sae.b_dec.abs().max() < 1e-6
    run = train_sae(dataclasses.replace(cfg, b_dec_init="mean"), out_dir=tmp_path / "m", progress=False)
    mean = torch.as_tensor(store.read_rows(SITE, 0, store.n_rows)).mean(0)
    # One 64-row batch: its mean is close to, but not exactly, the store mean; zeros are far.
    assert (run.sae.b_dec - mean).norm() < 0.5 * mean.norm()


def test_warnings_for_a_short_window_and_a_poor_result(store, tmp_path, caplog):
    cfg = TrainConfig(
        store=store.path, site=SITE, sae=TopKTrainingSAEConfig(d_in=D_IN, d_sae=512, k=1, decoder_init_norm=0.1),
        training_tokens=64 * 5, batch_size=64, dead_feature_window=1000,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="vision_sae_lens.train.outputs"):
        run = train_sae(cfg, out_dir=tmp_path, progress=False)
    text = caplog.text
    assert "fewer than its dead_feature_window of 1000" in text
    assert run.report["nmse"] > 1 and "NMSE" in text  # 5 steps from a random SAE
    caplog.clear()
    standard = dataclasses.replace(cfg, sae=StandardTrainingSAEConfig(d_in=D_IN, d_sae=64))
    with caplog.at_level(logging.WARNING, logger="vision_sae_lens.train.outputs"):
        train_sae(standard, out_dir=tmp_path / "l1", progress=False)
    assert "dead_feature_window" not in caplog.text  # an L1 loss never reads the window
    caplog.clear()
    from vision_sae_lens.train.outputs import warn_poor_result

    with caplog.at_level(logging.WARNING, logger="vision_sae_lens.train.outputs"):
        warn_poor_result("r", {**run.report, "nmse": 0.05, "dead_fraction": 0.21})
    assert "21% of latents are dead" in caplog.text and "NMSE" not in caplog.text


def test_cli_exposes_every_field_with_its_default(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(TrainConfig):
        if f.name not in ("store", "site", "sae"):
            assert f"--{f.name.replace('_', '-')}" in out, f.name
    for _, cfg_cls in SAE_TRAINING_CLASS_REGISTRY.values():
        for f in dataclasses.fields(cfg_cls):
            if f.name not in ("d_in", "metadata", "device"):
                assert f"--{f.name.replace('_', '-')}" in out, f.name
    assert "(default: constant)" in out and "1.0 for batchtopk" in out


def test_cli_flags_reach_the_configs(store, tmp_path):
    args = [
        "train", "--store", str(store.path), "--site", SITE, "--architecture", "topk", "--d-sae", "64", "--k", "4",
        "--training-tokens", "640", "--batch-size", "64", "--adam-beta1", "0.8", "--decoder-init-norm", "0.5",
        "--aux-loss-coefficient", "0.25", "--no-rescale-acts-by-decoder-norm", "--split-seed", "3",
        "--out-dir", str(tmp_path), "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    assert cli_main(args) == 0
    folder = next(p for p in tmp_path.iterdir() if p.name.startswith("topk"))
    train_cfg = json.loads((folder / "train_config.json").read_text())
    assert train_cfg["adam_beta1"] == 0.8 and train_cfg["split_seed"] == 3 and train_cfg["batch_size"] == 64
    sae = train_cfg["sae"]
    assert sae["k"] == 4 and isinstance(sae["k"], int) and sae["decoder_init_norm"] == 0.5
    assert sae["aux_loss_coefficient"] == 0.25 and sae["rescale_acts_by_decoder_norm"] is False
