"""The browser at scale: its scan samples whole images up to a row budget (the rows evaluation counts dead
and dense latents on), and heatmaps render in worker processes, byte for byte as in one process."""

from __future__ import annotations

import numpy as np
import pytest
from analysis_helpers import SITE, LabelledImages, make_sae

from vision_sae_lens.analysis import browser_pages as pages_mod
from vision_sae_lens.analysis import build_browser
from vision_sae_lens.store import cache_activations
from vision_sae_lens.train import evaluate


@pytest.fixture(scope="module")
def labelled(vit, tmp_path_factory):
    """(source, store, sae): 60 labelled noise images (3 classes), 16 patch rows each."""
    source = LabelledImages(60, n_labels=3)
    store = cache_activations(
        vit, source, sites=[SITE], out_dir=tmp_path_factory.mktemp("s") / "acts", progress=False
    )
    return source, store, make_sae(vit, d_sae=32)


def test_scan_samples_the_rows_evaluation_counts_firing_on(labelled, tmp_path):
    source, store, sae = labelled
    site = build_browser(sae, store, out_dir=tmp_path / "b", images=source, k=3, max_pages=2, max_rows=300,
                         progress=False)  # fmt: skip
    runs = evaluate.sampled_runs(store, 300, seed=0)
    sampled = int((runs[:, 1] - runs[:, 0]).sum())
    assert 0 < sampled <= 300 < store.n_rows
    assert site.summary["n_rows"] == sampled and site.summary["n_images"] == len(runs)
    report = evaluate.evaluate_sae(sae, store, density_max_rows=300, max_rows=64, progress=False)
    assert report["density_rows"] == sampled
    assert (site.summary["dead"], site.summary["dense"]) == (report["dead"], report["dense"])
    every = build_browser(sae, store, out_dir=tmp_path / "all", images=source, k=3, max_pages=2, max_rows=None,
                          progress=False)  # fmt: skip
    assert every.summary["n_rows"] == store.n_rows and every.summary["n_images"] == 60


def test_sample_is_label_stratified(labelled):
    _, store, _ = labelled
    runs = evaluate.sampled_runs(store, 16 * 12, seed=3)
    images = runs[:, 0] // 16
    assert len(images) == 12 and sorted(store.labels[images].tolist()) == [0] * 4 + [1] * 4 + [2] * 4


@pytest.mark.slow
def test_heatmaps_rendered_in_worker_processes_equal_those_rendered_here(labelled, tmp_path, monkeypatch):
    source, store, sae = labelled
    kwargs = dict(images=source, k=4, max_pages=5, progress=False, max_rows=None)
    build_browser(sae, store, out_dir=tmp_path / "one", render_workers=1, **kwargs)
    monkeypatch.setattr(pages_mod, "_PARALLEL_MIN_IMAGES", 1)
    used = []
    real = pages_mod._Renderer.__init__
    monkeypatch.setattr(
        pages_mod._Renderer,
        "__init__",
        lambda self, workers, bar: (used.append(workers), real(self, workers, bar))[1],
    )
    build_browser(sae, store, out_dir=tmp_path / "two", render_workers=2, **kwargs)
    assert used == [2]
    one = sorted(p.name for p in (tmp_path / "one" / "img").iterdir())
    assert one and one == sorted(p.name for p in (tmp_path / "two" / "img").iterdir())
    for name in one:
        assert (tmp_path / "one" / "img" / name).read_bytes() == (
            tmp_path / "two" / "img" / name
        ).read_bytes()


def test_sampled_pages_draw_each_image_from_its_own_rows(labelled, tmp_path, monkeypatch):
    """Heatmaps of a sampled scan come from the rows whose provenance names the image (not from the
    position of the image among the scanned rows)."""
    source, store, sae = labelled
    drawn = []
    real = pages_mod._image_grids
    monkeypatch.setattr(pages_mod, "_image_grids", lambda ctx, image, latents: drawn.append(
        (image, latents, out := real(ctx, image, latents))) or out)  # fmt: skip
    build_browser(sae, store, out_dir=tmp_path / "b", images=source, k=3, max_pages=3, max_rows=300,
                  render_workers=1, progress=False)  # fmt: skip
    image_n, token_n = store.provenance(0, store.n_rows)
    assert drawn and any(image > 20 for image, _, _ in drawn)  # images past the sampled rows' count
    for image, latents, grids in drawn:
        rows = np.flatnonzero(image_n == image)
        feats = sae.encode(store.read_rows(SITE, int(rows[0]), int(rows[-1]) + 1)).detach()
        for j in latents:
            patch = token_n[rows] - store.layout.n_prefix
            assert np.allclose(grids[j].reshape(-1)[patch], feats[:, j].numpy(), atol=1e-6)
