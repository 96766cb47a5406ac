"""eval.json is part of an SAE folder's seal: ``evaluate`` rewriting it updates the seal (the folder
still verifies), a hand edit does not, and an evaluation never lands in another SAE's sealed folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import D_IN, SITE, vision_facts
from kill_at import tree_bytes
from sae_lens import StandardSAE, StandardSAEConfig

from vision_sae_lens.cli import main
from vision_sae_lens.errors import SAEFolderCorruptError, SAEFolderError
from vision_sae_lens.fsutil import SAE_CHECKSUMS_FILE, seal_sae_folder, verify_sae_folder
from vision_sae_lens.metadata import apply_vision_facts
from vision_sae_lens.train import evaluate_sae


def _sealed_sae(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=48))
    apply_vision_facts(sae, vision_facts(SITE))
    sae.save_model(str(folder))
    (folder / "train_config.json").write_text(json.dumps({"name": folder.name, "lr": 1e-3}))
    seal_sae_folder(folder)
    return folder


def test_evaluate_into_its_own_folder_updates_the_seal_and_a_hand_edit_fails(store, tmp_path, capsys):
    folder = _sealed_sae(tmp_path / "sae", seed=0)
    sealed = json.loads((folder / SAE_CHECKSUMS_FILE).read_text())["files"]
    assert "train_config.json" in sealed and "eval.json" not in sealed
    evaluate_sae(folder, store, out_dir=folder, max_rows=512, progress=False)
    assert "eval.json" in json.loads((folder / SAE_CHECKSUMS_FILE).read_text())["files"]
    assert main(["evaluate", str(folder), "--store", str(store.path), "--out", str(folder), "--max-rows", "256",
                 "--no-progress"]) == 0  # fmt: skip
    assert json.loads((folder / "eval.json").read_text())["n_rows"] <= 256
    assert main(["verify", str(folder)]) == 0 and "SAE folder ok" in capsys.readouterr().out
    report = json.loads((folder / "eval.json").read_text())
    (folder / "eval.json").write_text(json.dumps({**report, "nmse": 0.0001}))
    with pytest.raises(SAEFolderCorruptError, match="eval.json: .*checksums.json"):
        verify_sae_folder(folder)
    (folder / "train_config.json").write_text(json.dumps({"name": "forged"}))
    with pytest.raises(SAEFolderCorruptError, match="train_config.json"):
        verify_sae_folder(folder)


def test_an_evaluation_never_lands_in_another_sealed_sae_folder(store, tmp_path):
    mine, other = _sealed_sae(tmp_path / "mine", seed=0), _sealed_sae(tmp_path / "other", seed=1)
    evaluate_sae(other, store, out_dir=other, max_rows=256, progress=False)
    before = tree_bytes(other)
    with pytest.raises(SAEFolderError, match="sealed SAE folder of another SAE"):
        evaluate_sae(mine, store, out_dir=other, max_rows=256, progress=False)
    assert tree_bytes(other) == before
    verify_sae_folder(other)


def test_a_folder_sealed_before_eval_json_was_covered_says_how_to_reseal(store, tmp_path):
    folder = _sealed_sae(tmp_path / "sae", seed=0)
    (folder / "eval.json").write_text("{}")  # added after sealing (as older versions left it)
    with pytest.raises(SAEFolderCorruptError, match="eval.json: not covered.*verify --seal"):
        verify_sae_folder(folder)
