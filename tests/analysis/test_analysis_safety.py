"""The feature browser is never seen finished before it is: index.html is written last; and
``analyze`` checks an SAE folder's checksums before any work."""

from __future__ import annotations

import pytest
from analysis_helpers import SITE, LabelledImages, make_sae

from vision_sae_lens import cli
from vision_sae_lens.analysis import browser
from vision_sae_lens.fsutil import seal_sae_folder
from vision_sae_lens.store import cache_activations


@pytest.fixture(scope="module")
def small(vit, tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    source = LabelledImages(6, n_labels=2)
    store = cache_activations(vit, source, sites=[SITE], out_dir=root / "store", progress=False)
    return make_sae(vit, d_sae=12), store, source


def test_index_html_is_written_last(small, tmp_path, monkeypatch):
    sae, store, source = small
    out = tmp_path / "site"
    index = browser.build_browser(
        sae, store, out_dir=out, images=source, k=2, max_pages=3, progress=False
    ).index
    assert index.is_file()

    def crash(*args, **kwargs):
        raise RuntimeError("killed while writing latent pages")

    monkeypatch.setattr(browser, "write_latent_pages", crash)
    with pytest.raises(RuntimeError, match="latent pages"):
        browser.build_browser(sae, store, out_dir=out, images=source, k=2, max_pages=3, progress=False)
    assert not index.exists(), "an unfinished rebuild must not look finished"


def test_analyze_refuses_a_tampered_sae_folder_before_work(small, tmp_path, capsys):
    sae, store, _ = small
    folder = tmp_path / "sae"
    sae.save_model(str(folder))
    seal_sae_folder(folder)
    weights = folder / "sae_weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x10
    weights.write_bytes(bytes(data))
    rc = cli.main(["analyze", "--sae", str(folder), "--store", str(store.path), "--out", str(tmp_path / "b")])
    assert rc == 1 and "sae_weights.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
