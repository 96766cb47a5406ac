"""Naming accuracy on the oracle: label names are right by construction, the shuffled baseline is near
chance, the namer sits in between, and the report shows the table and the comparison column."""

from __future__ import annotations

import pytest
from naming_oracle import LAYOUT, SITE, oracle_sae, write_oracle_store

from vision_sae_lens.benchmark.naming import naming_accuracy, naming_headline, naming_table
from vision_sae_lens.benchmark.report import format_table, write_report
from vision_sae_lens.benchmark.scoring import ScoreConfig, score_rows
from vision_sae_lens.benchmark.truth import SyntheticTruth
from vision_sae_lens.data.synthetic import FACTOR_NAMES, ShapesWorld

N_IMAGES = 120


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    world = ShapesWorld("test", n_images=N_IMAGES)
    store = write_oracle_store(world, tmp_path_factory.mktemp("oracle") / "store")
    sae = oracle_sae()
    truth = SyntheticTruth(world, patch_size=4)
    report = score_rows(
        sae, lambda: store.ordered(SITE, 2048), truth, layout=LAYOUT, n_images=N_IMAGES,
        config=ScoreConfig(probe_ks=(1,), probe_images=20), progress=False,
    )  # fmt: skip
    report["naming"] = naming_accuracy(sae, store, world, report, progress=False)
    return report


def test_oracle_naming_accuracy(oracle):
    naming = oracle["naming"]
    assert naming["recovered_factors"] == naming["factors"] == len(FACTOR_NAMES)
    methods = naming["methods"]
    assert set(methods) == {
        "namer (contrast, re-ranked)", "namer (soft-WPMI)", "labels", "labels (patch masks)", "shuffled"
    }  # fmt: skip
    # The labels are the factors and each latent fires exactly on its factor's patches.
    assert methods["labels"]["accuracy"] == 1.0 and methods["labels"]["top3"] == 1.0
    # ... so at patch level each latent's firing patches are its factor's mask: detected perfectly.
    assert (
        methods["labels (patch masks)"]["accuracy"] == 1.0
        and methods["labels (patch masks)"]["median_auroc"] == 1.0
    )
    assert methods["shuffled"]["accuracy"] < 0.2 and methods["shuffled"]["permutations"] == 1000
    # The namer knows colours, sizes and textures (recorded concept AUROC > 0.9): at least those 8.
    for method in ("namer (contrast, re-ranked)", "namer (soft-WPMI)"):
        assert methods[method]["accuracy"] >= 8 / 19 > methods["shuffled"]["accuracy"]
    assert naming["per_factor"]["color=red"]["labels"] == "color=red"
    assert naming["per_factor"]["shape=ring"]["labels (patch masks)"] == "shape=ring"
    assert naming["per_factor"]["color=red"]["namer (contrast, re-ranked)"] == "color=red"


def test_naming_in_the_report(oracle, tmp_path):
    oracle.update(suite="synthetic", name="oracle", sae={"architecture": "standard"})
    oracle["reconstruction"].setdefault("l0", 0.0)
    caption, header, rows = naming_table(oracle)
    assert "19 recovered factors of 19" in caption and header[1] == "accuracy (recovered)"
    assert [r[0] for r in rows] == [
        "namer (contrast, re-ranked)", "namer (soft-WPMI)", "labels", "labels (patch masks)", "shuffled"
    ]  # fmt: skip
    assert naming_headline(oracle) == oracle["naming"]["methods"]["namer (contrast, re-ranked)"]["accuracy"]
    write_report(oracle, tmp_path)
    assert "Naming accuracy" in (tmp_path / "report.md").read_text()
    assert "naming acc." in format_table([oracle])
    assert naming_table({"factors": []}) is None and naming_headline({}) is None


def test_report_files_replace_a_planted_symlink_and_never_write_through_it(oracle, tmp_path):
    oracle.update(suite="synthetic", name="oracle", sae={"architecture": "standard"})
    oracle["reconstruction"].setdefault("l0", 0.0)
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's own file")
    out = tmp_path / "report"
    out.mkdir()
    for name in ("report.json", "report.md", "report.html", "recovery_per_factor.png"):
        (out / name).symlink_to(precious)
    write_report(oracle, out)
    assert precious.read_text() == "the user's own file"
    assert not (out / "report.md").is_symlink() and "Naming accuracy" in (out / "report.md").read_text()
    assert (out / "recovery_per_factor.png").read_bytes().startswith(b"\x89PNG")
