"""Every SAELens training architecture trains from a real store and saves a loadable SAELens folder."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import D_IN, SITE
from sae_lens import SAE, GatedSAE, JumpReLUSAE, StandardSAE, TopKSAE
from sae_lens.saes import AbsTopKSAE, MatchingPursuitSAE

from vision_sae_lens.metadata import vision_facts_of
from vision_sae_lens.train import TrainConfig, build_sae_config, train_sae, training_architectures

BATCH, STEPS, D_SAE = 128, 300, 128

ARCH_FIELDS = {
    "standard": ({"l1_coefficient": 0.5}, StandardSAE),
    "topk": ({"k": 8}, TopKSAE),
    "abstopk": ({"k": 8}, AbsTopKSAE),
    "batchtopk": ({"k": 8}, JumpReLUSAE),
    "matryoshka_batchtopk": ({"k": 8, "matryoshka_widths": [32, 128]}, JumpReLUSAE),
    "jumprelu": ({"l0_coefficient": 0.05}, JumpReLUSAE),
    "gated": ({"l1_coefficient": 0.5}, GatedSAE),
    "matching_pursuit": (
        {"residual_threshold": 0.3, "max_iterations": 8, "decoder_init_norm": 1.0},
        MatchingPursuitSAE,
    ),
}


def test_every_saelens_training_architecture_is_covered():
    assert set(training_architectures()) == set(ARCH_FIELDS)


@pytest.mark.parametrize("arch", sorted(ARCH_FIELDS))
def test_architecture_trains_and_round_trips(arch, store, tmp_path):
    fields, inference_cls = ARCH_FIELDS[arch]
    cfg = TrainConfig(
        store=store.path,
        site=SITE,
        sae=build_sae_config(arch, d_in=D_IN, d_sae=D_SAE, **fields),
        training_tokens=BATCH * STEPS,
        batch_size=BATCH,
        lr=1e-3,
        log_every=10,
        device="auto",
    )
    run = train_sae(cfg, out_dir=tmp_path, progress=False)

    losses = [h["loss"] for h in run.history]
    assert run.n_steps == STEPS and len(losses) == STEPS // 10
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses

    for name in ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors", "eval.json"):
        assert (run.path / name).is_file()
    loaded = SAE.load_from_disk(run.path)
    assert type(loaded) is inference_cls

    x = store.read_rows(SITE, 15000, 15256)
    got = loaded.encode(x)
    if arch in ("batchtopk", "matryoshka_batchtopk"):
        # Saved as JumpReLU with the learned batch-top-k threshold on the (decoder-norm scaled) pre-activations.
        _, hidden_pre = run.training_sae.encode_with_hidden_pre(x)
        threshold = float(run.training_sae.topk_threshold)
        want = hidden_pre * (hidden_pre > threshold)
        assert 0 < (got != 0).float().sum(-1).mean() < D_SAE
    else:
        want = run.training_sae.encode(x)
    torch.testing.assert_close(got, want.detach(), rtol=1e-4, atol=1e-5)

    facts = vision_facts_of(loaded)
    assert facts is not None
    assert facts.hook_name == SITE and facts.tokens == "patches" and facts.backbone == "timm:test_vit"
    assert facts.layout == store.layout and facts.store_fingerprint == store.fingerprint
    assert facts.training_tokens == BATCH * STEPS
    assert facts.preprocessing["size"] == [32, 32] and facts.dataset["name"] == "synthetic"
    assert loaded.cfg.metadata.sae_lens_version == __import__("sae_lens").__version__

    report = json.loads((run.path / "eval.json").read_text())
    for key in ("mse", "nmse", "explained_variance", "l0", "dead_fraction", "dense_fraction"):
        assert isinstance(report[key], float), key
    assert report["explained_variance"] == pytest.approx(1 - report["nmse"], abs=1e-6)
    assert 0 < report["explained_variance"] < 1
    assert report["rows"]["held_out"] and report["n_rows"] == report["rows"]["n_eval_rows"] > 0
    assert report["density_rows"] == store.n_rows  # dead / dense over the whole store
    assert (run.path / "density.png").stat().st_size > 0
