"""ViT-Prisma importer: restricted unpickling, config mapping, latents equal Prisma's encoder."""

from __future__ import annotations

import json
import sys
import types
from contextlib import contextmanager

import pytest
import torch
from sae_lens import SAE
from torch.profiler import ProfilerActivity, profile

from vision_sae_lens.errors import ConversionError, OutputExistsError, UnsafeCheckpointError, UnsafePathError
from vision_sae_lens.fsutil import seal_sae_folder, verify_sae_folder
from vision_sae_lens.hub import import_prisma
from vision_sae_lens.hub.prisma import convert_prisma

D_IN, D_SAE = 16, 64


@contextmanager
def fake_prisma_modules():
    """Make ``vit_prisma.sae.config.VisionModelSAERunnerConfig`` importable while pickling, as
    Prisma's own class would be, then remove it (the importer must work without vit_prisma)."""
    names = ["vit_prisma", "vit_prisma.sae", "vit_prisma.sae.config"]
    mods = {n: types.ModuleType(n) for n in names}

    class VisionModelSAERunnerConfig:
        pass

    VisionModelSAERunnerConfig.__module__ = "vit_prisma.sae.config"
    VisionModelSAERunnerConfig.__qualname__ = "VisionModelSAERunnerConfig"
    mods["vit_prisma.sae.config"].VisionModelSAERunnerConfig = VisionModelSAERunnerConfig
    sys.modules.update(mods)
    try:
        yield VisionModelSAERunnerConfig
    finally:
        for n in names:
            sys.modules.pop(n, None)


def prisma_cfg(**over):
    cfg = {
        "model_name": "open-clip:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K",
        "hook_point_layer": 9,
        "layer_subtype": "hook_resid_post",
        "hook_point": "blocks.9.hook_resid_post",
        "d_in": D_IN,
        "expansion_factor": D_SAE // D_IN,
        "d_sae": D_SAE,
        "activation_fn_str": "relu",
        "activation_fn_kwargs": {},
        "architecture": "standard",
        "normalize_activations": "layer_norm",
        "image_size": 224,
        "context_size": 50,
        "cls_token_only": False,
        "use_patches_only": False,
        "dataset_name": "imagenet1k",
        "device": torch.device("cpu"),
        "dtype": torch.float32,
    }
    cfg.update(over)
    return cfg


def write_prisma(path, cfg, *, seed=0, with_config_json=False):
    g = torch.Generator().manual_seed(seed)
    sd = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g) * 0.3,
        "b_enc": torch.randn(D_SAE, generator=g) * 0.1,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g) * 0.3,
        "b_dec": torch.randn(D_IN, generator=g) * 0.1,
    }
    with fake_prisma_modules() as cls:
        obj = cls.__new__(cls)
        obj.__dict__.update(cfg)
        torch.save({"cfg": obj, "state_dict": sd}, path)
    if with_config_json:
        plain = {
            k: (
                {"__type__": "torch.device", "value": str(v)}
                if isinstance(v, torch.device)
                else {"__type__": "torch.dtype", "value": repr(v)}
                if isinstance(v, torch.dtype)
                else v
            )
            for k, v in cfg.items()
        }
        (path.parent / "config.json").write_text(json.dumps(plain))
    return sd


def prisma_encode(x, sd, cfg):
    """Prisma's encode_standard: layer-norm (eps 1e-5) -> minus b_dec -> W_enc + b_enc -> act."""
    if cfg["normalize_activations"] == "layer_norm":
        mu = x.mean(-1, keepdim=True)
        x = x - mu
        x = x / (x.std(-1, keepdim=True) + 1e-5)
    h = (x - sd["b_dec"]) @ sd["W_enc"] + sd["b_enc"]
    if cfg["activation_fn_str"] == "topk":
        top = torch.topk(h, cfg["activation_fn_kwargs"]["k"], dim=-1)
        return torch.zeros_like(h).scatter(-1, top.indices, torch.relu(top.values))
    return torch.relu(h)


