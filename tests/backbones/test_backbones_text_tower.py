"""Class text embeddings through a CLIP's text tower, checked against open_clip's and transformers' own
models on the same prompts; backbones without a text tower give None, random towers are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_clip import ARCH, CLASS_NAMES, TAG, register_pretrained_tag, save_tiny_hf_clip, save_tiny_open_clip

from vision_sae_lens.backbones import HookedSAEViT
from vision_sae_lens.backbones.text_tower import class_text_embeddings, zero_shot_prompts
from vision_sae_lens.errors import ConfigError

PROMPTS = ("a photo of a {}.",)
READABLE = ["cat", "golden retriever", "airplane", "3"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(full open_clip CLIP, its weights file)."""
    return save_tiny_open_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory):
    return save_tiny_hf_clip(tmp_path_factory.mktemp("hf_clip"))


def _open_clip_reference(model, templates) -> torch.Tensor:
    """open_clip's own tokenizer and encode_text; per class the mean unit embedding over templates, renormalised."""
    import open_clip

    tokenizer = open_clip.get_tokenizer(ARCH)
    with torch.no_grad():
        rows = []
        for name in READABLE:
            emb = model.encode_text(tokenizer([t.format(name) for t in templates]))
            rows.append(F.normalize(F.normalize(emb, dim=-1).mean(0), dim=-1))
    return torch.stack(rows)


def _hf_reference(folder, templates) -> torch.Tensor:
    import transformers as tf

    model = tf.CLIPModel.from_pretrained(folder).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        rows = []
        for name in READABLE:
            enc = tokenizer([t.format(name) for t in templates], padding=True, return_tensors="pt")
            out = model.get_text_features(**enc)
            emb = out if isinstance(out, torch.Tensor) else out.pooler_output
            rows.append(F.normalize(F.normalize(emb, dim=-1).mean(0), dim=-1))
    return torch.stack(rows)


def test_open_clip_weights_file_matches_open_clips_encode_text(tiny_clip):
    model, path = tiny_clip
    got = class_text_embeddings(f"open_clip:{ARCH}", CLASS_NAMES, weights=path, templates=PROMPTS)
    want = _open_clip_reference(model, PROMPTS)
    assert got.shape == (4, 16) and torch.allclose(got.norm(dim=-1), torch.ones(4), atol=1e-6)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    # Several templates: open_clip's averaging of unit embeddings, renormalised.
    two = ("a photo of a {}.", "a drawing of the {}.")
    got2 = class_text_embeddings(f"open_clip:{ARCH}", CLASS_NAMES, weights=path, templates=two)
    torch.testing.assert_close(got2, _open_clip_reference(model, two), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(got2, got, atol=1e-4)  # the second template changed the result


def test_hooked_open_clip_tower_reuses_its_own_weights(tiny_clip, monkeypatch):
    model, path = tiny_clip
    want = _open_clip_reference(model, PROMPTS)
    # Pretrained tag: the full CLIP is rebuilt from the id and its image tower checked against the hooked one.
    register_pretrained_tag(monkeypatch, path)
    tagged = HookedSAEViT.from_pretrained(f"open_clip:{ARCH}/{TAG}")
    torch.testing.assert_close(class_text_embeddings(tagged, CLASS_NAMES), want, atol=1e-6, rtol=1e-5)
    # A weights file: the hooked model records its name and hash, not its path, so it must be given.
    from_file = HookedSAEViT.from_pretrained(f"open_clip:{ARCH}", weights=str(path))
    with pytest.raises(ConfigError, match="path is not"):
        class_text_embeddings(from_file, CLASS_NAMES)
    got = class_text_embeddings(from_file, CLASS_NAMES, weights=path)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    # A full open_clip model handed in keeps its own text tower.
    whole = HookedSAEViT.from_module(model, backbone_id=f"open_clip:{ARCH}/{TAG}")
    torch.testing.assert_close(class_text_embeddings(whole, CLASS_NAMES), want, atol=1e-6, rtol=1e-5)


def test_random_image_tower_is_refused_not_paired_with_another_text_tower(tiny_clip):
    _, path = tiny_clip
    torch.manual_seed(1)
    random = HookedSAEViT.from_pretrained(f"open_clip:{ARCH}", pretrained=False)
    with pytest.raises(ConfigError, match="other image-tower weights"):
        class_text_embeddings(random, CLASS_NAMES, weights=path)
    with pytest.raises(ConfigError, match="no pretrained tag"):
        class_text_embeddings(random, CLASS_NAMES)
    with pytest.raises(ConfigError, match="random weights"):
        class_text_embeddings(f"open_clip:{ARCH}", CLASS_NAMES, pretrained=False)


def test_transformers_clip_folder_matches_get_text_features(hf_clip_dir):
    want = _hf_reference(hf_clip_dir, PROMPTS)
    hooked = HookedSAEViT.from_pretrained(str(hf_clip_dir))
    got = class_text_embeddings(hooked, CLASS_NAMES)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    by_id = class_text_embeddings(f"hf:{hf_clip_dir}", CLASS_NAMES)
    torch.testing.assert_close(by_id, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(class_text_embeddings(str(hf_clip_dir), CLASS_NAMES), want)


def test_backbones_without_a_text_tower_give_none():
    import transformers as tf

    assert class_text_embeddings("demo:mnist-vit", CLASS_NAMES) is None
    assert class_text_embeddings(HookedSAEViT.from_pretrained("demo:mnist-vit"), CLASS_NAMES) is None
    dino = HookedSAEViT.from_pretrained(
        "timm:vit_small_patch14_reg4_dinov2",
        pretrained=False,
        img_size=28,
        patch_size=14,
        depth=1,
        embed_dim=32,
        num_heads=2,
    )
    assert class_text_embeddings(dino, CLASS_NAMES) is None
    hf_dino = tf.Dinov2Model(
        tf.Dinov2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        )
    )
    assert class_text_embeddings(HookedSAEViT.from_module(hf_dino), CLASS_NAMES) is None


def test_prompts_follow_open_clips_imagenet_metadata_else_a_simple_template():
    import open_clip

    names, templates = zero_shot_prompts(CLASS_NAMES)
    assert names == READABLE and templates == ("a photo of a {}.",)
    wnids = [f"n{i:08d}" for i in range(1000)]
    names, templates = zero_shot_prompts(wnids)
    assert names == list(open_clip.IMAGENET_CLASSNAMES)
    assert templates == tuple(t("{}") for t in open_clip.SIMPLE_IMAGENET_TEMPLATES)
    with pytest.raises(ConfigError, match="template"):
        zero_shot_prompts(CLASS_NAMES, ["no placeholder"])
