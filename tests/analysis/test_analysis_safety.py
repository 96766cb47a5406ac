"""The feature browser is an output like every other: built beside its folder and renamed into place,
marked as ours, locked while it is built, never written into a folder it does not own (nor through
symlinks in one), never mixed from two SAEs; ``analyze`` checks an SAE folder's checksums before any
work; a latent page stays small with 10,000 labels."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from analysis_helpers import SITE, LabelledImages, make_sae
from kill_at import tree_bytes

from vision_sae_lens import cli
from vision_sae_lens.analysis import browser
from vision_sae_lens.errors import OutputExistsError, UnsafePathError
from vision_sae_lens.fsutil import MARKER_FILE, seal_sae_folder
from vision_sae_lens.store import cache_activations


@pytest.fixture(scope="module")
def small(vit, tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    source = LabelledImages(6, n_labels=2)
    store = cache_activations(vit, source, sites=[SITE], out_dir=root / "store", progress=False)
    return make_sae(vit, d_sae=12), store, source


def _build(sae, store, source, out, **kw):
    return browser.build_browser(
        sae, store, out_dir=out, images=source, k=2, max_pages=3, progress=False, **kw
    )


def _index_rows(site: Path) -> list[dict]:
    text = (site / "data" / "index.js").read_text()
    return json.loads(text.removeprefix("window.VSL_INDEX = ").rstrip().rstrip(";"))["latents"]


def _sae_folder(sae, folder: Path) -> Path:
    sae.save_model(str(folder))
    seal_sae_folder(folder)
    return folder


def test_a_crash_during_a_rebuild_leaves_the_previous_browser_as_it_was(small, tmp_path, monkeypatch):
    sae, store, source = small
    out = tmp_path / "site"
    assert _build(sae, store, source, out).index == out / "index.html"
    before = tree_bytes(out)

    def crash(*args, **kwargs):
        raise RuntimeError("killed while writing latent pages")

    monkeypatch.setattr(browser, "write_latent_pages", crash)
    with pytest.raises(RuntimeError, match="latent pages"):
        _build(sae, store, source, out, overwrite=True)
    assert tree_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".site.vsl.lock", "site"]  # no temp folder left


def test_a_folder_that_is_not_our_browser_is_refused_and_left_alone(small, tmp_path):
    sae, store, source = small
    site = tmp_path / "www"  # somebody's web site
    for rel, text in {
        "index.html": "<h1>mine</h1>",
        "data/index.js": "x=1",
        "assets/style.css": "b{}",
    }.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    before = tree_bytes(site)
    with pytest.raises(UnsafePathError, match="not created by vision_sae_lens.*nothing was written"):
        _build(sae, store, source, site)
    with pytest.raises(UnsafePathError, match="not created by vision_sae_lens"):
        _build(sae, store, source, site, overwrite=True)
    assert tree_bytes(site) == before
    sealed = _sae_folder(sae, tmp_path / "an_sae")  # ours, but not a browser
    with pytest.raises(UnsafePathError, match="holds a vision_sae_lens sae folder"):
        _build(sae, store, source, sealed, overwrite=True)


def test_symlinked_data_and_latents_folders_are_never_written_through(small, tmp_path):
    sae, store, source = small
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "index.js").write_text("precious")
    out = tmp_path / "site"
    out.mkdir()
    (out / "data").symlink_to(victim)
    (out / "latents").symlink_to(victim)
    with pytest.raises(UnsafePathError):  # a folder holding only links is not our browser
        _build(sae, store, source, out)
    assert sorted(p.name for p in victim.iterdir()) == ["index.js"]
    # Our own browser whose data/ was swapped for a link: the rebuild replaces the link, not its target.
    own = tmp_path / "own"
    _build(sae, store, source, own)
    for sub in ("data", "latents"):
        os.rename(own / sub, tmp_path / f"{sub}.orig")
        (own / sub).symlink_to(victim)
    _build(sae, store, source, own, overwrite=True)
    assert (
        sorted(p.name for p in victim.iterdir()) == ["index.js"]
        and (victim / "index.js").read_text() == "precious"
    )
    assert not (own / "data").is_symlink() and (own / "data" / "index.js").read_text().startswith(
        "window.VSL_INDEX"
    )


def test_a_second_sae_into_one_out_is_refused_then_replaces_it_whole(vit, small, tmp_path):
    _, store, source = small
    first, second = make_sae(vit, d_sae=12, seed=1), make_sae(vit, d_sae=20, seed=2)
    out = tmp_path / "site"
    pages_first = _build(first, store, source, out).pages
    before = tree_bytes(out)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        _build(second, store, source, out)
    assert tree_bytes(out) == before
    site = _build(second, store, source, out, overwrite=True, latents=[15, 19])
    rows = _index_rows(out)
    assert len(rows) == 20 and site.pages == [15, 19]
    assert sorted(p.name for p in (out / "latents").iterdir()) == ["15.html", "19.html"]
    assert sorted(p.name for p in (out / "img").glob("thumb_*")) == ["thumb_15.png", "thumb_19.png"]
    assert set(pages_first) - {15, 19}, "the first SAE's pages must differ for this check to mean anything"
    assert json.loads((out / MARKER_FILE).read_text())["kind"] == "browser"


@pytest.mark.slow
def test_concurrent_analyze_runs_into_one_out_one_wins_the_other_is_refused(vit, small, tmp_path, capsys):
    _, store, _ = small
    sae12, sae20 = (_sae_folder(make_sae(vit, d_sae=d, seed=d), tmp_path / f"sae{d}") for d in (12, 20))
    out, lock = tmp_path / "site", tmp_path / ".site.vsl.lock"
    args = ["analyze", "--store", str(store.path), "--out", str(out), "-k", "2", "--max-pages", "3"]
    first = subprocess.Popen(
        [sys.executable, "-m", "vision_sae_lens", *args, "--sae", str(sae20)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Freeze the first analyze while it holds the browser's lock (its owner record is in the lock file).
        deadline = time.monotonic() + 300
        while first.poll() is None and time.monotonic() < deadline:
            if lock.is_file() and f'"pid": {first.pid}' in lock.read_text():
                first.send_signal(signal.SIGSTOP)
                break
            time.sleep(0.002)
        assert f'"pid": {first.pid}' in lock.read_text(), "the first analyze never held the lock"
        assert cli.main([*args, "--sae", str(sae12)]) == 1
        err = capsys.readouterr().err
        assert "in use" in err and f"pid {first.pid}" in err, err
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    rows = _index_rows(out)
    assert len(rows) == 20 and all((out / row["page"]).is_file() for row in rows if row["page"])
    assert cli.main([*args, "--sae", str(sae12)]) == 1 and "already exists" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_latent_pages_and_index_stay_small_with_10000_labels(vit, tmp_path):
    source = LabelledImages(8, n_labels=10_000)
    source.labels = [0, 1, 2, 3, 9_996, 9_997, 9_998, 9_999]
    store = cache_activations(vit, source, sites=[SITE], out_dir=tmp_path / "store", progress=False)
    sae = make_sae(vit, d_sae=12)
    site = browser.build_browser(sae, store, out_dir=tmp_path / "site", images=source, k=2, max_pages=4,
                                 progress=False)  # fmt: skip
    root = site.index.parent
    for page in site.pages:
        html = (root / "latents" / f"{page}.html").read_text()
        assert len(html.encode()) < 200_000, (page, len(html))
        assert "more labels:" in html and "of its firing images" in html
    index_js = (root / "data" / "index.js").read_text()
    assert len(index_js.encode()) < 50_000
    assert all(len(row["labels"].split()) <= 5 for row in _index_rows(root))


def test_analyze_refuses_a_tampered_sae_folder_before_work(small, tmp_path, capsys):
    sae, store, _ = small
    folder = _sae_folder(sae, tmp_path / "sae")
    weights = folder / "sae_weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x10
    weights.write_bytes(bytes(data))
    rc = cli.main(["analyze", "--sae", str(folder), "--store", str(store.path), "--out", str(tmp_path / "b")])
    assert rc == 1 and "sae_weights.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_analyze_refuses_an_existing_browser_without_overwrite_before_loading(small, tmp_path, capsys):
    sae, store, source = small
    out = tmp_path / "site"
    _build(sae, store, source, out)
    folder = _sae_folder(sae, tmp_path / "sae")
    args = ["analyze", "--sae", str(folder), "--store", str(store.path), "--out", str(out), "-k", "2"]
    assert cli.main(args) == 1 and "--overwrite" in capsys.readouterr().err
    assert cli.main([*args, "--overwrite", "--max-pages", "2"]) == 0
    assert len([r for r in _index_rows(out) if r["page"]]) == 2
