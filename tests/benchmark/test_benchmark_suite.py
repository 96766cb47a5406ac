"""The synthetic suite end to end: the world, the shipped backbone, ``score`` and the ``bench`` CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from vision_sae_lens.backbones import HookedSAEViT
from vision_sae_lens.backbones.shapes_vit import shapes_backbone_info
from vision_sae_lens.benchmark import score
from vision_sae_lens.cli import main
from vision_sae_lens.data import open_images
from vision_sae_lens.data.synthetic import FACTOR_NAMES, ShapesWorld, patch_coverage
from vision_sae_lens.errors import ImageInputError, SAEMismatchError, StoreMismatchError
from vision_sae_lens.metadata import VisionFacts, apply_vision_facts
from vision_sae_lens.store import cache_activations

SITE = "blocks.1.hook_resid_post"
N_TEST = 24


@pytest.fixture(scope="module")
def model():
    return HookedSAEViT.from_pretrained("demo:shapes-vit")


@pytest.fixture(scope="module")
def sae(model):
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=model.d_model, d_sae=48))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    apply_vision_facts(
        sae, VisionFacts(backbone="demo:shapes-vit", hook_name=SITE, tokens="patches", layout=model.layout)
    )
    sae.cfg.metadata.hook_name = SITE
    return sae


@pytest.fixture(scope="module")
def test_store(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "acts-test"
    world = ShapesWorld("test", n_images=N_TEST)
    return cache_activations(
        model, world, sites=[SITE], tokens="patches", dtype="float32", out_dir=out, progress=False
    )


def test_world_is_deterministic_split_apart_and_its_masks_match_the_pixels():
    world = open_images("synthetic:shapes:test")
    assert len(world) == 1000 and world.description["split"] == "test"
    a, b = world.scene(5), world.scene(5)
    np.testing.assert_array_equal(a.image_hw3, b.image_hw3)
    assert not np.array_equal(ShapesWorld("train").scene(5).image_hw3, a.image_hw3)
    for i in range(20):
        scene = world.scene(i)
        background = scene.owner_hw < 0
        # background pixels are grey (equal channels); object pixels carry their colour
        img = scene.image_hw3.astype(int)
        assert (img[background][:, 0] == img[background][:, 1]).all()
        assert (scene.owner_hw >= 0).any()
        present = world.image_factors(i)
        expected = np.zeros(len(FACTOR_NAMES), dtype=bool)
        for o, obj in enumerate(scene.objects):
            if (scene.owner_hw == o).any():
                expected[[FACTOR_NAMES.index(f) for f in obj.factors]] = True
        np.testing.assert_array_equal(present, expected)


def test_patch_coverage_matches_a_pixel_loop():
    masks = ShapesWorld("test").pixel_masks(3)
    cov = patch_coverage(masks, patch_size=4)
    for p in range(0, 64, 7):
        r, c = divmod(p, 8)
        for f in range(len(FACTOR_NAMES)):
            assert cov[p, f] == masks[f, r * 4 : r * 4 + 4, c * 4 : c * 4 + 4].mean()


def test_bad_specs_fail_clearly():
    with pytest.raises(ImageInputError, match="synthetic:shapes"):
        open_images("synthetic:circles")
    with pytest.raises(ImageInputError, match="split"):
        open_images("synthetic:shapes:val")


def test_shipped_backbone_reaches_its_recorded_accuracy(model):
    info = shapes_backbone_info()
    assert info["label_names"] == list(FACTOR_NAMES) and 0.5 < info["test_accuracy"] <= 1
    world = ShapesWorld("test")
    idx = np.random.default_rng(0).choice(len(world), size=100, replace=False)
    with torch.no_grad():
        logits = model.output_tensor(model([world[int(i)][0] for i in idx]))
    labels = torch.from_numpy(np.stack([world.image_factors(int(i)) for i in idx]))
    acc = float(((logits > 0) == labels).float().mean())
    assert abs(acc - info["test_accuracy"]) < 0.04


@pytest.mark.slow
def test_score_writes_reports_and_the_error_term_splice_is_exact(sae, test_store, tmp_path):
    report = score(
        sae, store=test_store, out_dir=tmp_path / "r", downstream_images=8, browser=True, progress=False
    )
    for name in (
        "report.json",
        "report.md",
        "report.html",
        "recovery_per_factor.png",
        "probing.png",
        "browser/index.html",
    ):
        assert (tmp_path / "r" / name).stat().st_size > 0
    # each factor's best latent links to its feature-browser page, which exists
    latent = report["recovery"]["patch"]["per_factor"]["color=red"]["auroc_latent"]
    assert f'href="browser/latents/{latent}.html"' in (tmp_path / "r" / "report.html").read_text()
    assert (tmp_path / "r" / "browser" / "latents" / f"{latent}.html").is_file()
    assert 'href="../report.html"' in (tmp_path / "r" / "browser" / "index.html").read_text()
    assert report["reconstruction"]["rows"] == N_TEST * 64
    assert set(report["recovery"]["patch"]["per_factor"]) == set(FACTOR_NAMES)
    down = report["downstream"]
    assert down["sae_with_error"]["bce"] == pytest.approx(down["clean"]["bce"], abs=1e-5)
    assert down["sae_with_error"]["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert json.loads((tmp_path / "r" / "report.json").read_text())["name"] == report["name"]


def test_score_rejects_other_backbones_and_stores(sae, model, test_store, tmp_path):
    other = StandardSAE(StandardSAEConfig(d_in=model.d_model, d_sae=8))
    apply_vision_facts(
        other, VisionFacts(backbone="demo:mnist-vit", hook_name=SITE, tokens="patches", layout=model.layout)
    )
    with pytest.raises(SAEMismatchError, match="demo:shapes-vit"):
        score(other, store=test_store, progress=False)
    train_store = cache_activations(
        model, ShapesWorld("train", n_images=2), sites=[SITE], out_dir=tmp_path / "tr", progress=False
    )
    with pytest.raises(StoreMismatchError, match="synthetic:shapes:test"):
        score(sae, store=train_store, progress=False)
    with pytest.raises(ValueError, match="suite"):
        score(sae, suite="imagenet", store=test_store)


@pytest.mark.slow
def test_cli_bench_score_compares_saes(sae, test_store, tmp_path, capsys):
    folder = tmp_path / "sae_a"
    sae.save_model(str(folder))
    rc = main(["bench", "score", str(folder), str(folder), "--store", str(test_store.path), "--out",
               str(tmp_path / "out"), "--downstream-images", "0"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "| sae_a |" in out and "| sae_a-2 |" in out
    for name in (
        "comparison.md",
        "comparison.html",
        "l0_vs_nmse.png",
        "l0_vs_recovery.png",
        "sae_a/report.html",
    ):
        assert (tmp_path / "out" / name).is_file()
    assert main(["bench", "score", str(tmp_path), "--out", str(tmp_path / "x")]) == 1
    assert "not a SAELens checkpoint folder" in capsys.readouterr().err
    with pytest.raises(SAEMismatchError, match="cfg.json"):
        score(tmp_path, store=test_store)


@pytest.mark.slow
def test_cli_bench_synthetic_records_trains_scores_and_compares(tmp_path, capsys):
    from sae_lens import SAE

    out = tmp_path / "bench"
    rc = main(["bench", "synthetic", "--out", str(out), "--sweep", "topk", "--train-images", "16",
               "--test-images", "12", "--training-tokens", "2048", "--batch-size", "512", "--d-sae", "32",
               "--k", "4", "--downstream-images", "0", "--no-browser"])  # fmt: skip
    assert rc == 0
    assert "| topk-32 | topk |" in capsys.readouterr().out
    sae = SAE.load_from_disk(str(out / "saes" / "topk-32"))
    assert sae.cfg.metadata.hook_name == "blocks.2.hook_resid_post" and sae.cfg.d_sae == 32
    report = json.loads((out / "reports" / "topk-32" / "report.json").read_text())
    assert report["images"] == 12 and report["reconstruction"]["rows"] == 12 * 64
    assert (out / "comparison.html").read_text().count("reports/topk-32/report.html") == 1
