"""The vision release registry inside SAELens, resolved against the local Hub; offline behaviour."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import sae_lens.loading.pretrained_sae_loaders as loaders_module
import sae_lens.loading.pretrained_saes_directory as directory_module
import sae_lens.saes.sae as sae_module
import torch
from sae_lens import SAE
from sae_lens.loading.pretrained_sae_loaders import NAMED_PRETRAINED_SAE_LOADERS
from saev_fixtures import header_for, make_weights, saev_forward_latents, write_saev

import vision_sae_lens.hub as hub_api
from vision_sae_lens.errors import HubError
from vision_sae_lens.hub.registry import SAEV_CONVERSION

CLIP = "saev-clip-vit-b-16-in1k"


@pytest.mark.slow
def test_register_is_idempotent_and_survives_cache_clear():
    names = hub_api.register_vision_releases()
    assert CLIP in names and "saev-dinov3-vit-b-16-in1k" in names
    snapshot = dict(get_pretrained_saes_directory())
    assert hub_api.register_vision_releases() == names
    assert dict(get_pretrained_saes_directory()).keys() == snapshot.keys()
    directory_module.get_pretrained_saes_directory.cache_clear()
    # Every module of SAELens that reads the directory sees the releases, also after cache_clear().
    assert directory_module.get_pretrained_saes_directory()[CLIP].conversion_func == SAEV_CONVERSION
    assert sae_module.get_pretrained_saes_directory()[CLIP].repo_id == snapshot[CLIP].repo_id
    assert loaders_module.get_pretrained_saes_directory is directory_module.get_pretrained_saes_directory
    assert SAEV_CONVERSION in NAMED_PRETRAINED_SAE_LOADERS


@pytest.mark.slow
def test_importing_the_package_wires_sae_lens_lazily():
    """A fresh interpreter: the import hook wires SAELens only once SAELens itself is imported."""
    code = (
        "import sys, vision_sae_lens\n"
        "assert 'sae_lens' not in sys.modules, 'import vision_sae_lens imported sae_lens'\n"
        "from sae_lens import SAE\n"
        "from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory as g\n"
        f"assert {CLIP!r} in g()\n"
        "g.cache_clear()\n"
        f"assert {CLIP!r} in g()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def get_pretrained_saes_directory():
    return directory_module.get_pretrained_saes_directory()


def test_saelens_own_releases_untouched():
    directory_module.get_pretrained_saes_directory.cache_clear()
    ours = {r["release"] for r in hub_api.list_vision_releases()}
    before = {k: repr(v) for k, v in get_pretrained_saes_directory().items() if k not in ours}
    loaders_before = {k: v for k, v in NAMED_PRETRAINED_SAE_LOADERS.items() if k != SAEV_CONVERSION}
    hub_api.register_vision_releases()
    after = get_pretrained_saes_directory()
    assert all(repr(after[k]) == v for k, v in before.items())
    assert set(after) - set(before) == ours
    assert {k: v for k, v in NAMED_PRETRAINED_SAE_LOADERS.items() if k != SAEV_CONVERSION} == loaders_before


def test_list_vision_releases_rows():
    rows = hub_api.list_vision_releases()
    clip = next(r for r in rows if r["release"] == CLIP)
    assert clip == {
        "release": CLIP,
        "sae_id": "blocks.10.hook_resid_post",
        "backbone": "open_clip:ViT-B-16/openai",
        "site": "blocks.10.hook_resid_post",
        "tokens": "patches",
        "architecture": "standard",
        "d_in": 768,
        "d_sae": 24576,
        "source": "saev",
        "repo_id": "osunlp/SAE_CLIP_24K_ViT-B-16_IN1K",
    }
    dinov3 = [r for r in rows if r["release"] == "saev-dinov3-vit-l-16-in1k"]
    assert {r["site"] for r in dinov3} == {f"blocks.{i}.hook_resid_post" for i in (13, 15, 17, 19, 21, 23)}
    table = hub_api.format_release_table(rows)
    assert CLIP in table.splitlines()[1] and "24576" in table


def _serve_saev(hub, repo_id, path_in_repo, schema="1A", activation="Relu", threshold=None, seed=0):
    """Put a saev-format sae.pt at ``path_in_repo`` of ``repo_id`` on the local Hub."""
    state = make_weights(seed=seed, threshold=threshold)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_saev(Path(tmp) / "sae.pt", header_for(schema, activation), state).read_bytes()
    hub.commit(repo_id, {path_in_repo: data})
    return state


def test_registered_release_resolves_through_from_pretrained(hub, offline):
    hub_api.register_vision_releases()
    # the release's own repo id, served by the local Hub (only the endpoint is rewritten)
    state = _serve_saev(hub, "osunlp/SAE_CLIP_24K_ViT-B-16_IN1K", "sae.pt", schema="1A")
    sae = SAE.from_pretrained(release=CLIP, sae_id="blocks.10.hook_resid_post")
    x = torch.randn(32, 16)
    torch.testing.assert_close(
        sae.encode(x),
        saev_forward_latents(x, state, activation="Relu", subtract_b_dec=True),
        atol=1e-5,
        rtol=1e-5,
    )
    md = sae.cfg.metadata
    assert (md.backbone, md.hook_name, md.tokens, md.grid) == (
        "open_clip:ViT-B-16/openai",
        "blocks.10.hook_resid_post",
        "patches",
        [14, 14],
    )
    assert md.release == CLIP and md.converted_from == "saev"
    # warm cache + offline: loads again without the server
    offline()
    n = len(hub.requests)
    again = SAE.from_pretrained(release=CLIP, sae_id="blocks.10.hook_resid_post")
    assert len(hub.requests) == n
    assert torch.equal(again.W_enc, sae.W_enc)


def test_multi_checkpoint_release_and_manifest(hub):
    hub_api.register_vision_releases()
    repo = "osunlp/SAE_DINOv3_ViT-B-16_IN1K"
    state = _serve_saev(
        hub, repo, "layer_10/eqht2edc/sae.pt", schema="5", activation="BatchTopK", threshold=0.25
    )
    hub.commit(
        repo,
        {
            "manifest.jsonl": b'{"run_id": "eqht2edc", "layer": 10, "l0": 31.5, "mse": 0.01, '
            b'"sha256": "x", "path": "layer_10/eqht2edc/sae.pt"}\n'
        },
    )
    rows = hub_api.read_saev_manifest("saev-dinov3-vit-b-16-in1k")
    assert rows[0]["sae_id"] == "blocks.10.hook_resid_post/eqht2edc"
    sae = SAE.from_pretrained(release="saev-dinov3-vit-b-16-in1k", sae_id=rows[0]["sae_id"])
    assert sae.cfg.architecture() == "jumprelu" and sae.cfg.metadata.hook_name == "blocks.10.hook_resid_post"
    assert sae.cfg.metadata.n_registers == 4
    x = torch.randn(8, 16)
    torch.testing.assert_close(
        sae.encode(x),
        saev_forward_latents(x, state, activation="BatchTopK", subtract_b_dec=False),
        atol=1e-5,
        rtol=1e-5,
    )
    with pytest.raises(HubError, match="read_saev_manifest"):
        SAE.from_pretrained(release="saev-dinov3-vit-b-16-in1k", sae_id="blocks.10.hook_resid_post/bzmeiyat")


def test_offline_without_cache_fails_fast_and_clearly(hub, offline):
    hub_api.register_vision_releases()
    offline()
    before = len(hub.requests)
    with pytest.raises(HubError, match="not in the local Hugging Face cache"):
        SAE.from_pretrained(release=CLIP, sae_id="blocks.10.hook_resid_post")
    with pytest.raises(Exception, match="(?i)offline|cache"):
        SAE.from_pretrained("my-org/never-downloaded", "blocks.1.hook_resid_post")
    # Fast because nothing is attempted: no request reached the Hub, so there are no retries to wait out
    # (the speed itself is measured in scripts/bench/from_pretrained.py, not asserted here).
    assert hub.requests[before:] == []


def test_import_saev_from_release_with_missing_mean_records_it(hub, tmp_path, caplog):
    hub_api.register_vision_releases()
    _serve_saev(hub, "osunlp/SAE_DINOv2_24K_ViT-B-14_IN1K", "sae.pt", schema="legacy")
    (out,) = hub_api.import_saev("saev-dinov2-vit-b-14-in1k", out_dir=tmp_path / "out")
    sae = SAE.load_from_disk(str(out))
    assert sae.cfg.metadata.saev_input_normalization["scalar"] == pytest.approx(2.0181241035461426)
    assert sae.cfg.metadata.n_registers == 4 and sae.cfg.metadata.patch_size == [14, 14]
    assert "mean is not in the repo" in caplog.text
