"""The GPU path's training options, exercised on a CPU: bfloat16 autocast trains, saves float32 weights that
SAELens loads, and reconstructs as well as the float32 run."""

from __future__ import annotations

import torch
from helpers import D_IN, SITE
from sae_lens import SAE, TopKTrainingSAEConfig
from safetensors.torch import load_file

from vision_sae_lens.train import TrainConfig, train_sae


def test_bf16_autocast_trains_as_well_as_float32(store, tmp_path):
    def cfg(autocast: bool) -> TrainConfig:
        return TrainConfig(store=store, site=SITE, sae=TopKTrainingSAEConfig(d_in=D_IN, d_sae=64, k=4),
                           training_tokens=128 * 60, batch_size=128, lr=3e-3, autocast=autocast, device="cpu")  # fmt: skip

    full = train_sae(cfg(False), out_dir=tmp_path / "fp32", progress=False)
    half = train_sae(cfg(True), out_dir=tmp_path / "bf16", progress=False)
    a, b = load_file(full.path / "sae_weights.safetensors"), load_file(half.path / "sae_weights.safetensors")
    assert all(
        t.dtype == torch.float32 for t in b.values()
    )  # autocast changes the step's math, not the weights
    assert not torch.equal(a["W_enc"], b["W_enc"])  # the step did run in bfloat16
    # Adam turns bfloat16's rounding into different updates, so the weights part; the SAE learns as well
    assert SAE.load_from_disk(half.path).cfg.d_sae == 64
    assert half.report["nmse"] < 0.9 and full.report["nmse"] < 0.9  # both learned (1 = predicting the mean)
    assert abs(half.report["nmse"] - full.report["nmse"]) < 0.05 * full.report["nmse"]
