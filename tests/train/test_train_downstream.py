"""The spliced downstream metric on a tiny timm ViT: 1.0 for a perfect SAE, lower for ablations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import write_store
from sae_lens import StandardSAE, StandardSAEConfig, TopKTrainingSAEConfig

from vision_sae_lens.backbones import HookedSAEViT
from vision_sae_lens.metadata import VisionFacts, apply_vision_facts
from vision_sae_lens.train import TrainConfig, evaluate_sae, train_sae

SITE = "blocks.0.hook_resid_post"


def _model(num_classes):
    torch.manual_seed(0)
    return HookedSAEViT.from_pretrained(
        "timm:vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=2,
        num_classes=num_classes,
    )


def _record(model, images, path):
    _, cache = model.run_with_cache(images, names_filter=[SITE])
    patches = model.layout.select(cache[SITE], "patches")  # (b, 16, d)
    b, t, d = patches.shape
    rows = patches.reshape(b * t, d).detach().numpy()
    return write_store(path, {SITE: rows}, layout=model.layout, backbone=model.backbone_id)


@pytest.fixture(scope="module")
def images():
    return torch.randn(48, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def classifier(images, tmp_path_factory):
    model = _model(10)
    return model, _record(model, images, tmp_path_factory.mktemp("clf") / "acts")


def _facts(store):
    return VisionFacts(backbone=store.backbone_id, hook_name=SITE, tokens="patches", layout=store.layout)


def _identity_sae(store):
    """ReLU SAE with W_enc = [I, -I]: relu(x) - relu(-x) = x, a perfect reconstruction."""
    d = store.d_model
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * d, apply_b_dec_to_input=False))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    apply_vision_facts(sae, _facts(store))
    return sae


def _random_sae(store):
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=store.d_model, d_sae=64))
    apply_vision_facts(sae, _facts(store))
    return sae


def test_error_term_splice_recovers_everything_and_zero_ablation_does_not(classifier, images):
    model, store = classifier
    report = evaluate_sae(_random_sae(store), store, model=model, images=images, use_error_term=True)
    down = report["downstream"]
    assert down["kind"] == "classifier" and down["n_images"] == 48
    assert down["fraction_recovered"] == 1.0 and down["top1_agreement"] == 1.0 and down["kl"] == 0.0
    zero = down["zero_ablation"]
    assert zero["kl"] > 1e-3 and zero["top1_agreement"] < 1.0
    assert down["mean_ablation"]["kl"] > 0

    lossy = evaluate_sae(_random_sae(store), store, model=model, images=images)["downstream"]
    assert lossy["kl"] > 0 and lossy["fraction_recovered"] < 1.0


def test_perfect_reconstruction_without_error_term_scores_one(classifier, images):
    model, store = classifier
    report = evaluate_sae(_identity_sae(store), store, model=model, images=images)
    assert report["nmse"] == pytest.approx(0.0, abs=1e-10) and report["explained_variance"] == pytest.approx(
        1.0
    )
    down = report["downstream"]
    assert down["fraction_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert down["top1_agreement"] == 1.0 and down["kl"] == pytest.approx(0.0, abs=1e-7)


def test_encoder_backbone_uses_embedding_cosine(images, tmp_path):
    model = _model(0)
    assert model.output_kind == "embedding"
    store = _record(model, images, tmp_path / "acts")
    down = evaluate_sae(_identity_sae(store), store, model=model, images=images)["downstream"]
    assert down["kind"] == "embedding" and down["top1_agreement"] is None
    assert down["cosine"] == pytest.approx(1.0, abs=1e-6) and down["fraction_recovered"] == pytest.approx(
        1.0, abs=1e-4
    )
    assert down["zero_ablation"]["cosine"] < 0.999


def test_training_with_a_model_writes_the_downstream_report(classifier, images, tmp_path):
    model, store = classifier
    cfg = TrainConfig(
        store=store.path,
        site=SITE,
        sae=TopKTrainingSAEConfig(d_in=store.d_model, d_sae=256, k=16),
        training_tokens=64 * 40,
        batch_size=64,
        lr=1e-3,
        eval_fraction=0.25,
        downstream_images=16,
    )
    run = train_sae(cfg, out_dir=tmp_path, model=model, images=images, progress=False)
    report = json.loads((run.path / "eval.json").read_text())
    down = report["downstream"]
    for key in ("kind", "fraction_recovered", "top1_agreement", "kl", "zero_ablation", "mean_ablation"):
        assert key in down
    # 40 steps on a random-weight model: the value is not meaningful yet, only well-formed.
    assert down["n_images"] == 16 and down["kl"] > 0 and isinstance(down["fraction_recovered"], float)
    assert report["rows"]["n_eval_images"] == round(store.n_images / 4)  # the held-out quarter of the images
    # The checkpoint splices into the backbone as-is (HookedSAEViT.add_sae reads its metadata).
    model.add_sae(run.sae)
    try:
        assert np.isfinite(model(images[:2]).detach().numpy()).all()
    finally:
        model.reset_saes()


def test_labelled_images_add_accuracy_for_every_variant(classifier, images):
    from PIL import Image

    model, store = classifier
    rng = np.random.default_rng(2)
    pil = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(24)]
    clean = model(pil).argmax(-1)
    labels = clean.clone()
    labels[::3] = (labels[::3] + 1) % 10  # a third of the labels disagree with the clean model
    labelled = [(img, int(y)) for img, y in zip(pil, labels, strict=True)]
    down = evaluate_sae(_identity_sae(store), store, model=model, images=labelled)["downstream"]
    expected = (clean == labels).float().mean().item()
    assert down["clean_accuracy"] == pytest.approx(expected)
    assert down["accuracy"] == pytest.approx(expected)  # a perfect SAE keeps the clean predictions
    zero_pred_acc = down["zero_ablation"]["accuracy"]
    assert 0.0 <= zero_pred_acc <= 1.0 and zero_pred_acc != pytest.approx(expected)
    # Unlabelled inputs have no accuracy.
    unlabelled = evaluate_sae(_identity_sae(store), store, model=model, images=images)["downstream"]
    assert unlabelled["accuracy"] is None and unlabelled["clean_accuracy"] is None


class _Labelled:
    """A labelled image source sorted by class (like the demo digits): first-N would be one class."""

    def __init__(self, pixels, labels):
        from PIL import Image

        self.labels = list(labels)
        self.label_names = [str(i) for i in range(max(labels) + 1)]
        arr = ((pixels.permute(0, 2, 3, 1).clamp(-2, 2) + 2) / 4 * 255).to(torch.uint8).numpy()
        self.images = [Image.fromarray(a) for a in arr]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def test_embedding_model_gets_nearest_prototype_accuracy(images, tmp_path):
    from vision_sae_lens.data import open_images

    model = _model(0)
    assert model.output_kind == "embedding"
    store = _record(model, images, tmp_path / "acts")
    source = open_images(_Labelled(images, [i // 12 for i in range(48)]))  # 4 classes, sorted
    sae = _identity_sae(store)
    down = evaluate_sae(sae, store, model=model, images=source, n_images=48)["downstream"]
    assert down["kind"] == "embedding" and down["accuracy_metric"] == "nearest prototype"
    # Brute force: prototypes are the mean normalised clean embeddings per class.
    with torch.no_grad():
        emb = torch.nn.functional.normalize(
            model.output_tensor(model(model.preprocess(source.obj.images))), dim=-1
        )
    labels = torch.tensor(source.obj.labels)
    protos = torch.nn.functional.normalize(torch.stack([emb[labels == c].mean(0) for c in range(4)]), dim=-1)
    want = ((emb @ protos.T).argmax(-1) == labels).float().mean().item()
    assert down["clean_accuracy"] == pytest.approx(want) and down["accuracy"] == pytest.approx(want, abs=1e-6)
    assert down["kl"] is None and down["cosine"] == pytest.approx(1.0, abs=1e-5)


def test_downstream_images_are_a_stratified_draw_not_the_first(images, tmp_path, classifier):
    from vision_sae_lens.data import open_images
    from vision_sae_lens.train.downstream import _pick_images

    source = open_images(_Labelled(images, [i // 12 for i in range(48)]))
    picked = _pick_images(source, 8, seed=0)
    assert sorted(source[i][1] for i in picked) == [0, 0, 1, 1, 2, 2, 3, 3]
    model, store = classifier
    down = evaluate_sae(_identity_sae(store), store, model=model, images=source, n_images=8)["downstream"]
    assert down["n_images"] == 8 and down["accuracy_metric"] == "top-1"
    assert down["logit_diff"] > 0  # the identity SAE keeps the clean top class on top
    assert down["recovered_above_one"] is False
