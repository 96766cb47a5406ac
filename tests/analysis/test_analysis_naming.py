"""Naming latents end to end on an *oracle*: a store whose patch rows are the shapes world's exact factor
indicators and an identity SAE, so latent j fires exactly on the patches (and images) carrying factor j.
The right name of every latent is known; names.json round-trips; bad inputs fail before any work."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from naming_oracle import LAYOUT, N_FACTORS, SITE, oracle_sae, write_oracle_store

from vision_sae_lens.analysis.naming import (
    NAMES_FORMAT,
    check_sae_matches_store,
    name_latents,
    read_names,
    write_names,
)
from vision_sae_lens.analysis.naming_probe import ProbeCollector, split_probe
from vision_sae_lens.data.shapes_captions import FACTOR_PHRASES
from vision_sae_lens.data.synthetic import FACTOR_NAMES, ShapesWorld
from vision_sae_lens.errors import ConfigError, ImageInputError, SAEMismatchError, UnsafePathError

N_IMAGES = 200


@pytest.fixture(scope="module")
def world():
    return ShapesWorld("test", n_images=N_IMAGES)


@pytest.fixture(scope="module")
def oracle_store(world, tmp_path_factory):
    return write_oracle_store(world, tmp_path_factory.mktemp("oracle") / "store")


@pytest.fixture(scope="module")
def image_labels(world):
    """Factors present on the image as the oracle sees them: on at least one patch (25% coverage)."""
    return np.stack([world.patch_factors(i, patch_size=4).any(0) for i in range(N_IMAGES)])


def test_label_names_of_the_oracle_are_exact(oracle_store, image_labels):
    names = name_latents(
        oracle_sae(), oracle_store, labels=image_labels, label_names=list(FACTOR_NAMES), max_images=None,
        progress=False,
    )  # fmt: skip
    assert [names.name_of(j) for j in range(N_FACTORS)] == list(FACTOR_NAMES)
    torch.testing.assert_close(names.score_sr[:, 0], torch.ones(N_FACTORS))  # F1 = 1
    assert torch.equal(names.precision_sr[:, 0], torch.ones(N_FACTORS))
    # The label predicts exactly where the latent fires on the held-out images.
    defined = ~torch.isnan(names.auroc_s)
    assert int(defined.sum()) >= N_FACTORS - 2 and torch.all(names.auroc_s[defined] == 1.0)
    doc = names.to_json()
    assert doc["method"]["kind"] == "labels" and doc["latents"][3]["name"] == FACTOR_NAMES[3]
    assert doc["latents"][3]["precision"] == 1.0 and len(doc["latents"][3]["runner_up"]) == 5
    held = doc["split"]["heldout_images"]
    assert held == round(N_IMAGES * 0.2) and doc["split"]["naming_images"] == N_IMAGES - held


def test_store_labels_name_shape_latents(oracle_store):
    """With the store's own labels (one shape per image) the shape latents are named by their shape."""
    names = name_latents(oracle_sae(), oracle_store, max_images=None, progress=False)
    shapes = [j for j, f in enumerate(FACTOR_NAMES) if f.startswith("shape=")]
    assert [names.name_of(j) for j in shapes] == [
        f.split("=")[1] for f in FACTOR_NAMES if f.startswith("shape=")
    ]
    assert names.method["kind"] == "labels"


def test_shapes_clip_names_the_oracle_latents(oracle_store, world):
    names = name_latents(
        oracle_sae(), oracle_store, namer="demo:shapes-clip", concepts="builtin:shapes", images=world,
        max_images=None, progress=False,
    )  # fmt: skip
    got = [names.name_of(j) for j in range(N_FACTORS)]
    # Colours and textures: what the namer sees best (concept AUROC >= 0.99 recorded in its metadata).
    reliable = [j for j, f in enumerate(FACTOR_NAMES) if f.split("=")[0] in ("color", "texture")]
    assert [got[j] for j in reliable] == [FACTOR_PHRASES[j] for j in reliable], got
    assert sum(g == p for g, p in zip(got, FACTOR_PHRASES, strict=True)) >= 9
    # The evidence shows which names to trust: right names detect their latent better than wrong ones.
    right = torch.tensor([g == p for g, p in zip(got, FACTOR_PHRASES, strict=True)])
    assert float(names.auroc_s[reliable].min()) > 0.95
    assert float(names.auroc_s[right].median()) > float(names.auroc_s[~right].median()) + 0.1
    assert names.method == {
        "kind": "image_text", "namer": "demo:shapes-clip", "similarity": "contrast", "rerank": 3, "by": "max",
        "top_k": 50, "templates": ["{}"],
    }  # fmt: skip
    assert names.context["concepts"]["source"] == "builtin:shapes"


