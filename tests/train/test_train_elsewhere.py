"""Rows for ViSAEBench (``vision_sae_lens.train.elsewhere``): the right site, tokens and units, and its numbers
checked against the package's own (FVU, L0, dead latents, the per-image codes its sparse probing fits)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from helpers import build_tiny, random_images

from vision_sae_lens.data import open_images
from vision_sae_lens.errors import ConfigError, SAEMismatchError, StoreMismatchError, UnknownSiteError
from vision_sae_lens.store import cache_activations
from vision_sae_lens.train import TrainConfig, build_sae_config, evaluate_sae, train_sae
from vision_sae_lens.train.elsewhere import visaebench_inputs, visaebench_layer

SITE = "blocks.1.hook_resid_post"
HAS_VISAEBENCH = importlib.util.find_spec("visaebench") is not None
needs_visaebench = pytest.mark.skipif(
    not HAS_VISAEBENCH,
    reason="visaebench is not installed (pip install --no-deps visaebench==0.1.0; see docs/evaluating_elsewhere.md)",
)


@pytest.fixture(scope="module")
def digits():
    """A TopK SAE trained on the demo backbone's patch rows of 300 test digits, and that store (CLS + patches)."""
    from vision_sae_lens.backbones import HookedSAEViT
    from vision_sae_lens.demo import DEMO_BACKBONE_ID

    model = HookedSAEViT.from_pretrained(DEMO_BACKBONE_ID)
    images = open_images("demo:mnist:test", limit=300)
    return model, images


@pytest.fixture(scope="module")
def digit_run(digits, tmp_path_factory):
    model, images = digits
    root = tmp_path_factory.mktemp("elsewhere")
    store = cache_activations(
        model, images, sites=[SITE], tokens="all", dtype="float32", out_dir=root / "acts", progress=False
    )
    cfg = TrainConfig(
        store=store,
        site=SITE,
        sae=build_sae_config("topk", d_in=store.site_dim(SITE), d_sae=96, k=8),
        training_tokens=30_000,
        tokens="patches",
        seed=0,
    )
    run = train_sae(cfg, out_dir=root / "saes", progress=False)
    return run.sae, store


def test_rows_are_the_patch_tokens_of_the_site_without_registers(tmp_path):
    # a backbone with CLS and 2 registers: ViSAEBench's own extraction would keep the registers
    model = build_tiny(reg_tokens=2)
    images = random_images(6, seed=1)
    store = cache_activations(
        model, images, sites=[SITE], tokens="all", dtype="float32", out_dir=tmp_path / "acts", progress=False
    )
    sae = _tiny_sae(store.site_dim(SITE), SITE)
    inputs = visaebench_inputs(sae, store)
    layout = store.layout
    assert layout.n_prefix == 3
    _, cache = model.run_with_cache(images, names_filter=SITE)
    torch.testing.assert_close(inputs.activations, cache[SITE][:, layout.n_prefix :], rtol=1e-5, atol=1e-5)
    assert inputs.activations.shape == (6, layout.n_patches, store.site_dim(SITE))
    assert inputs.rows.shape == (6 * layout.n_patches, store.site_dim(SITE))
    assert inputs.grid == layout.grid and inputs.layer == 1 and inputs.labels is None
    assert inputs.metric_kwargs() == {"mean": None, "std": None, "dict_size": sae.cfg.d_sae}


def test_draw_of_images_is_seeded_stratified_and_not_the_first(digit_run):
    sae, store = digit_run
    labels = np.asarray(store.labels)
    first = visaebench_inputs(sae, store, max_images=50, seed=3)
    again = visaebench_inputs(sae, store, max_images=50, seed=3)
    other = visaebench_inputs(sae, store, max_images=50, seed=4)
    np.testing.assert_array_equal(first.image_indices, again.image_indices)
    assert not np.array_equal(first.image_indices, other.image_indices)
    assert not np.array_equal(first.image_indices, np.arange(50))
    np.testing.assert_array_equal(first.labels, labels[first.image_indices])
    # every digit keeps its share of the 300 (30 each) in a draw of 50: 5 each
    assert np.bincount(first.labels, minlength=10).tolist() == [5] * 10


