"""SynthSAEBench in the package: rows from SAELens' generator through a plain-row store and score_rows
give the numbers of SAELens' own ``eval_sae_on_synthetic_data``; ``bench synthsae --quick`` runs."""

from __future__ import annotations

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.synthetic import SyntheticModel, eval_sae_on_synthetic_data, init_sae_to_match_feature_dict

from vision_sae_lens.benchmark import ActivationTruth, ScoreConfig, score_rows
from vision_sae_lens.benchmark.plain_rows import truth_path_of, write_plain_rows
from vision_sae_lens.benchmark.synthsae import (
    QUICK,
    SITE,
    run_synthsae_benchmark,
    sample_rows,
    synthsae_world,
)
from vision_sae_lens.errors import ConfigError, StoreMismatchError
from vision_sae_lens.layout import RowLayout

N_ROWS, SEED = 3000, 5


@pytest.fixture(scope="module")
def world():
    return SyntheticModel(synthsae_world(QUICK))


@pytest.fixture(scope="module")
def rows_store(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "rows"
    store, truth = write_plain_rows(
        out, sample_rows(world, N_ROWS, seed=SEED, batch_size=1000), source_id="synthetic:test", site=SITE,
        directions=world.feature_dict.feature_vectors.detach(), progress=False,
    )  # fmt: skip
    return store, truth


def _sae(kind: str, world) -> torch.nn.Module:
    d, width = QUICK.d, 48
    torch.manual_seed(11)
    sae = (
        TopKSAE(TopKSAEConfig(d_in=d, d_sae=width, k=4))
        if kind == "topk"
        else StandardSAE(StandardSAEConfig(d_in=d, d_sae=width))
    )
    init_sae_to_match_feature_dict(sae, world.feature_dict, noise_level=0.2)  # partly right, partly noise
    with torch.no_grad():
        sae.b_enc.fill_(-0.5)
        sae.W_dec.mul_(0.8)  # some shrinkage
        sae.W_dec[:3] = sae.W_dec[3]  # duplicates: uniqueness < 1
    return sae


@pytest.mark.parametrize("kind", ["topk", "standard"])
def test_score_rows_gives_synthsaebench_numbers(world, rows_store, kind):
    store, truth = rows_store
    sae = _sae(kind, world)
    torch.manual_seed(SEED)  # the same draws as the store's rows
    expected = eval_sae_on_synthetic_data(
        sae, world.feature_dict, world.activation_generator, num_samples=N_ROWS, batch_size=1000
    ).to_dict()
    report = score_rows(sae, lambda: store.ordered(SITE, 700), truth, layout=store.layout, n_images=store.n_images,
                        config=ScoreConfig(probe_images=4), progress=False)  # fmt: skip
    got = report["synthsaebench"]
    assert set(got) == set(expected) and set(got["classification"]) == set(expected["classification"])
    for key, value in expected.items():
        if key == "classification":
            for sub, v in value.items():
                assert got[key][sub] == pytest.approx(v, rel=1e-5, abs=1e-7), sub
        else:
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert 0 < expected["mcc"] < 1 and expected["uniqueness"] < 1 and abs(expected["shrinkage"] - 1) > 0.01
    assert 0 < expected["classification"]["f1_score"] < 1
    # The package's own columns agree where they share a definition.
    assert report["reconstruction"]["shrinkage"] == pytest.approx(expected["shrinkage"], rel=1e-5)
    assert report["reconstruction"]["explained_variance"] == pytest.approx(
        expected["explained_variance"], abs=1e-5
    )
    assert report["reconstruction"]["l0"] == pytest.approx(expected["sae_l0"], rel=1e-6)
    assert set(report["recovery"]) == {"row"} and report["localization"]["available"] is False


def test_the_store_holds_the_generator_rows_and_the_truth_its_activations(world, rows_store):
    store, truth = rows_store
    assert (
        isinstance(store.layout, RowLayout)
        and store.tokens == "all"
        and store.metadata["format_version"] == 2
    )
    hidden, features = zip(*sample_rows(world, N_ROWS, seed=SEED, batch_size=1000), strict=True)
    rows = torch.cat([r.acts for r in store.ordered(SITE, 1024)])
    assert torch.equal(rows, torch.cat(hidden))
    assert torch.equal(truth.feature_activations(torch.arange(N_ROWS)), torch.cat(features))
    loaded = ActivationTruth.load(truth_path_of(store.path), store=store)
    assert torch.equal(loaded.directions, world.feature_dict.feature_vectors.detach())
    assert torch.equal(
        loaded.feature_activations(torch.tensor([7, 0])), truth.feature_activations(torch.tensor([7, 0]))
    )


def test_a_truth_refuses_other_rows(world, rows_store, tmp_path):
    store, truth = rows_store
    other, _ = write_plain_rows(
        tmp_path / "other", sample_rows(world, 10, seed=1), source_id="x", progress=False
    )
    with pytest.raises(StoreMismatchError, match="fingerprint"):
        truth.check_store(other)
    with pytest.raises(ConfigError, match="row indices"):
        truth.feature_activations(torch.tensor([N_ROWS]))
    with pytest.raises(ConfigError, match="feature activations"):
        write_plain_rows(tmp_path / "bad", [(torch.zeros(4, QUICK.d), None)], source_id="x",
                         directions=truth.directions, progress=False)  # fmt: skip
    assert not (tmp_path / "bad").exists()  # the half-written store was removed
    with pytest.raises(ConfigError, match="finite"):
        ActivationTruth(torch.full((2, 3), float("nan")), torch.zeros(1), torch.zeros(0), torch.zeros(0))


def test_bench_synthsae_quick_trains_both_recipes_and_prints_the_table(tmp_path, capsys):
    reports = run_synthsae_benchmark(tmp_path / "run", size=QUICK, progress=False)
    assert [r["name"] for r in reports] == ["package-topk", "saelens-recipe"]
    table = capsys.readouterr().out
    for column in ("MCC", "uniqueness", "latent F1", "shrinkage", "EV", "dead", "L0"):
        assert f" {column} |" in table
    assert "| package-topk |" in table and "| saelens-recipe |" in table
    for r in reports:
        assert 0 < r["synthsaebench"]["mcc"] <= 1 and r["rows"] == QUICK.test_rows
    assert (tmp_path / "run" / "comparison.md").read_text().count("| package-topk |") == 1
    again = run_synthsae_benchmark(tmp_path / "run", size=QUICK, progress=False)  # reuses world, rows, SAEs
    assert again[0]["synthsaebench"] == reports[0]["synthsaebench"]