def test_random_tiny_open_clip_namer_matches_brute_force(
    oracle_store, world, image_labels, tmp_path, monkeypatch
):
    """Any open_clip model names latents; with a random one, the names are what the definition gives."""
    from tiny_clip import ARCH, TAG, register_pretrained_tag, save_tiny_open_clip

    from vision_sae_lens.analysis.namer import ImageTextNamer

    model, path = save_tiny_open_clip(tmp_path)
    register_pretrained_tag(monkeypatch, path)
    namer = ImageTextNamer(f"open_clip:{ARCH}/{TAG}")
    concepts = ["red", "blue", "disc", "square", "stripes", "left", "top", "a cat"]
    names = name_latents(
        oracle_sae(), oracle_store, namer=namer, concepts=concepts, images=world, max_images=None, top_k=8,
        runner_ups=2, rerank=1, progress=False,
    )  # fmt: skip
    # Brute force: the namer's own embeddings, each latent's first 8 naming images carrying its factor
    # (indicator activations tie at 1; ties go to the lower image), the weighted mean z-score.
    split = split_probe(N_IMAGES, labels=oracle_store.labels, max_images=None)
    with torch.no_grad():
        pixels = torch.stack([namer.model.spec.transform(world[int(i)][0]) for i in split.naming])
        image = F.normalize(model.encode_image(pixels), dim=-1)
        text = namer.text_embeddings(concepts)
    sim = image @ text.T
    z = (sim - sim.mean(0)) / sim.std(0, correction=0)
    for j in range(N_FACTORS):
        carriers = [p for p, i in enumerate(split.naming) if image_labels[i, j]][:8]
        want = z[carriers].mean(0).topk(3)
        assert names.concept_sr[j].tolist() == want.indices.tolist()
        torch.testing.assert_close(names.score_sr[j], want.values, atol=2e-4, rtol=1e-4)


def test_random_tiny_transformers_clip_namer_runs(oracle_store, world, tmp_path):
    from tiny_clip import save_tiny_hf_clip

    folder = save_tiny_hf_clip(tmp_path / "hf_clip")
    names = name_latents(
        oracle_sae(), oracle_store, namer=str(folder), concepts=["red", "blue", "disc"], images=world,
        max_images=120, progress=False,
    )  # fmt: skip
    assert set(names.concept_sr[:, 0].tolist()) <= {0, 1, 2}
    assert names.split["naming_images"] + names.split["heldout_images"] == 120
    auroc = names.auroc_s[~torch.isnan(names.auroc_s)]
    assert len(auroc) and bool(((auroc >= 0) & (auroc <= 1)).all())


