"""``demo:shapes-clip``: the shipped open_clip folder loads through open_clip's own loaders, our image and
text sides equal open_clip's, random weights are refused for text, and what it measured is recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vision_sae_lens.backbones import HookedSAEViT, class_text_embeddings
from vision_sae_lens.backbones.shapes_clip import SHAPES_CLIP_ID, shapes_clip_dir, shapes_clip_info
from vision_sae_lens.data.shapes_captions import FACTOR_PHRASES, caption_words, full_caption
from vision_sae_lens.data.synthetic import FACTOR_NAMES, ShapesWorld
from vision_sae_lens.errors import ConfigError


@pytest.fixture(scope="module")
def reference():
    """open_clip's own model, transform and tokenizer for the folder."""
    import open_clip

    ident = f"local-dir:{shapes_clip_dir()}"
    model, _, transform = open_clip.create_model_and_transforms(ident)
    return model.eval(), transform, open_clip.get_tokenizer(ident)


@pytest.fixture(scope="module")
def hooked():
    return HookedSAEViT.from_pretrained(SHAPES_CLIP_ID)


def test_image_side_is_open_clips_encode_image(hooked, reference):
    model, transform, _ = reference
    world = ShapesWorld("test", n_images=6)
    images = [world[i][0] for i in range(6)]
    with torch.no_grad():
        want = model.encode_image(torch.stack([transform(im) for im in images]))
        got = hooked.output_tensor(hooked(images))
    torch.testing.assert_close(got, want)
    assert hooked.backbone_id == SHAPES_CLIP_ID and hooked.output_kind == "embedding"
    assert hooked.layout.image_size == (32, 32) and hooked.layout.has_cls


def test_text_side_is_open_clips_encode_text(hooked, reference):
    model, _, tokenizer = reference
    phrases = list(FACTOR_PHRASES)
    with torch.no_grad():
        want = F.normalize(model.encode_text(tokenizer(phrases)), dim=-1)
    torch.testing.assert_close(class_text_embeddings(SHAPES_CLIP_ID, phrases, templates=("{}",)), want)
    torch.testing.assert_close(class_text_embeddings(hooked, phrases, templates=("{}",)), want)
    # The tokenizer knows the caption words; anything else is one unknown token.
    ids = tokenizer(["a red disc", "a crimson disc"])
    assert ids[0, 2] != ids[1, 2] and int(ids[1, 2]) == 3  # [UNK]
    assert len(caption_words()) + 4 == model.vocab_size


def test_random_weights_differ_and_have_no_text_side():
    random = HookedSAEViT.from_pretrained(SHAPES_CLIP_ID, pretrained=False)
    trained = HookedSAEViT.from_pretrained(SHAPES_CLIP_ID)
    assert not torch.equal(random.backbone.visual.conv1.weight, trained.backbone.visual.conv1.weight)
    with pytest.raises(ConfigError, match="does not belong"):
        class_text_embeddings(random, ["a disc"])


def test_recorded_measurements_and_size(reference):
    info = shapes_clip_info()
    config = json.loads((shapes_clip_dir() / "open_clip_config.json").read_text())
    assert info["model_cfg"] == config["model_cfg"]
    assert info["concept_phrases"] == list(FACTOR_PHRASES) and info["label_names"] == list(FACTOR_NAMES)
    assert 0.05 < info["image_to_text_top1"] <= 1 and 0.05 < info["text_to_image_top1"] <= 1  # chance: 0.001
    per_factor = info["concept_auroc_per_factor"]
    assert all(per_factor[f"color={c}"] > 0.95 for c in ("red", "green", "blue", "yellow"))
    assert info["concept_auroc"] == pytest.approx(np.mean(list(per_factor.values())), abs=1e-3)
    size = sum(p.stat().st_size for p in shapes_clip_dir().iterdir())
    assert size < 2 * 2**20


def test_recorded_retrieval_accuracy_reproduces(reference):
    """The image-to-text figure in the metadata is what the shipped weights give on the test images."""
    model, transform, tokenizer = reference
    world = ShapesWorld("test")
    with torch.no_grad():
        image = F.normalize(
            model.encode_image(torch.stack([transform(world[i][0]) for i in range(len(world))])), dim=-1
        )
        captions = [full_caption(world.scene(i)) for i in range(len(world))]
        text = F.normalize(model.encode_text(tokenizer(captions)), dim=-1)
    best = (image @ text.T).argmax(1).tolist()
    hits = np.mean([captions[b] == captions[i] for i, b in enumerate(best)])
    assert hits == pytest.approx(shapes_clip_info()["image_to_text_top1"], abs=1e-3)


def test_stores_record_the_alias_not_the_folder(hooked, tmp_path):
    from vision_sae_lens.store import cache_activations

    store = cache_activations(
        hooked, ShapesWorld("test", n_images=4), sites=["blocks.0.hook_resid_post"], out_dir=tmp_path / "s",
        progress=False,
    )  # fmt: skip
    assert store.backbone_id == SHAPES_CLIP_ID
    assert str(shapes_clip_dir()) not in json.dumps(store.metadata)
