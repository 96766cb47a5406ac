"""publish only sends complete, intact SAE folders of their own files: checksums.json (which covers
eval.json) is the completion marker and seal; symlinks and unsafe SAE ids are refused."""

from __future__ import annotations

import json

import pytest
from helpers import make_checkpoint

from vision_sae_lens.cli import main
from vision_sae_lens.errors import HubError, UnsafePathError
from vision_sae_lens.fsutil import SAE_CHECKSUMS_FILE, check_inside, check_name, seal_sae_folder
from vision_sae_lens.hub import push_to_hub


def test_folder_without_completion_marker_is_refused_until_sealed(hub, tmp_path, capsys):
    folder = make_checkpoint(tmp_path / "run")
    (folder / SAE_CHECKSUMS_FILE).unlink()  # as if training stopped before sealing it
    n = len(hub.requests)
    with pytest.raises(HubError, match="no checksums.json.*verify --seal"):
        push_to_hub([folder], repo_id="my-org/never")
    assert len(hub.requests) == n
    assert main(["verify", "--seal", str(folder)]) == 0 and "sealed" in capsys.readouterr().out
    assert push_to_hub([folder], repo_id="my-org/never", dry_run=True).saes


@pytest.mark.parametrize("victim", ["sae_weights.safetensors", "cfg.json"])
def test_edited_files_are_refused_before_any_upload(hub, tmp_path, victim):
    folder = make_checkpoint(tmp_path / "run")
    path = folder / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    n = len(hub.requests)
    with pytest.raises(HubError, match=f"{victim}.*sha256"):
        push_to_hub([folder], repo_id="my-org/never")
    assert len(hub.requests) == n


@pytest.mark.parametrize("sae_id", ["../x", "/abs", "a/../b", "README.md", "a/"])
def test_unsafe_sae_ids_are_refused(hub, tmp_path, sae_id):
    with pytest.raises(HubError, match="invalid SAE ids"):
        push_to_hub(
            [make_checkpoint(tmp_path / "run")], repo_id="my-org/never", sae_ids=[sae_id], dry_run=True
        )


@pytest.mark.parametrize("name", ["../x", "/abs", "a/../../b", "C:\\x", "a\x00b"])
def test_names_that_become_paths_stay_inside_their_parent(tmp_path, name):
    with pytest.raises(UnsafePathError):
        check_inside(tmp_path, check_name(name, what="SAE id", allow_slash=True), what="SAE id")


def test_symlink_out_of_the_parent_is_refused(tmp_path):
    (tmp_path / "parent").mkdir()
    (tmp_path / "parent" / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError, match="resolves outside"):
        check_inside(tmp_path / "parent", "link/x", what="SAE id")


@pytest.mark.parametrize(
    "sae_id", ["a/./b", "a//b", "a/.", "x/.git/hooks", "/a", "a/b/", "a\x1b[31mb", "a/-b"]
)
def test_sae_ids_follow_the_rules_of_every_user_name(hub, tmp_path, sae_id):
    n = len(hub.requests)
    with pytest.raises(HubError, match="invalid SAE ids"):
        push_to_hub(
            [make_checkpoint(tmp_path / "run")], repo_id="my-org/never", sae_ids=[sae_id], dry_run=True
        )
    assert (
        main(
            ["publish", str(tmp_path / "run"), "--repo-id", "my-org/never", "--sae-ids", sae_id, "--dry-run"]
        )
        == 1
    )
    assert len(hub.requests) == n


def test_a_forged_eval_json_fails_verify_and_publish(hub, tmp_path, capsys):
    folder = make_checkpoint(tmp_path / "run", eval_json={"nmse": 0.31, "l0": 40.0})
    assert "eval.json" in json.loads((folder / SAE_CHECKSUMS_FILE).read_text())["files"]
    (folder / "eval.json").write_text(json.dumps({"nmse": 0.001, "l0": 40.0}))  # better figures, by hand
    assert main(["verify", str(folder)]) == 1
    assert "eval.json: " in capsys.readouterr().err
    n = len(hub.requests)
    with pytest.raises(HubError, match="eval.json"):
        push_to_hub([folder], repo_id="my-org/never")
    assert len(hub.requests) == n


def test_publish_refuses_a_sealed_eval_json_with_nan(hub, tmp_path):
    # Python's json writes and reads NaN; sealed with it, the folder verifies, but the card would show NaN
    folder = make_checkpoint(tmp_path / "run", eval_json={"nmse": float("nan"), "l0": 40.0})
    n = len(hub.requests)
    with pytest.raises(HubError, match="non-finite"):
        push_to_hub([folder], repo_id="my-org/never", dry_run=True)
    assert len(hub.requests) == n


@pytest.mark.parametrize("what", ["eval.json", "sparsity.safetensors", "a folder"])
def test_publish_refuses_symlinks_in_the_folder(hub, tmp_path, what):
    secret = tmp_path / "credentials"
    secret.write_text('{"token": "hf_secretsecretsecret"}')
    folder = make_checkpoint(tmp_path / "run")
    if what == "a folder":
        (folder / "extras").symlink_to(tmp_path)
    else:
        (folder / what).unlink(missing_ok=True)
        (folder / what).symlink_to(secret)
    n = len(hub.requests)
    with pytest.raises(HubError, match="symbolic links"):
        push_to_hub([folder], repo_id="my-org/never", dry_run=True)
    assert len(hub.requests) == n


def test_sealing_refuses_a_symlinked_file(tmp_path):
    folder = make_checkpoint(tmp_path / "run")
    (tmp_path / "outside.json").write_text("{}")
    (folder / "eval.json").symlink_to(tmp_path / "outside.json")
    with pytest.raises(UnsafePathError, match="eval.json is a symbolic link"):
        seal_sae_folder(folder)
