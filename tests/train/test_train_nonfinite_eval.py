"""No NaN passes as a result: evaluation refuses non-finite rows and metrics, so a run whose held-out images
hold NaN is not sealed with ``"nmse": NaN``, and ``check_report_finite`` is what publishing calls."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import D_IN, SITE, reseal_store, synthetic_rows, write_store
from sae_lens import TopKTrainingSAEConfig

from vision_sae_lens.errors import ConfigError, VisionSAELensError
from vision_sae_lens.train import TrainConfig, evaluate_sae, train_sae
from vision_sae_lens.train.feed import split_store

BATCH = 128


@pytest.fixture
def held_out_nan(tmp_path):
    """A store whose held-out images (the seeded draw training makes) hold one NaN row: training never sees it."""
    store = write_store(tmp_path / "acts", {SITE: synthetic_rows(16384, D_IN)})
    split = split_store(store, eval_fraction=0.05, max_eval_rows=65536, batch_size=BATCH, seed=0)
    row = int(split.eval_rows[len(split.eval_rows) // 2])

    def poison(rows_nd):
        rows_nd[row % 4096, 0] = np.nan
        return rows_nd

    reseal_store(store.path, rows={(SITE, row // 4096): poison})
    return store.path


def _cfg(store, **kw):
    sae = TopKTrainingSAEConfig(d_in=D_IN, d_sae=32, k=4)
    return TrainConfig(
        store=store, site=SITE, sae=sae, training_tokens=BATCH * 20, batch_size=BATCH, name="run", **kw
    )


def test_nan_in_held_out_images_stops_the_run_before_sealing(held_out_nan, tmp_path):
    with pytest.raises(VisionSAELensError, match="NaN or Inf") as err:
        train_sae(_cfg(held_out_nan), out_dir=tmp_path / "out", progress=False)
    assert "verify" in str(err.value)
    assert not (tmp_path / "out" / "run").exists()  # nothing sealed, no eval.json with "nmse": NaN


def test_evaluate_refuses_nan_rows_and_writes_no_report(held_out_nan, tmp_path):
    clean = write_store(tmp_path / "clean", {SITE: synthetic_rows(4096, D_IN)})
    run = train_sae(_cfg(clean, eval_fraction=0.0), out_dir=tmp_path / "out", progress=False)
    with pytest.raises(VisionSAELensError, match="NaN or Inf"):
        evaluate_sae(run.path, held_out_nan, start_row=0, out_dir=tmp_path / "eval", progress=False)
    assert not (tmp_path / "eval" / "eval.json").exists()


def test_non_finite_metrics_are_refused_wherever_they_sit():
    from vision_sae_lens.train.evaluate import check_report_finite

    check_report_finite(
        {"nmse": 0.1, "downstream": {"fraction_recovered": 0.9}, "counts": [1, 2]}, source="ok"
    )
    for bad, named in [
        ({"nmse": math.nan}, "nmse=nan"),
        ({"downstream": {"fraction_recovered": math.inf}}, "downstream.fraction_recovered=inf"),
        ({"histogram": {"counts": [1.0, -math.inf]}}, "histogram.counts[1]=-inf"),
    ]:
        with pytest.raises(VisionSAELensError, match="non-finite") as err:
            check_report_finite(bad, source="eval.json of x")
        assert named in str(err.value) and isinstance(err.value, ValueError)


def test_a_nan_setting_is_refused(held_out_nan):
    with pytest.raises(ConfigError, match="lr must be a finite number"):
        _cfg(held_out_nan, lr=math.nan)
