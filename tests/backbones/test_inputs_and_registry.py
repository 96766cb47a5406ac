"""Image inputs, token layout arithmetic, backbone ids and loading from local files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from vision_sae_lens.backbones import HookedSAEViT, TokenLayout, list_backbones
from vision_sae_lens.errors import ImageInputError, UnknownBackboneError


def _photo(mode: str, size=(40, 50)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).convert(mode)


def test_pil_paths_and_uint8_go_through_the_backbones_own_transform(tiny_vit, tmp_path):
    img = _photo("RGB")
    img.save(tmp_path / "a.png")
    expected = tiny_vit.spec.transform(img).unsqueeze(0)
    assert torch.equal(tiny_vit.preprocess([img]), expected)
    assert torch.equal(tiny_vit.preprocess(str(tmp_path / "a.png")), expected)
    as_uint8 = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    assert torch.equal(tiny_vit.preprocess(as_uint8), expected)
    pixels = torch.randn(2, 3, 32, 32)
    assert tiny_vit.preprocess(pixels) is pixels  # float tensors are taken as preprocessed


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_odd_modes_are_converted(tiny_vit, mode):
    out = tiny_vit([_photo(mode)])
    assert out.shape == (1, 10)


@pytest.mark.parametrize(
    "bad, message",
    [
        ([], "empty batch"),
        (torch.randn(2, 3, 16, 16), r"must be \(batch, 3, 32, 32\)"),
        (torch.zeros(0, 3, 32, 32), "empty batch"),
        (torch.zeros(2, 5, 8, 8, dtype=torch.uint8), "1, 3 or 4 channels"),
        (["/does/not/exist.png"], "not found"),
        ([123], "cannot use a int"),
    ],
)
def test_bad_image_inputs(tiny_vit, bad, message):
    with pytest.raises(ImageInputError, match=message):
        tiny_vit(bad)


def test_unreadable_file(tiny_vit, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageInputError, match="cannot read image"):
        tiny_vit([tmp_path / "broken.jpg"])


@given(
    grid=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    patch=st.integers(1, 5),
    has_cls=st.booleans(),
    registers=st.integers(0, 4),
)
def test_layout_selection_and_boxes(grid, patch, has_cls, registers):
    layout = TokenLayout(
        image_size=(grid[0] * patch, grid[1] * patch),
        patch_size=(patch, patch),
        has_cls=has_cls,
        n_registers=registers,
    )
    acts = torch.arange(layout.n_tokens).float().reshape(1, -1, 1)
    patches = layout.select(acts, "patches")
    assert patches.shape[1] == grid[0] * grid[1]
    assert patches[0, 0, 0] == layout.n_prefix
    assert layout.token_mask("all").all()
    if has_cls:
        assert layout.select(acts, "cls")[0, 0, 0] == 0
    if registers:
        assert layout.select(acts, "registers")[0, :, 0].tolist() == list(
            range(int(has_cls), layout.n_prefix)
        )
    covered = np.zeros(layout.image_size)
    for p in range(layout.n_patches):
        left, top, right, bottom = layout.patch_box(p)
        covered[top:bottom, left:right] += 1
    assert (covered == 1).all()  # patches tile the input exactly once
    assert TokenLayout.from_dict(layout.to_dict()) == layout


def test_layout_rejects_bad_values():
    with pytest.raises(ValueError, match="not a multiple"):
        TokenLayout(image_size=(30, 32), patch_size=(8, 8), has_cls=True)
    layout = TokenLayout(image_size=(32, 32), patch_size=(8, 8), has_cls=False)
    with pytest.raises(ValueError, match="no CLS token"):
        layout.token_indices("cls")
    with pytest.raises(ValueError, match="unknown token selection"):
        layout.token_indices("pachtes")


def test_unknown_backbone_ids_suggest_close_names():
    with pytest.raises(UnknownBackboneError, match="use one of"):
        HookedSAEViT.from_pretrained("tim:vit_tiny_patch16_224")
    with pytest.raises(UnknownBackboneError, match="Did you mean: vit_tiny_patch16_224"):
        HookedSAEViT.from_pretrained("timm:vit_tiny_patch16_244", pretrained=False)
    with pytest.raises(UnknownBackboneError, match="open_clip has no architecture"):
        HookedSAEViT.from_pretrained("open_clip:ViT-B-61/openai", pretrained=False)
    with pytest.raises(KeyError):  # errors also inherit the matching builtin
        HookedSAEViT.from_pretrained("nope:x")
    families = {row["family"] for row in list_backbones()}
    assert {"timm", "open_clip", "transformers", "demo", "module"} <= families


def test_pretrained_timm_from_local_dir(tmp_path, tiny_vit):
    """The real loading path (pretrained=True) reading weights saved locally by timm."""
    import timm.models

    timm.models.save_for_hf(tiny_vit.backbone, str(tmp_path), safe_serialization=True)
    loaded = HookedSAEViT.from_pretrained(f"timm:local-dir:{tmp_path}", pretrained=True, img_size=32)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(pixels), tiny_vit(pixels))
    also = HookedSAEViT.from_pretrained(str(tmp_path), pretrained=True, img_size=32)
    assert also.n_layers == 2


def test_pretrained_transformers_from_local_dir(tmp_path):
    import transformers as tf

    model = tf.Dinov2Model(
        tf.Dinov2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        )
    ).eval()
    model.save_pretrained(tmp_path)
    tf.BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(
        tmp_path
    )
    hooked = HookedSAEViT.from_pretrained(f"hf:{tmp_path}")
    assert hooked.layout.n_tokens == 5 and hooked.preprocessing["library"] == "transformers"
    pixels = hooked.preprocess([_photo("RGB")])
    with torch.no_grad():
        assert torch.equal(hooked(pixels).pooler_output, model(pixel_values=pixels).pooler_output)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_transformers_dual_encoder_config_builds_without_weights(tmp_path, family):
    """A config-only folder (``pretrained=False``) of CLIP/SigLIP builds the dual-encoder class at random
    init, as ``transformers``' own constructor does (those classes have no ``from_config``)."""
    import transformers as tf

    text = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50
    )
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    config_cls, model_cls = (
        (tf.CLIPConfig, tf.CLIPModel) if family == "clip" else (tf.SiglipConfig, tf.SiglipModel)
    )
    config_cls(text_config=text, vision_config=vision).save_pretrained(tmp_path)
    hooked = HookedSAEViT.from_pretrained(f"hf:{tmp_path}", pretrained=False)
    assert type(hooked.backbone) is model_cls
    assert hooked.n_layers == 2 and hooked.layout.patch_size == (8, 8)