def test_refuses_what_visaebench_cannot_score(tmp_path, digit_run):
    sae, store = digit_run
    assert visaebench_layer("blocks.7.hook_resid_post") == 7
    with pytest.raises(ConfigError, match="output of block"):
        visaebench_layer("blocks.7.hook_mlp_out")
    with pytest.raises(UnknownSiteError, match="no site"):
        visaebench_inputs(_tiny_sae(sae.cfg.d_in, "blocks.0.hook_resid_post"), store)
    with pytest.raises(SAEMismatchError, match="d_in"):
        visaebench_inputs(_tiny_sae(sae.cfg.d_in + 1, SITE), store)
    with pytest.raises(ConfigError, match="max_images"):
        visaebench_inputs(sae, store, max_images=0)
    model = build_tiny()
    cls_store = cache_activations(
        model, random_images(2), sites=[SITE], tokens="cls", out_dir=tmp_path / "cls", progress=False
    )
    with pytest.raises(StoreMismatchError, match="patch tokens"):
        visaebench_inputs(_tiny_sae(cls_store.site_dim(SITE), SITE), cls_store)


@needs_visaebench
def test_visaebench_fvu_l0_and_dead_against_the_packages_evaluation(digit_run):
    from visaebench.metrics.reconstruction.fvu import FVU

    sae, store = digit_run
    inputs = visaebench_inputs(sae, store)  # every image: the same patch rows evaluate_sae reads below
    with torch.no_grad():  # ViSAEBench's FVU runs the SAE with gradients on (docs/evaluating_elsewhere.md)
        theirs = FVU(batch_size=1000).compute(sae, inputs.rows, device="cpu", **inputs.metric_kwargs())
    ours = evaluate_sae(sae, store, start_row=0, max_rows=store.n_rows, progress=False)
    n = inputs.rows.shape[0]
    assert ours["n_rows"] == ours["density_rows"] == n
    assert theirs.metadata["l0"] == pytest.approx(ours["l0"], rel=1e-6)
    assert theirs.metadata["dead_features"] == ours["dead"]  # both over exactly these rows
    # Ours: SSE / (Σ‖x‖² − n‖x̄‖²). ViSAEBench's: (SSE/n − r̄²) / (E‖x‖² − s̄²), where s̄ (r̄) is the mean of
    # a row's (residual's) coordinate SUM, not the mean vector: on uncentred rows its denominator differs.
    x = inputs.rows.double()
    with torch.no_grad():
        r = x - sae.decode(sae.encode(inputs.rows)).double()
    sse = ours["mse_per_row"] * n
    total_var = sse / ours["nmse"]  # our denominator, from our own report
    mean_d = x.mean(0)
    assert total_var == pytest.approx(float(x.pow(2).sum() - n * mean_d.pow(2).sum()), rel=1e-6)
    their_denominator = float(x.pow(2).sum(1).mean() - x.sum(1).mean() ** 2)
    expected = (sse / n - float(r.sum(1).mean()) ** 2) / their_denominator
    assert theirs.value == pytest.approx(expected, rel=1e-5)
    assert their_denominator != pytest.approx(total_var / n, rel=0.01)  # the trap is real on these rows


@needs_visaebench
def test_visaebench_sparse_probing_fits_the_packages_image_codes(digit_run, digits):
    from visaebench.metrics.concept_detection.sparse_probing import SparseProbing

    from vision_sae_lens.analysis import encode_images

    sae, store = digit_run
    model, images = digits
    inputs = visaebench_inputs(sae, store, max_images=200, seed=0)
    probing = SparseProbing(k_values=[1, 5, 20], batch_size=1000)
    theirs = probing.compute(
        sae, inputs.activations, labels=inputs.labels, device="cpu", seed=0, **_no_norm(inputs)
    )
    # The package's own route: the backbone forward with the SAE, patches kept, max over each image's patches.
    source = [images[int(i)] for i in inputs.image_indices]
    feats = encode_images(model, sae, [im for im, _ in source], progress=False)
    codes_ns = feats.patches.flatten(1, 2).amax(1)
    np.testing.assert_array_equal(inputs.labels, [label for _, label in source])
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(inputs.activations).amax(1), codes_ns, rtol=1e-4, atol=1e-4)
    # ViSAEBench's probe on those codes (an identity "SAE" makes its max-pool a no-op on 1-patch images)
    on_ours = probing.compute(
        _Identity(), codes_ns[:, None, :], labels=inputs.labels, device="cpu", seed=0, **_no_norm(inputs)
    )
    assert theirs.metadata["k_accuracies"] == on_ours.metadata["k_accuracies"]
    assert theirs.value == on_ours.value
    assert theirs.metadata["k_accuracies"][20] > 0.5  # ten digits: chance is 0.1


class _Identity(torch.nn.Module):
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


def _no_norm(inputs) -> dict:
    kwargs = inputs.metric_kwargs()
    kwargs.pop("dict_size")
    return kwargs


def _tiny_sae(d_in: int, hook_name: str):
    from sae_lens import TopKSAE, TopKSAEConfig

    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=16, k=2))
    sae.cfg.metadata.hook_name = hook_name
    return sae
