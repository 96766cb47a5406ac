"""``vision-sae-lens explain``: names.json beside the SAE's files, by labels and with demo:shapes-clip;
a names.json it did not write is left alone; a store that does not match fails before any work."""

from __future__ import annotations

import json

import pytest
from naming_oracle import oracle_sae, write_oracle_store

from vision_sae_lens.analysis.naming import read_names
from vision_sae_lens.cli import main
from vision_sae_lens.data.synthetic import ShapesWorld

N_IMAGES = 120


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    store = write_oracle_store(ShapesWorld("test", n_images=N_IMAGES), root / "store")
    oracle_sae().save_model(str(root / "sae"))
    return root / "sae", store.path


def test_explain_by_labels_writes_names_beside_the_sae(folders, capsys):
    sae, store = folders
    assert main(["explain", str(sae), "--store", str(store)]) == 0
    doc = read_names(sae)
    assert doc["method"]["kind"] == "labels" and doc["concepts"] == {"source": "labels"}
    assert doc["latents"][0]["name"] == "disc"  # the store's labels: each image's main shape
    out = capsys.readouterr().out
    assert '"named"' in out and str(sae / "names.json") in out


def test_explain_with_the_shapes_namer(folders, tmp_path):
    sae, store = folders
    out = tmp_path / "names.json"
    code = main([
        "explain", str(sae), "--store", str(store), "--namer", "demo:shapes-clip", "--concepts", "builtin:shapes",
        "--images", "synthetic:shapes:test", "--out", str(out), "--similarity", "soft_wpmi", "--rerank", "1", "--top-k", "20",
        "--runner-ups", "2",
    ])  # fmt: skip
    assert code == 0
    doc = read_names(out)
    assert doc["method"]["namer"] == "demo:shapes-clip" and doc["method"]["similarity"] == "soft_wpmi"
    assert doc["method"]["rerank"] == 1
    assert doc["latents"][7]["name"] == "a red shape" and len(doc["latents"][7]["runner_up"]) == 2
    assert doc["store"]["backbone"] == "demo:shapes-vit" and doc["concepts"]["count"] == 19


def test_explain_refuses_foreign_files_and_mismatched_stores(folders, tmp_path, capsys):
    sae, store = folders
    foreign = tmp_path / "names.json"
    foreign.write_text(json.dumps({"notes": "mine"}))
    assert main(["explain", str(sae), "--store", str(store), "--out", str(foreign)]) == 1
    assert "not written by vision_sae_lens" in capsys.readouterr().err
    assert json.loads(foreign.read_text()) == {"notes": "mine"}
    other = tmp_path / "other_sae"
    oracle_sae(site="blocks.0.hook_resid_post").save_model(str(other))
    assert main(["explain", str(other), "--store", str(store), "--namer", "demo:shapes-clip"]) == 1
    assert "does not match the store" in capsys.readouterr().err
    bad = tmp_path / "vocab.txt"
    bad.write_bytes(b"red\x00")
    assert (
        main(
            [
                "explain",
                str(sae),
                "--store",
                str(store),
                "--namer",
                "demo:shapes-clip",
                "--concepts",
                str(bad),
            ]
        )
        == 1
    )
    assert "binary" in capsys.readouterr().err
    assert not (other / "names.json").exists()