def test_pretrained_open_clip_from_weights_file(tmp_path, tmp_path_factory):
    from families import register_tiny_open_clip

    register_tiny_open_clip(tmp_path_factory.mktemp("cfg"))
    random = HookedSAEViT.from_pretrained("open_clip:tiny-vit", pretrained=False)
    torch.save(random.backbone.state_dict(), tmp_path / "w.pt")
    loaded = HookedSAEViT.from_pretrained(f"open_clip:tiny-vit/{tmp_path / 'w.pt'}")
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(pixels), random(pixels))
    with pytest.raises(UnknownBackboneError, match="needs a pretrained tag"):
        HookedSAEViT.from_pretrained("open_clip:tiny-vit")


def test_from_module_for_any_vit_given_its_blocks(tiny_vit):
    layout = tiny_vit.layout
    custom = HookedSAEViT.from_module(tiny_vit.backbone, blocks="blocks", layout=layout, backbone_id="my-vit")
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        _, cache = custom.run_with_cache(pixels)
        _, reference = tiny_vit.run_with_cache(pixels)
    custom.remove_bridges()
    assert torch.equal(cache["blocks.1.hook_resid_post"], reference["blocks.1.hook_resid_post"])
    with pytest.raises(UnknownBackboneError, match="pass blocks="):
        HookedSAEViT.from_module(torch.nn.Linear(2, 2))
