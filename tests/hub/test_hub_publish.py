"""push_to_hub against a local Hub, read back through SAELens' own from_pretrained."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import TOKEN, make_checkpoint
from sae_lens import SAE

from vision_sae_lens.errors import HubError
from vision_sae_lens.fsutil import seal_sae_folder
from vision_sae_lens.hub import push_to_hub
from vision_sae_lens.hub.model_card import parse_front_matter

EVAL = {
    "mse": 0.1,
    "nmse": 0.25,
    "explained_variance": 0.75,
    "l0": 12.5,
    "dead_fraction": 0.0,
    "downstream": {"fraction_recovered": 0.93},
}


@pytest.mark.slow
def test_push_then_from_pretrained_equals_local(hub, tmp_path):
    run1 = make_checkpoint(tmp_path / "run1", hook_name="blocks.1.hook_resid_post", eval_json=EVAL)
    run2 = make_checkpoint(tmp_path / "run2", hook_name="blocks.0.hook_resid_post", arch="topk", seed=1)
    plan = push_to_hub([run1, run2], repo_id="my-org/my-vision-saes", private=False)
    assert plan.commit_url
    files = hub.files("my-org/my-vision-saes")
    assert {
        "README.md",
        "blocks.1.hook_resid_post/cfg.json",
        "blocks.1.hook_resid_post/eval.json",
        "blocks.0.hook_resid_post/sae_weights.safetensors",
    } <= set(files)
    # one commit, so a reader never sees a half-published repo
    assert len(hub.repos["my-org/my-vision-saes"].commits) == 1

    x = torch.randn(64, 16)
    for folder, sae_id in [(run1, "blocks.1.hook_resid_post"), (run2, "blocks.0.hook_resid_post")]:
        local = SAE.load_from_disk(str(folder))
        remote = SAE.from_pretrained("my-org/my-vision-saes", sae_id)
        assert type(remote) is type(local)
        for name, tensor in local.state_dict().items():
            assert torch.equal(remote.state_dict()[name], tensor), name
        assert torch.equal(remote.encode(x), local.encode(x))
        assert remote.cfg.metadata.backbone == "timm:vit_tiny_patch16_224"
        assert remote.cfg.metadata.hook_name == sae_id


def test_model_card_front_matter_and_table(hub, tmp_path):
    run1 = make_checkpoint(tmp_path / "run1", eval_json=EVAL)
    push_to_hub([run1], repo_id="my-org/card")
    card = hub.files("my-org/card")["README.md"].decode()
    front = parse_front_matter(card)
    assert front["library_name"] == "saelens"
    assert {"sparse-autoencoder", "vision"} <= set(front["tags"])
    assert front["base_model"] == "timm/vit_tiny_patch16_224"
    row = next(line for line in card.splitlines() if line.startswith("| `blocks.1.hook_resid_post`"))
    assert "| 12.5 | 0.25 | 0.75 | 0.93 |" in row
    assert 'SAE.from_pretrained("my-org/card", "blocks.1.hook_resid_post")' in card


def test_dry_run_sends_nothing(hub, tmp_path):
    run1 = make_checkpoint(tmp_path / "run1")
    n = len(hub.requests)
    plan = push_to_hub([run1], repo_id="my-org/dry", dry_run=True)
    assert len(hub.requests) == n
    assert ("blocks.1.hook_resid_post/cfg.json", str(run1 / "cfg.json")) in plan.files
    assert "README.md" in plan.describe()


@pytest.mark.parametrize("problem", ["missing_facts", "duplicate_ids", "not_a_checkpoint", "bad_weights"])
def test_validation_fails_before_any_upload(hub, tmp_path, problem):
    good = make_checkpoint(tmp_path / "good")
    if problem == "missing_facts":
        dirs, match = [make_checkpoint(tmp_path / "bare", facts=False)], "metadata lacks"
    elif problem == "duplicate_ids":
        dirs, match = [good, make_checkpoint(tmp_path / "twin")], "unique"
        kwargs = {"sae_ids": ["same", "same"]}
    elif problem == "not_a_checkpoint":
        (tmp_path / "empty").mkdir()
        dirs, match = [good, tmp_path / "empty"], "missing"
    else:
        bad = make_checkpoint(tmp_path / "bad")
        (bad / "sae_weights.safetensors").write_bytes(b"garbage")
        seal_sae_folder(bad)  # consistent checksums: the load itself must fail (edits: test_hub_safety.py)
        dirs, match = [good, bad], "does not load"
    n = len(hub.requests)
    with pytest.raises(HubError, match=match):
        push_to_hub(dirs, repo_id="my-org/never", **(kwargs if problem == "duplicate_ids" else {}))
    assert len(hub.requests) == n, "nothing may be sent when validation fails"


def test_same_site_twice_gets_folder_ids(hub, tmp_path):
    a = make_checkpoint(tmp_path / "a", seed=1)
    b = make_checkpoint(tmp_path / "b", seed=2)
    plan = push_to_hub([a, b], repo_id="my-org/sweep", dry_run=True)
    assert [s["sae_id"] for s in plan.saes] == ["blocks.1.hook_resid_post/a", "blocks.1.hook_resid_post/b"]


def test_token_never_in_logs_or_errors(hub, tmp_path, caplog, monkeypatch):
    run1 = make_checkpoint(tmp_path / "run1")
    hub.require_token = "hf_theRightTokenXYZ123456"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(HubError) as err:
        push_to_hub([run1], repo_id="my-org/secret", token=TOKEN)
    assert TOKEN not in str(err.value) and TOKEN not in caplog.text
    assert f"Bearer {TOKEN}" in hub.auth_headers  # the token was used for auth, only there
    hub.require_token = None
    hub.fail_commits = True
    with pytest.raises(HubError) as err:
        push_to_hub([run1], repo_id="my-org/secret")
    assert TOKEN not in str(err.value) and TOKEN not in caplog.text
