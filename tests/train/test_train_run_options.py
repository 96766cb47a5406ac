"""saev's run options from the command line and TOML: tokens, normalisation, warm-up, seeds, eval split,
init; silent progress; timestamped log lines."""

from __future__ import annotations

import functools
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sae_lens import TopKTrainingSAEConfig

from vision_sae_lens.backbones import TokenLayout
from vision_sae_lens.cli import LOG_DATE_FORMAT, LOG_FORMAT
from vision_sae_lens.normalization import input_normalization_of
from vision_sae_lens.store import StoreWriter
from vision_sae_lens.train import TrainConfig, train_sae
from vision_sae_lens.train.sweep import load_sweep

LAYOUT = TokenLayout(image_size=(16, 16), patch_size=(4, 4), has_cls=True)  # CLS + 16 patches
SITE = "blocks.2.hook_resid_post"
D = 16


@pytest.fixture(scope="module")
def all_tokens_store(tmp_path_factory):
    g = np.random.default_rng(0)
    n_images, t = 120, LAYOUT.n_tokens
    acts = (g.normal(1.0, 1.0, (n_images, t, D))).astype(np.float32)
    acts[:, 0] += 30.0
    writer = StoreWriter(
        tmp_path_factory.mktemp("all") / "acts",
        backbone_id="timm:test_vit",
        sites={SITE: D},
        d_model=D,
        layout=LAYOUT,
        tokens="all",
        dtype="float32",
    )
    writer.append(
        {SITE: acts.reshape(-1, D)}, np.repeat(np.arange(n_images), t), np.tile(np.arange(t), n_images)
    )
    return writer.finish()


@pytest.mark.slow
def test_cli_flags_reach_the_run_and_log_lines_carry_timestamps(all_tokens_store, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vision_sae_lens", "train", "--store", str(all_tokens_store.path)]
    cmd += ["--site", SITE, "--d-sae", "32", "--k", "4", "--training-tokens", "512", "--batch-size", "64"]
    cmd += ["--tokens", "patches", "--subtract-mean", "--scale-norm", "--warm-up", "2", "--seed", "3"]
    cmd += ["--data-seed", "5", "--eval-fraction", "0", "--decoder-init-norm", "1.0", "--device", "cpu"]
    cmd += ["--normalize-activations", "expected_average_only_in", "--no-progress", "--out-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=600)
    assert proc.returncode == 0, proc.stderr
    [folder] = [p for p in out.iterdir() if p.is_dir() and p.name != "checkpoints"]
    cfg = json.loads((folder / "train_config.json").read_text())
    assert (cfg["tokens"], cfg["subtract_mean"], cfg["scale_norm"]) == ("patches", True, True)
    assert (cfg["lr_warm_up_steps"], cfg["seed"], cfg["data_seed"], cfg["eval_fraction"]) == (2, 3, 5, 0.0)
    assert cfg["sae"]["decoder_init_norm"] == 1.0
    assert cfg["sae"]["normalize_activations"] == "expected_average_only_in"
    meta = json.loads((folder / "cfg.json").read_text())["metadata"]
    assert meta["tokens"] == "patches" and meta["input_normalization"]["subtract_mean"] is True
    # SAELens' scaling factor and ours are both folded: the folder takes raw activations.
    assert json.loads((folder / "cfg.json").read_text())["normalize_activations"] == "none"
    # eval_fraction=0: nothing evaluated, and said so, in a timestamped log line and on stdout.
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING .*eval_fraction=0", proc.stderr, re.M)
    assert "not evaluated" in proc.stdout
    assert "%|" not in proc.stderr  # --no-progress: no bar at all


def test_log_format_has_a_timestamp():
    record = logging.LogRecord("vision_sae_lens.x", logging.INFO, __file__, 1, "hello", None, None)
    line = logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT).format(record)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO vision_sae_lens.x: hello", line)


@pytest.mark.parametrize("progress", [False, True])
def test_progress_false_silences_every_bar(all_tokens_store, tmp_path, capsys, progress):
    from sae_lens.training import activation_scaler

    assert hasattr(activation_scaler, "tqdm")  # the seam quiet_norm_estimate relies on
    cfg = TrainConfig(
        store=all_tokens_store.path,
        site=SITE,
        sae=TopKTrainingSAEConfig(d_in=D, d_sae=32, k=4, normalize_activations="expected_average_only_in"),
        n_batches_for_norm_estimate=2,
        training_tokens=256,
        batch_size=64,
        eval_fraction=0.25,
        device="cpu",
    )
    train_sae(cfg, out_dir=tmp_path, progress=progress)
    err = capsys.readouterr().err
    if progress:  # the control: bars do show by default, SAELens' norm estimate included
        assert "evaluating" in err and "step" in err and "norm" in err.lower()
    else:
        assert "evaluating" not in err and "%|" not in err
    assert activation_scaler.tqdm.__class__ is not functools.partial  # restored


def test_toml_sweep_takes_the_saev_options(all_tokens_store, tmp_path):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        f"""
[defaults]
store = "{all_tokens_store.path}"
site = "{SITE}"
training_tokens = 256
batch_size = 64
tokens = "patches"
subtract_mean = true
scale_norm = true
lr_warm_up_steps = 1
device = "cpu"
[[sae]]
architecture = "standard"
d_sae = 32
l1_coefficient = {D * 4e-4}
normalize_activations = "none"
[[sae]]
architecture = "topk"
d_sae = 32
k = 4
"""
    )
    configs, _ = load_sweep(sweep)
    assert all(c.tokens == "patches" and c.subtract_mean and c.scale_norm for c in configs)
    runs = train_sae(configs, out_dir=tmp_path / "out", progress=False)
    norms = [input_normalization_of(r.sae) for r in runs]
    assert norms[0].scale == norms[1].scale and norms[0].tokens == "patches"
    with pytest.raises(ValueError, match="did not record|tokens"):
        sweep.write_text(sweep.read_text().replace('tokens = "patches"', 'tokens = "registers"'))
        train_sae(load_sweep(sweep)[0], out_dir=tmp_path / "bad", progress=False)