@pytest.mark.parametrize("variant", ["relu_layernorm", "topk_none", "config_json"])
def test_import_matches_prisma_encoder(tmp_path, variant):
    over = (
        {"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 5}, "normalize_activations": "none"}
        if variant == "topk_none"
        else {}
    )
    cfg = prisma_cfg(**over)
    path = tmp_path / "sae.pt"
    sd = write_prisma(path, cfg, with_config_json=variant == "config_json")
    assert "vit_prisma" not in sys.modules
    sae = import_prisma(path, out_dir=tmp_path / "out")
    x = torch.randn(40, D_IN) * 3 + 1
    torch.testing.assert_close(sae.encode(x), prisma_encode(x, sd, cfg), atol=1e-5, rtol=1e-5)
    loaded = SAE.load_from_disk(str(tmp_path / "out"))
    md = loaded.cfg.metadata
    assert md.hook_name == "blocks.9.hook_resid_post" and md.converted_from == "vit_prisma"
    assert md.backbone == "open_clip:hf-hub:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"
    assert md.patch_size == [32, 32] and md.grid == [7, 7] and md.tokens == "all"
    assert loaded.cfg.normalize_activations == cfg["normalize_activations"]


def test_malicious_pickle_refused_by_default(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('owned')",))

    path = tmp_path / "evil.pt"
    torch.save({"cfg": Evil(), "state_dict": {}}, path)
    with pytest.raises(UnsafeCheckpointError, match="trust_remote_pickle"):
        import_prisma(path)
    assert not marker.exists()


def test_trust_remote_pickle_is_an_explicit_opt_in(tmp_path):
    cfg = prisma_cfg()
    path = tmp_path / "sae.pt"
    sd = write_prisma(path, cfg)
    sae = import_prisma(
        path, trust_remote_pickle=True
    )  # vit_prisma absent: config falls back to the stand-in
    x = torch.randn(8, D_IN)
    torch.testing.assert_close(sae.encode(x), prisma_encode(x, sd, cfg), atol=1e-5, rtol=1e-5)


def test_unsupported_activation_names_the_field(tmp_path):
    path = tmp_path / "sae.pt"
    write_prisma(path, prisma_cfg(activation_fn_str="tanh-relu"))
    with pytest.raises(ConversionError, match="activation_fn_str='tanh-relu'"):
        import_prisma(path)


def test_a_config_claiming_millions_of_latents_fails_before_allocating_them():
    """d_sae 3,000,000 over (16, 64) tensors: two 192 MB matrices if built before the shape check.
    PyTorch's own profiler counts every tensor allocation made during the call."""
    state = {
        "W_enc": torch.zeros(16, 64),
        "b_enc": torch.zeros(64),
        "W_dec": torch.zeros(64, 16),
        "b_dec": torch.zeros(16),
    }
    cfg = {"d_in": 16, "d_sae": 3_000_000, "architecture": "standard", "activation_fn_str": "relu"}
    shapes = r"W_enc is \(16, 64\), the config implies \(16, 3000000\)"
    with (
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
        pytest.raises(ConversionError, match=shapes),
    ):
        convert_prisma(cfg, state)
    largest = max((event.cpu_memory_usage for event in prof.events()), default=0)
    assert largest < 2**20, f"an allocation of {largest:,} bytes before the shape check"
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as control:
        convert_prisma({**cfg, "d_sae": 64}, state)
    assert max(event.cpu_memory_usage for event in control.events()) >= 16 * 64 * 4  # the profiler sees them


def test_import_prisma_refuses_an_existing_folder_and_replaces_only_its_own(tmp_path):
    path = tmp_path / "sae.pt"
    write_prisma(path, prisma_cfg())
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    with pytest.raises(UnsafePathError, match="not created by vision_sae_lens"):
        import_prisma(path, out_dir=user)
    with pytest.raises(UnsafePathError, match="not created by vision_sae_lens"):
        import_prisma(path, out_dir=user, overwrite=True)
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
    out = tmp_path / "out"
    import_prisma(path, out_dir=out)
    (out / "eval.json").write_text("{}")  # as if evaluated, then sealed again
    seal_sae_folder(out)
    before = (out / "sae_weights.safetensors").read_bytes()
    write_prisma(path, prisma_cfg(), seed=1)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        import_prisma(path, out_dir=out)
    assert (out / "sae_weights.safetensors").read_bytes() == before and (out / "eval.json").exists()
    import_prisma(path, out_dir=out, overwrite=True)
    assert (out / "sae_weights.safetensors").read_bytes() != before
    assert not (out / "eval.json").exists(), "the old folder's eval.json must not describe the new SAE"
    verify_sae_folder(out)
