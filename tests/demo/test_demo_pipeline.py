"""The demo end to end on a reduced budget: every output exists, loads, and the numbers make sense."""

from __future__ import annotations

import json

import pytest
from sae_lens import SAE

from vision_sae_lens import ActivationStore
from vision_sae_lens.cli import main
from vision_sae_lens.demo.pipeline import DemoConfig, format_summary, run_demo

SMALL = DemoConfig(
    train_images=400,
    test_images=200,
    training_tokens=60_000,
    batch_size=500,
    d_sae=256,
    sweep=(("topk", {"k": 16}), ("standard", {"l1_coefficient": 2.0})),
    browser_latents=6,
)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A file of the user's, and the demo's output folder with a link to it planted at ``summary.json``."""
    victim = tmp_path_factory.mktemp("user") / "precious.txt"
    victim.write_text("keep me")
    out = tmp_path_factory.mktemp("demo")
    (out / "summary.json").symlink_to(victim)
    return victim, out


@pytest.fixture(scope="module")
def demo(planted):
    _, out = planted
    return run_demo(out, config=SMALL, progress=False), out


def test_demo_replaces_a_planted_link_instead_of_writing_through_it(demo, planted):
    victim, out = planted
    assert victim.read_text() == "keep me"
    assert not (out / "summary.json").is_symlink() and (out / "summary.json").is_file()


def test_demo_writes_every_output(demo):
    result, out = demo
    store = ActivationStore(result.store_dir)
    store.verify()
    assert store.n_images == 400 and store.tokens == "patches" and store.sites == [SMALL.site]
    assert len(result.sae_dirs) == 2
    for path in result.sae_dirs:
        sae = SAE.load_from_disk(path)
        assert sae.cfg.d_sae == 256 and sae.cfg.metadata.hook_name == SMALL.site
        assert (path / "eval.json").is_file()
    assert (out / "saes" / "sweep.json").is_file()
    index = result.browser_index
    assert index.is_file() and len(list((index.parent / "latents").glob("*.html"))) == 6
    summary = json.loads((out / "summary.json").read_text())
    assert [row["name"] for row in summary["saes"]] == ["topk-256", "standard-256"]
    assert summary["accuracy"] == result.accuracy


def test_demo_accuracies_make_sense(demo):
    result, _ = demo
    acc = result.accuracy
    assert acc["clean"] > 0.8  # the shipped ViT is a good digit classifier
    for row in result.rows:
        # Above chance (10 digits) and not better than the clean model (a lossy splice may flip a
        # handful of the 200 digits either way, hence the small margin).
        assert 0.1 < row["spliced_accuracy"] <= acc["clean"] + 0.02
        assert row["spliced_accuracy"] > acc["zero_ablation"]
        assert 0 < row["l0"] < 256 and 0 <= row["nmse"] < 1 and 0 <= row["dead_fraction"] <= 1
    text = format_summary(result)
    assert "clean" in text and "topk-256" in text and "standard-256" in text


def test_demo_command_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--out", "--training-tokens", "--train-images", "--test-images", "--site"):
        assert option in help_text


def test_demo_subsets_are_stratified_and_dead_is_one_number(demo):
    import numpy as np

    result, _ = demo
    store = ActivationStore(result.store_dir)
    counts = np.bincount(np.asarray(store.labels), minlength=10)
    assert counts.min() >= 30 and counts.sum() == 400  # not the first 400 digits: those are zeros and ones
    assert store.dataset["subset"]["stratified"] and result.n_test == 200
    index = result.browser_index
    text = (index.parent / "data" / "index.js").read_text()
    browser = json.loads(text.removeprefix("window.VSL_INDEX = ").rstrip().rstrip(";"))["summary"]
    title = index.read_text()
    (paged,) = [p for p in result.sae_dirs if p.name in title]
    report = json.loads((paged / "eval.json").read_text())
    # The browser and eval.json count dead latents by the same definition over the same rows.
    assert browser["dead"] == report["dead"] and browser["n_rows"] == report["density_rows"] == store.n_rows
    for row in result.rows:
        assert row["density_rows"] == store.n_rows
    assert "dead: fires on none of the store's" in format_summary(result)
