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


# --- zero-shot accuracy through a text tower ----------------------------------------------------------


class _Named(_Labelled):
    """A labelled source of PIL images with class names (what zero-shot prompts are made of)."""

    def __init__(self, pil, labels, names):
        self.images, self.labels, self.label_names = list(pil), list(labels), list(names)


def _zero_shot_source(embed_bd, text_cd, pil):
    """Labels = the brute-force zero-shot prediction, wrong on every third image: accuracy 2/3 exactly."""
    from tiny_clip import CLASS_NAMES

    from vision_sae_lens.data import open_images

    pred = (torch.nn.functional.normalize(embed_bd, dim=-1) @ text_cd.T).argmax(-1)
    assert len(set(pred.tolist())) > 1  # a constant prediction would make the check weak
    labels = pred.clone()
    labels[::3] = (labels[::3] + 1) % len(CLASS_NAMES)
    want = (pred == labels).float().mean().item()
    return open_images(_Named(pil, labels.tolist(), CLASS_NAMES)), want


def _text_reference(encode, tokenize):
    from tiny_clip import CLASS_NAMES

    with torch.no_grad():
        out = encode(tokenize([f"a photo of a {n.replace('_', ' ')}." for n in CLASS_NAMES]))
    out = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(out, dim=-1)


def _zero_shot_report(model, source, tmp_path):
    pil = [source[i][0] for i in range(len(source))]
    store = _record(model, model.preprocess(pil), tmp_path / "acts")
    return evaluate_sae(_identity_sae(store), store, model=model, images=source, n_images=len(source))


def test_open_clip_zero_shot_accuracy_equals_brute_force_with_the_full_clip(tmp_path, monkeypatch):
    import open_clip
    from tiny_clip import ARCH, TAG, register_pretrained_tag, save_tiny_open_clip, solid_images

    full, weights = save_tiny_open_clip(tmp_path, seed=3)  # a seed whose predictions vary over the images
    register_pretrained_tag(monkeypatch, weights)
    model = HookedSAEViT.from_pretrained(f"open_clip:{ARCH}/{TAG}")  # image tower only
    pil = solid_images(24, seed=3)
    text_cd = _text_reference(full.encode_text, open_clip.get_tokenizer(ARCH))
    with torch.no_grad():
        embed_bd = full.encode_image(model.preprocess(pil))  # open_clip's own full model, same pixels
    source, want = _zero_shot_source(embed_bd, text_cd, pil)
    down = _zero_shot_report(model, source, tmp_path)["downstream"]
    assert down["zero_shot_reason"] is None and down["zero_shot_templates"] == ["a photo of a {}."]
    assert down["clean_zero_shot_accuracy"] == pytest.approx(want)
    assert down["zero_shot_accuracy"] == pytest.approx(want)  # a perfect SAE keeps the clean embedding
    for baseline in ("zero_ablation", "mean_ablation"):
        assert 0.0 <= down[baseline]["zero_shot_accuracy"] <= 1.0
    assert down["accuracy_metric"] == "nearest prototype" and down["clean_accuracy"] is not None
    # The same text embeddings handed in give the same numbers; a wrong width is refused.
    from vision_sae_lens.train.downstream import measure_downstream

    sae = _identity_sae(_record(model, model.preprocess(pil), tmp_path / "acts2"))
    given = measure_downstream(model, sae, source, n_images=24, text_embeddings=text_cd)
    assert given["clean_zero_shot_accuracy"] == pytest.approx(want) and given["zero_shot_templates"] is None
    from vision_sae_lens.errors import ConfigError

    with pytest.raises(ConfigError, match="classes"):
        measure_downstream(model, sae, source, n_images=24, text_embeddings=text_cd[:, :8])


def test_transformers_clip_zero_shot_accuracy_equals_brute_force(tmp_path):
    import transformers as tf
    from tiny_clip import save_tiny_hf_clip, solid_images

    folder = save_tiny_hf_clip(tmp_path / "clip")
    model = HookedSAEViT.from_pretrained(str(folder))
    reference = tf.CLIPModel.from_pretrained(folder).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(folder)
    pil = solid_images(24, seed=4)
    text_cd = _text_reference(
        lambda enc: reference.get_text_features(**enc),
        lambda texts: tokenizer(texts, padding=True, return_tensors="pt"),
    )
    with torch.no_grad():
        out = reference.get_image_features(pixel_values=model.preprocess(pil))
    embed_bd = out if isinstance(out, torch.Tensor) else out.pooler_output
    source, want = _zero_shot_source(embed_bd, text_cd, pil)
    down = _zero_shot_report(model, source, tmp_path)["downstream"]
    assert down["zero_shot_reason"] is None
    assert down["clean_zero_shot_accuracy"] == pytest.approx(want)
    assert down["zero_shot_accuracy"] == pytest.approx(want)


def test_no_text_tower_or_no_class_names_give_null_zero_shot_with_a_reason(images, tmp_path, classifier):
    from vision_sae_lens.data import open_images

    model = _model(0)  # a timm ViT without head: an embedding model with no text tower
    store = _record(model, images, tmp_path / "acts")
    source = open_images(_Labelled(images, [i // 12 for i in range(48)]))
    down = evaluate_sae(_identity_sae(store), store, model=model, images=source)["downstream"]
    assert down["zero_shot_accuracy"] is None and down["clean_zero_shot_accuracy"] is None
    assert down["zero_ablation"]["zero_shot_accuracy"] is None and "no text tower" in down["zero_shot_reason"]
    assert down["clean_accuracy"] is not None  # nearest-prototype accuracy is still there
    unnamed = evaluate_sae(_identity_sae(store), store, model=model, images=images)["downstream"]
    assert (
        unnamed["zero_shot_accuracy"] is None and unnamed["zero_shot_reason"] == "the images have no labels"
    )
    clf, clf_store = classifier
    top1 = evaluate_sae(_identity_sae(clf_store), clf_store, model=clf, images=source)["downstream"]
    assert top1["zero_shot_accuracy"] is None and "classifier" in top1["zero_shot_reason"]


def test_a_text_tower_that_cannot_be_matched_is_reported_once_not_raised(tmp_path, caplog):
    from tiny_clip import ARCH, CLASS_NAMES, save_tiny_open_clip, solid_images

    from vision_sae_lens.data import open_images

    save_tiny_open_clip(tmp_path)  # registers the architecture
    model = HookedSAEViT.from_pretrained(f"open_clip:{ARCH}", pretrained=False)  # random: no matching text
    pil = solid_images(8, seed=5)
    source = open_images(_Named(pil, [i % 4 for i in range(8)], CLASS_NAMES))
    store = _record(model, model.preprocess(pil), tmp_path / "acts")
    with caplog.at_level("WARNING", logger="vision_sae_lens.train.downstream"):
        for _ in range(2):
            down = evaluate_sae(_identity_sae(store), store, model=model, images=source)["downstream"]
            assert down["zero_shot_accuracy"] is None and down["cosine"] == pytest.approx(1.0, abs=1e-5)
            assert down["zero_shot_reason"].startswith("text tower not available")
    assert sum("zero-shot accuracy skipped" in r.getMessage() for r in caplog.records) == 1