def test_a_probe_subset_reads_only_its_images_and_gives_the_same_top_images(oracle_store):
    """Naming on 100 of the 200 images: the top images come from those images only, as brute force says."""
    split = split_probe(N_IMAGES, labels=oracle_store.labels, max_images=100, seed=3)
    from vision_sae_lens.analysis.naming_probe import StoreImages
    from vision_sae_lens.analysis.scan import scan

    sae = oracle_sae()
    collector = ProbeCollector(N_FACTORS, split, k=5)
    view = StoreImages(oracle_store, np.concatenate([split.naming, split.heldout]))
    assert view.n_rows == 100 * LAYOUT.n_patches
    scan(sae, view, [collector], progress=False)
    pos, value = collector.top_naming_images()
    image_max = np.zeros((N_IMAGES, N_FACTORS), dtype=np.float32)
    for rows in oracle_store.ordered(SITE, 4096):
        np.maximum.at(image_max, rows.image_idx.numpy(), rows.acts.numpy())
    for j in range(N_FACTORS):
        want = [p for p, i in enumerate(split.naming) if image_max[i, j] > 0][:5]
        assert [p for p in pos[j].tolist() if p >= 0] == want
    fires = collector.heldout_fires.get(slice(0, N_FACTORS))
    assert torch.equal(fires, torch.from_numpy(image_max[split.heldout] > 0))
    # Memory: one bit per held-out image and latent, top-k buffers, nothing per (image, latent) beyond that.
    assert collector.heldout_fires.bits.shape == ((len(split.heldout) + 7) // 8, N_FACTORS)
    assert collector.naming_fires.bits.shape == ((len(split.naming) + 7) // 8, N_FACTORS)
    assert torch.equal(
        collector.naming_fires.get(slice(2, 9)), torch.from_numpy(image_max[split.naming, 2:9] > 0)
    )
    # Ranked by the mean over the patches instead: the images the factor covers most come first.
    by_mean = ProbeCollector(N_FACTORS, split, k=5, by="mean")
    scan(sae, view, [by_mean], progress=False)
    image_mean = np.zeros((N_IMAGES, N_FACTORS))
    for rows in oracle_store.ordered(SITE, 4096):
        np.add.at(image_mean, rows.image_idx.numpy(), rows.acts.numpy() / LAYOUT.n_patches)
    pos, _ = by_mean.top_naming_images()
    for j in range(N_FACTORS):
        means = image_mean[split.naming, j]
        want = [p for p in np.argsort(-means, kind="stable")[:5] if means[p] > 0]
        assert [p for p in pos[j].tolist() if p >= 0] == want


def test_names_json_round_trip_and_refuses_what_is_not_ours(oracle_store, image_labels, tmp_path):
    names = name_latents(
        oracle_sae(), oracle_store, labels=image_labels, label_names=list(FACTOR_NAMES), progress=False
    )
    sae_dir = tmp_path / "sae"
    sae_dir.mkdir()
    path = write_names(names, sae_dir)
    assert path == sae_dir / "names.json"
    doc = read_names(sae_dir)
    assert doc == json.loads(json.dumps(names.to_json()))
    assert doc["format"] == NAMES_FORMAT and len(doc["latents"]) == N_FACTORS
    assert write_names(names, path) == path  # our own file is replaced
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"mine": true}')
    with pytest.raises(UnsafePathError, match="not written by vision_sae_lens"):
        write_names(names, foreign)
    assert foreign.read_text() == '{"mine": true}'
    link = tmp_path / "link.json"
    os.symlink(path, link)
    with pytest.raises(UnsafePathError):
        write_names(names, link)
    with pytest.raises(ConfigError, match="not a vision_sae_lens names file"):
        read_names(foreign)


def test_sae_that_does_not_match_the_store_is_refused(oracle_store):
    with pytest.raises(SAEMismatchError, match="trained on 'timm:vit_tiny'"):
        check_sae_matches_store(oracle_sae(backbone="timm:vit_tiny"), oracle_store)
    with pytest.raises(SAEMismatchError, match="reads 'blocks.0.hook_resid_post'"):
        name_latents(oracle_sae(site="blocks.0.hook_resid_post"), oracle_store, progress=False)
    with pytest.raises(SAEMismatchError, match="d_in=7"):
        name_latents(oracle_sae(d_in=7), oracle_store, progress=False)


def test_bad_requests_fail_before_the_scan(oracle_store, world):
    sae = oracle_sae()
    with pytest.raises(ConfigError, match="no concepts"):
        name_latents(sae, oracle_store, namer="demo:shapes-clip", concepts=[], images=world, progress=False)
    with pytest.raises(ConfigError, match="repeats"):
        name_latents(sae, oracle_store, namer="demo:shapes-clip", concepts=["red", "Red"], images=world,
                     progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match="by must be"):
        name_latents(sae, oracle_store, by="median", progress=False)
    with pytest.raises(ConfigError, match="image embedding"):
        name_latents(
            sae, oracle_store, namer="demo:shapes-vit", concepts=["red"], images=world, progress=False
        )
    with pytest.raises(ConfigError, match="probe images"):
        name_latents(sae, oracle_store, max_images=3, progress=False)
    # The store describes generated images it cannot re-open by itself: the namer needs them given.
    with pytest.raises(ImageInputError, match="needs the store's images"):
        name_latents(sae, oracle_store, namer="demo:shapes-clip", concepts=["a disc"], progress=False)
    with pytest.raises(ImageInputError, match="10 images given"):
        name_latents(sae, oracle_store, namer="demo:shapes-clip", concepts=["a disc"],
                     images=ShapesWorld("test", n_images=10), progress=False)  # fmt: skip
