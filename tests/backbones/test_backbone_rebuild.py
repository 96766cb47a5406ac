"""Rebuilding a store's backbone (``--model store``) gives the recorded weights or a clear refusal: a random-init
store offline says to pass --weights (no raw LocalEntryNotFoundError), a mismatch is refused, the right file works."""

from __future__ import annotations

import pytest
import torch
from helpers import SITES, build_tiny, random_images

from vision_sae_lens.cli import main
from vision_sae_lens.errors import VisionSAELensError
from vision_sae_lens.store import cache_activations

SITE = SITES[1]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A store recorded from the tiny ViT with random weights (seed 0), those weights saved to a file,
    another seed's weights, an image folder and an SAE for the store's site."""
    root = tmp_path_factory.mktemp("rebuild")
    model = build_tiny(seed=0)
    images = root / "images"
    images.mkdir()
    for i, img in enumerate(random_images(4)):
        img.save(images / f"{i}.png")
    store = cache_activations(model, str(images), sites=[SITE], out_dir=root / "store", progress=False)
    torch.save(model.backbone.state_dict(), root / "seed0.pt")
    torch.save(build_tiny(seed=1).backbone.state_dict(), root / "seed1.pt")
    from sae_lens import TopKTrainingSAEConfig

    from vision_sae_lens.train import TrainConfig, train_sae

    sae = TopKTrainingSAEConfig(d_in=model.d_model, d_sae=16, k=2)
    cfg = TrainConfig(store=store, site=SITE, sae=sae, training_tokens=64, batch_size=16, eval_fraction=0.25)
    run = train_sae(cfg, out_dir=root / "saes", progress=False)
    return store, run.path, images, root


def _evaluate(recorded, *extra):
    store, sae, images, _ = recorded
    argv = ["evaluate", str(sae), "--store", str(store.path), "--model", "store", "--images", str(images)]
    return main([*argv, "--n-images", "2", "--no-progress", *extra])


def test_offline_random_init_store_says_to_pass_weights(recorded, capsys):
    assert recorded[0].metadata["backbone_build"] == {
        "weights": "random-init",
        "kwargs": {"img_size": 32, "patch_size": 8, "depth": 3, "num_classes": 10},
    }
    assert _evaluate(recorded) == 1
    err = capsys.readouterr().err
    assert "BackboneWeightsError" in err and "randomly initialised" in err and "--weights FILE" in err
    assert "LocalEntryNotFoundError" not in err


def test_the_recorded_weights_file_rebuilds_it_and_another_is_refused(recorded, capsys):
    root = recorded[3]
    assert _evaluate(recorded, "--weights", str(root / "seed0.pt")) == 0
    assert '"fraction_recovered"' in capsys.readouterr().out
    assert _evaluate(recorded, "--weights", str(root / "seed1.pt")) == 1
    err = capsys.readouterr().err
    assert "is not the backbone store" in err and "weights hash to" in err


def test_analyze_model_store_is_checked_the_same_way(recorded, tmp_path, capsys):
    store, sae, images, root = recorded
    argv = ["analyze", "--sae", str(sae), "--store", str(store.path), "--out", str(tmp_path / "b")]
    assert main([*argv, "--model", "store", "--max-pages", "1"]) == 1
    assert "randomly initialised" in capsys.readouterr().err
    assert main([*argv, "--model", "store", "--weights", str(root / "seed1.pt"), "--max-pages", "1"]) == 1
    assert "weights hash to" in capsys.readouterr().err


def test_a_pretrained_store_rebuilds_without_weights_and_a_forged_hash_is_refused(tmp_path):
    from vision_sae_lens.backbones import HookedSAEViT
    from vision_sae_lens.backbones.recorded import backbone_for

    model = HookedSAEViT.from_pretrained("demo:mnist-vit")
    store = cache_activations(
        model,
        "demo:mnist:test",
        sites=["blocks.1.hook_resid_post"],
        out_dir=tmp_path / "s",
        limit=4,
        progress=False,
    )
    assert backbone_for("store", store.metadata).backbone_id == "demo:mnist-vit"
    assert backbone_for("demo:mnist-vit", store.metadata) is not None  # the same id, explicitly: checked too
    forged = {**store.metadata, "backbone_weights_sha256": "0" * 64}
    with pytest.raises(VisionSAELensError, match="weights hash to"):
        backbone_for("store", forged)


def test_a_local_folders_id_is_recorded_by_its_name_only(tmp_path):
    from vision_sae_lens.backbones.recorded import portable_backbone_id

    assert portable_backbone_id(str(tmp_path / "private" / "my-clip")) == "local-dir:my-clip"
    assert portable_backbone_id("open_clip:ViT-B-16/openai") == "open_clip:ViT-B-16/openai"
    assert portable_backbone_id("demo:shapes-clip") == "demo:shapes-clip"
