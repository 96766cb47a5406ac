"""Reproducing a saev run: its objective (L1 scale), its normalisation and token selection, and the
normalised SAE spliced back into the model (the transform inverted)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sae_lens import SAE, StandardTrainingSAE, StandardTrainingSAEConfig, TopKTrainingSAEConfig
from sae_lens.saes.sae import TrainingSAE, TrainStepInput

from vision_sae_lens.backbones import HookedSAEViT
from vision_sae_lens.metadata import vision_facts_of
from vision_sae_lens.normalization import (
    InputNormalization,
    input_normalization_of,
    unfold_input_normalization,
)
from vision_sae_lens.store import StoreWriter
from vision_sae_lens.train import TrainConfig, train_sae

SITE = "blocks.0.hook_resid_post"


def saev_vanilla_terms(sae: StandardTrainingSAE, x_bd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """saev's ``VanillaObjective`` terms: MSE averaged over batch *and* d, and L1 = mean_b sum_s f."""
    f_bs = torch.relu((x_bd - sae.b_dec) @ sae.W_enc + sae.b_enc)  # saev's encoder (pre-encoder bias)
    x_hat_bd = f_bs @ sae.W_dec + sae.b_dec
    return ((x_hat_bd - x_bd) ** 2).mean(), f_bs.abs().sum(dim=1).mean(dim=0)


def saev_vanilla_loss(sae: StandardTrainingSAE, x_bd: torch.Tensor, sparsity_coeff: float) -> torch.Tensor:
    """saev's loss: ``mse + sparsity_coeff * l1``."""
    mse, l1 = saev_vanilla_terms(sae, x_bd)
    return mse + sparsity_coeff * l1


def _saelens_step(sae: StandardTrainingSAE, x_bd: torch.Tensor, l1_coefficient: float):
    step = TrainStepInput(
        sae_in=x_bd,
        coefficients={"l1": l1_coefficient},
        dead_neuron_mask=None,
        n_training_steps=0,
        is_logging_step=False,
    )
    return sae.training_forward_pass(step)


def test_saev_sparsity_coeff_is_saelens_l1_coefficient_times_d():
    d, lam = 48, 4e-4
    torch.manual_seed(0)
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=192, l1_coefficient=d * lam))
    with torch.no_grad():  # saev keeps decoder rows at unit norm; random biases so every term matters
        sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    x_bd = torch.randn(256, d) * 2 + 0.3
    out = _saelens_step(sae, x_bd, d * lam)
    ours = saev_vanilla_loss(sae, x_bd, lam)
    # Same objective up to the constant factor d: same minimiser, and Adam is invariant to the factor.
    assert out.loss.item() == pytest.approx(d * ours.item(), rel=1e-5)
    mse, l1 = saev_vanilla_terms(sae, x_bd)
    assert out.losses["mse_loss"].item() == pytest.approx(d * mse.item(), rel=1e-5)
    assert out.losses["l1_loss"].item() == pytest.approx(d * lam * l1.item(), rel=1e-5)
    g_saelens = torch.autograd.grad(out.loss, sae.W_enc)[0]
    g_saev = torch.autograd.grad(saev_vanilla_loss(sae, x_bd, lam), sae.W_enc)[0]
    assert torch.allclose(g_saelens, d * g_saev, rtol=1e-4, atol=1e-7)
    # Passing saev's coefficient unchanged weights sparsity d times less than saev did.
    wrong = _saelens_step(sae, x_bd, lam)
    share_wrong = wrong.losses["l1_loss"].item() / wrong.losses["mse_loss"].item()
    share_saev = lam * l1.item() / mse.item()
    assert share_wrong == pytest.approx(share_saev / d, rel=1e-5)


