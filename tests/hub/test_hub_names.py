"""Latent names on the Hub: ``explain`` seals names.json into the SAE folder, ``publish`` uploads it beside
eval.json and the model card lists the best-detected names (escaped); a hand-edited names.json fails
``verify`` and ``publish``, and names of another SAE never get into a sealed folder or a release."""

from __future__ import annotations

import json
import re

import pytest
import torch
from naming_oracle import N_FACTORS, oracle_sae, write_oracle_store

from vision_sae_lens.analysis import write_names
from vision_sae_lens.cli import main
from vision_sae_lens.data.synthetic import ShapesWorld
from vision_sae_lens.errors import HubError, SAEFolderError
from vision_sae_lens.fsutil import SAE_CHECKSUMS_FILE, seal_sae_folder, verify_sae_folder
from vision_sae_lens.hub import push_to_hub
from vision_sae_lens.hub.model_card import NAMED_ROWS
from vision_sae_lens.names_format import read_names

HOSTILE = "| </script><img src=x onerror=alert(1)> **bold** [link](http://x)\nsecond line"
SAE_ID = "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_oracle_store(ShapesWorld("test", n_images=60), tmp_path_factory.mktemp("names") / "store")


@pytest.fixture
def named_folder(store, tmp_path):
    """A sealed SAE folder named by ``explain`` (the store's labels: each image's main shape)."""
    folder = tmp_path / "sae"
    oracle_sae().save_model(str(folder))
    seal_sae_folder(folder)
    assert main(["explain", str(folder), "--store", str(store.path)]) == 0
    return folder


def test_explain_seals_names_and_publish_uploads_them_with_a_card_table(hub, named_folder):
    assert "names.json" in json.loads((named_folder / SAE_CHECKSUMS_FILE).read_text())["files"]
    assert verify_sae_folder(named_folder)
    # A hostile name, written the way explain writes (sealed): the card must show it as inert text.
    doc = read_names(named_folder)
    best = max((e for e in doc["latents"] if e["auroc"] is not None), key=lambda e: e["auroc"])
    best["name"] = HOSTILE
    write_names(doc, named_folder)
    assert verify_sae_folder(named_folder)

    plan = push_to_hub([named_folder], repo_id="my-org/named")
    files = hub.files("my-org/named")
    assert files[f"{SAE_ID}/names.json"] == (named_folder / "names.json").read_bytes()
    card = files["README.md"].decode()
    assert f"### Latent names of `{SAE_ID}`" in card and "the dataset's labels" in card
    rows = [line for line in card.splitlines() if re.match(r"\| \d+ \|", line)]
    named = [e for e in doc["latents"] if e["name"] is not None and e["auroc"] is not None]
    assert len(rows) == min(NAMED_ROWS, len(named))
    aurocs = [float(r.split(" | ")[2]) for r in rows]
    assert aurocs == sorted(aurocs, reverse=True)  # the best detected first
    assert aurocs[-1] >= sorted((e["auroc"] for e in named), reverse=True)[len(rows) - 1] - 5e-4
    hostile_row = next(r for r in rows if r.startswith(f"| {best['latent']} |"))
    assert "<img" not in card and "</script>" not in card and "\nsecond line" not in card
    assert "&lt;img src=x onerror=alert\\(1\\)&gt;" in hostile_row and "\\*\\*bold\\*\\*" in hostile_row
    assert len(re.findall(r"(?<!\\)\|", hostile_row)) == 5, "a name's pipe must not add a table column"
    assert plan.saes[0]["names"]["latents"][best["latent"]]["name"] == HOSTILE


def test_a_hand_edited_names_json_fails_verify_and_publish(hub, named_folder, capsys):
    doc = read_names(named_folder)
    doc["latents"][0]["auroc"] = 0.999  # a better figure, by hand
    (named_folder / "names.json").write_text(json.dumps(doc))
    assert main(["verify", str(named_folder)]) == 1
    assert "names.json: " in capsys.readouterr().err
    n = len(hub.requests)
    with pytest.raises(HubError, match="names.json"):
        push_to_hub([named_folder], repo_id="my-org/never")
    assert len(hub.requests) == n


def test_names_of_another_sae_stay_out_of_a_sealed_folder_and_a_release(hub, named_folder, tmp_path):
    other = tmp_path / "other"
    sae = oracle_sae()
    with torch.no_grad():
        sae.W_enc[0, 1] = 0.5  # same site and width, other weights
    sae.save_model(str(other))
    seal_sae_folder(other)
    theirs = read_names(named_folder)
    with pytest.raises(SAEFolderError, match="not its SAE's names.*other weights"):
        write_names(theirs, other)
    assert not (other / "names.json").exists() and verify_sae_folder(other)
    # Copied in by hand and sealed on purpose (`verify --seal`): publish still refuses it.
    (other / "names.json").write_text(json.dumps(theirs))
    seal_sae_folder(other)
    n = len(hub.requests)
    with pytest.raises(HubError, match="does not name its SAE.*other weights"):
        push_to_hub([other], repo_id="my-org/never", dry_run=True)
    assert len(hub.requests) == n
    wrong_width = {**theirs, "latents": theirs["latents"][: N_FACTORS - 1]}
    (other / "names.json").write_text(json.dumps(wrong_width))
    seal_sae_folder(other)
    with pytest.raises(HubError, match=f"names {N_FACTORS - 1} latents"):
        push_to_hub([other], repo_id="my-org/never", dry_run=True)