# --------------------------------------------------------------------------- normalised training
def _tiny_model() -> HookedSAEViT:
    torch.manual_seed(0)
    return HookedSAEViT.from_pretrained(
        "timm:vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=10
    )


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Every token (CLS + 16 patches) of a tiny ViT's block 0 on 160 random images."""
    model = _tiny_model()
    images = torch.randn(160, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, cache = model.run_with_cache(images, names_filter=[SITE])
    acts_btd = cache[SITE]
    b, t, d = acts_btd.shape
    acts_btd = acts_btd.clone()
    acts_btd[:, 0] += 50.0  # a CLS row far from the patches, as in real ViTs
    writer = StoreWriter(
        tmp_path_factory.mktemp("all") / "acts",
        backbone_id=model.backbone_id,
        sites={SITE: d},
        d_model=d,
        layout=model.layout,
        tokens="all",
        dtype="float32",
        shard_rows=1024,
    )
    writer.append(
        {SITE: acts_btd.reshape(b * t, d).numpy()}, np.repeat(np.arange(b), t), np.tile(np.arange(t), b)
    )
    return model, images, writer.finish()


def _train(store, out, **kw):
    cfg = TrainConfig(
        store=store.path,
        site=SITE,
        sae=TopKTrainingSAEConfig(d_in=store.d_model, d_sae=128, k=8),
        training_tokens=128 * 16,
        batch_size=128,
        lr=1e-3,
        eval_fraction=0.2,
        checkpoint_every_tokens=128 * 8,
        tokens="patches",
        subtract_mean=True,
        scale_norm=True,
        **kw,
    )
    return train_sae(cfg, out_dir=out, progress=False)


def test_normalised_run_records_and_folds_the_transform(recorded, tmp_path):
    _, _, store = recorded
    run = _train(store, tmp_path)
    facts = vision_facts_of(run.sae)
    assert facts.tokens == "patches"
    norm = input_normalization_of(run.sae)
    assert norm is not None and norm.subtract_mean and norm.scale_norm
    # Statistics of the training rows only: every image but the held-out ones recorded in split.json.
    held_out = json.loads((run.path / "split.json").read_text())["eval_images"]
    assert held_out
    stats = store.statistics(SITE, exclude_images=held_out, token_types=["patches"], subtract_mean=True)
    assert torch.allclose(norm.mean_d, torch.from_numpy(stats["mean"]))
    assert norm.scale == pytest.approx(stats["scale"])
    # The folder loads with plain SAELens and keeps the record.
    loaded = SAE.load_from_disk(run.path)
    assert input_normalization_of(loaded).scale == pytest.approx(norm.scale)
    # Against the training state of the mid-run checkpoint (unfolded weights, trained on z):
    ckpt = tmp_path / "checkpoints" / run.name / "8"
    folded = SAE.load_from_disk(ckpt)
    trained = TrainingSAE.load_from_disk(ckpt / "trainer")
    patches = torch.cat([r.acts[r.token_idx > 0] for r in store.ordered(SITE, 512)])[:300]
    z = (patches - norm.mean_d) * norm.scale
    with torch.no_grad():
        f_raw, f_z = folded.encode(patches), trained.encode(z)
        # Same latents fire (their values differ by the decoder norms SAELens folds into TopK on saving).
        assert torch.equal(f_raw > 0, f_z > 0)
        recon = folded.decode(f_raw)
        assert torch.allclose(recon, trained.decode(f_z) / norm.scale + norm.mean_d, atol=1e-5)
        assert not torch.allclose(recon, trained.decode(f_z), atol=1e-2)  # the inversion matters
        # unfold gives back the SAE on z, latent for latent
        unfolded = unfold_input_normalization(folded)
        assert torch.allclose(unfolded.encode(z), f_raw, atol=1e-5)
        assert torch.allclose(norm.invert(unfolded.decode(unfolded.encode(z))), recon, atol=1e-5)
    report = json.loads((run.path / "eval.json").read_text())
    # Measured on the held-out images' patch rows only (their CLS rows are not the SAE's tokens).
    held = report["rows"]
    assert report["tokens"] == "patches" and report["n_rows"] == held["n_eval_rows"] - held["n_eval_images"]


def test_normalised_sae_spliced_into_the_model_inverts_the_transform(recorded, tmp_path):
    model, images, store = recorded
    run = _train(store, tmp_path)
    ckpt = tmp_path / "checkpoints" / run.name / "8"
    folded = SAE.load_from_disk(ckpt)
    trained = TrainingSAE.load_from_disk(ckpt / "trainer")
    norm = input_normalization_of(folded)
    x = images[:4]
    with torch.no_grad():
        _, clean = model.run_with_cache(x, names_filter=[SITE])
        _, spliced = model.run_with_cache_with_saes(x, saes=[folded])
    site_in = clean[SITE]
    site_out = spliced[f"{SITE}.hook_sae_output"]
    # Patches: the SAE trained on z, with the transform inverted on the way out.
    z = norm.apply(site_in[:, 1:].reshape(-1, site_in.shape[-1]))
    with torch.no_grad():
        expected = norm.invert(trained.decode(trained.encode(z))).reshape(4, 16, -1)
    assert torch.allclose(site_out[:, 1:], expected, atol=1e-4)
    # CLS is outside the SAE's tokens: untouched.
    assert torch.equal(site_out[:, 0], site_in[:, 0])


def test_eval_fraction_zero_evaluates_nothing_and_says_so(recorded, tmp_path, caplog):
    _, _, store = recorded
    cfg = TrainConfig(
        store=store.path,
        site=SITE,
        sae=TopKTrainingSAEConfig(d_in=store.d_model, d_sae=64, k=4),
        training_tokens=128 * 4,
        batch_size=128,
        eval_fraction=0.0,
        tokens="patches",
    )
    with caplog.at_level("WARNING"):
        run = train_sae(cfg, out_dir=tmp_path / "a", progress=False)
    assert run.report["evaluated"] is False and run.report["n_rows"] == 0 and "l0" not in run.report
    assert "eval_fraction=0" in caplog.text
    # With an evaluation store: measured there.
    import dataclasses

    run2 = train_sae(dataclasses.replace(cfg, eval_store=store.path), out_dir=tmp_path / "b", progress=False)
    assert run2.report["n_rows"] > 0 and run2.report["l0"] > 0


def test_input_normalization_round_trips_and_rejects_bad_scale():
    norm = InputNormalization(mean_d=torch.arange(4.0), scale=2.5, tokens="patches", rows=10)
    again = InputNormalization.from_metadata(json.loads(json.dumps(norm.to_metadata())))
    x = torch.randn(3, 4)
    assert torch.allclose(again.invert(again.apply(x)), x, atol=1e-6)
    assert torch.allclose(norm.apply(x), (x - torch.arange(4.0)) * 2.5)
    with pytest.raises(ValueError, match="scale"):
        InputNormalization(mean_d=None, scale=0.0)


def test_bad_input_options_are_refused_before_training(recorded):
    _, _, store = recorded
    base = dict(store=store.path, site=SITE, training_tokens=512, batch_size=128)
    with pytest.raises(ValueError, match="layer_norm"):
        TrainConfig(
            sae=TopKTrainingSAEConfig(d_in=store.d_model, d_sae=64, k=4, normalize_activations="layer_norm"),
            subtract_mean=True,
            **base,
        )
    with pytest.raises(ValueError, match="token selection"):
        TrainConfig(sae=TopKTrainingSAEConfig(d_in=store.d_model, d_sae=64, k=4), tokens="image", **base)


def test_analysis_encode_gives_the_latents_of_the_normalised_activations(recorded, tmp_path):
    from vision_sae_lens.analysis import encode_images

    model, images, store = recorded
    run = _train(store, tmp_path)
    norm = input_normalization_of(run.sae)
    unfolded = unfold_input_normalization(run.sae)  # the SAE as trained: it takes z
    x = images[:3]
    with torch.no_grad():
        _, clean = model.run_with_cache(x, names_filter=[SITE])
        z = norm.apply(clean[SITE][:, 1:].reshape(-1, clean[SITE].shape[-1]))
        expected = unfolded.encode(z).reshape(3, 4, 4, -1)
    feats = encode_images(model, run.sae, x, progress=False)
    assert feats.prefix is None  # a patches SAE has no CLS latents
    assert torch.allclose(feats.patches, expected, atol=1e-5)


def test_the_feed_never_modifies_a_batch_it_does_not_own():
    from vision_sae_lens.train.feed import _normalised

    norm = InputNormalization(mean_d=torch.ones(4), scale=2.0)
    data = torch.arange(32.0).reshape(8, 4)
    view = data[:4]
    out = _normalised(norm, view)
    assert torch.equal(data, torch.arange(32.0).reshape(8, 4))  # the shared data is untouched
    assert torch.equal(out, (view - 1) * 2)
    fresh = torch.arange(16.0).reshape(4, 4)
    assert _normalised(norm, fresh) is fresh and torch.equal(
        fresh, (torch.arange(16.0).reshape(4, 4) - 1) * 2
    )
