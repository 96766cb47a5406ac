"""The static feature browser: files, the ``analyze`` command, and a real headless browser."""

from __future__ import annotations

import re
import shutil

import pytest
from analysis_helpers import SITE, LabelledImages, headless_chromium, make_sae, needs_chromium, read_index
from PIL import Image

from vision_sae_lens import cli
from vision_sae_lens.analysis import build_browser
from vision_sae_lens.store import cache_activations


@pytest.fixture(scope="module")
def built(vit, tmp_path_factory):
    """(sae, store, what build_browser returned)."""
    root = tmp_path_factory.mktemp("browser")
    source = LabelledImages(10, n_labels=3)
    store = cache_activations(vit, source, sites=[SITE], out_dir=root / "store", progress=False)
    sae = make_sae(vit, d_sae=24)
    site = build_browser(
        sae, store, out_dir=root / "site", images=source, k=5, max_pages=6, model=vit, progress=False
    )
    return sae, store, site


@pytest.fixture(scope="module")
def browser_site(built):
    sae, store, site = built
    return sae, store, site.index


def test_build_browser_returns_what_the_index_shows(built):
    """The caller gets the summary and the paged latents without re-reading the generated JavaScript."""
    _, _, site = built
    data = read_index(site.index)
    assert site.summary == data["summary"] and site.summary["pages"] == len(site.pages) == 6
    assert sorted(site.pages) == sorted(r["id"] for r in data["latents"] if r["page"])


def test_browser_files_link_up(browser_site):
    sae, store, index = browser_site
    data = read_index(index)
    assert len(data["latents"]) == sae.cfg.d_sae
    pages = [r for r in data["latents"] if r["page"]]
    assert len(pages) == 6
    # Pages go to the latents with the highest interest score.
    paged = {r["id"] for r in pages}
    assert min(r["score"] for r in pages) >= max(r["score"] for r in data["latents"] if r["id"] not in paged)
    assert all(r["label"] in (None, "class0", "class1", "class2") for r in data["latents"])
    for row in pages:
        html = (index.parent / row["page"]).read_text()
        sources = re.findall(r'<img src="\.\./([^"]+)"', html)
        top = [src for src in sources if "_top" in src]
        assert 0 < len(top) <= 5 and len(sources) - len(top) <= 4  # top images + lower-quantile samples
        for src in sources:
            with Image.open(index.parent / src) as img:
                assert min(img.size) >= 160  # small originals are enlarged for display
        assert "<svg" in html and "precision / recall" in html
        assert "Where it fires" in html and "Nearest latents" in html and "top-1 prediction changed" in html
        assert "activation (log scale)" in html and "Images missing" not in html
    assert (index.parent / "assets" / "browser.js").is_file()
    assert (
        "file://" not in index.read_text()
        and str(index.parent) not in (index.parent / pages[0]["page"]).read_text()
    )


def test_analyze_command_writes_a_browser(browser_site, tmp_path, capsys):
    sae, store, _ = browser_site
    sae.save_model(str(tmp_path / "sae"))
    code = cli.main(
        [
            "analyze",
            "--sae",
            str(tmp_path / "sae"),
            "--store",
            str(store.path),
            "--out",
            str(tmp_path / "out"),
            "-k",
            "3",
            "--latents",
            "0,2",
            "--batch-size",
            "50",
        ]
    )
    assert code == 0
    assert "feature browser: file://" in capsys.readouterr().out
    data = read_index(tmp_path / "out" / "index.html")
    assert [r["id"] for r in data["latents"] if r["page"]] == [0, 2]
    # The store's test images cannot be re-opened from its description: heatmaps on a blank canvas.
    assert (tmp_path / "out" / "latents" / "2.html").is_file()
    assert (
        cli.main(
            [
                "analyze",
                "--sae",
                str(tmp_path / "sae"),
                "--store",
                str(store.path),
                "--out",
                str(tmp_path / "bad"),
                "--latents",
                "99",
            ]
        )
        == 1
    )


@needs_chromium
def test_browser_in_headless_chromium(browser_site, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, _, index = browser_site
    driver = headless_chromium()
    try:
        driver.get(index.resolve().as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "#latents tbody tr")
        assert len(rows) == 24
        driver.find_element(By.ID, "search").send_keys("class1")
        filtered = driver.find_elements(By.CSS_SELECTOR, "#latents tbody tr")
        # Full-text search: the best label or any label the latent fires on (index.js "labels").
        data = read_index(index)
        want = {
            r["id"]
            for r in data["latents"]
            if r["flag"] != "dead" and ("class1" in (r["label"] or "") or "class1" in r["labels"].split())
        }
        shown = {int(r.find_elements(By.TAG_NAME, "td")[0].text) for r in filtered}
        assert want and shown == want
        driver.find_element(By.ID, "search").clear()
        driver.find_element(By.CSS_SELECTOR, 'th[data-key="max"]').click()
        maxes = [
            float(r.find_elements(By.TAG_NAME, "td")[5].text)
            for r in driver.find_elements(By.CSS_SELECTOR, "#latents tbody tr")
        ]
        assert maxes == sorted(maxes, reverse=True)
        driver.save_screenshot(str(tmp_path / "index.png"))
        driver.find_elements(By.CSS_SELECTOR, "a.latent-link")[0].click()
        assert driver.title.startswith("Latent ")
        all_loaded = (
            "const imgs = Array.from(document.querySelectorAll('#top-images img'));"
            "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);"
        )
        WebDriverWait(driver, 10).until(lambda d: d.execute_script(all_loaded))
        assert driver.find_elements(By.CSS_SELECTOR, ".histogram svg rect")
        shot = tmp_path / "latent.png"
        driver.save_screenshot(str(shot))
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
    finally:
        driver.quit()
    with Image.open(shot) as img:
        assert img.size[0] >= 800 and len(set(img.convert("L").getdata())) > 20  # not a blank page


def test_scores_spatial_map_and_neighbours_match_brute_force(browser_site):
    import torch

    from vision_sae_lens.analysis.explain import interest_scores, nearest_latents
    from vision_sae_lens.analysis.stats import feature_stats

    sae, store, index = browser_site
    stats = feature_stats(sae, store, progress=False)
    rows = store.read_rows(SITE, 0, store.n_rows).float()
    _, token_n = store.provenance(0, store.n_rows)
    fires_ns = sae.encode(rows) > 0
    want = torch.zeros(sae.cfg.d_sae, int(token_n.max()) + 1, dtype=torch.long)
    for t in range(want.shape[1]):
        want[:, t] = fires_ns[torch.as_tensor(token_n == t)].sum(0)
    assert torch.equal(stats.token_counts[:, : want.shape[1]], want)
    patches = torch.arange(store.layout.n_prefix, store.layout.n_tokens)
    got = interest_scores(stats, patches)["score"]
    share = torch.bincount(torch.as_tensor(store.labels), minlength=3).double() / store.n_images
    for j in range(sae.cfg.d_sae):
        if bool(stats.dead[j]) or bool(stats.dense[j]):
            assert got[j] == 0
            continue
        base = share[int(stats.best_label[j])]
        lift = max(0.0, (float(stats.precision[j]) - base) / (1 - base))
        support = min(1.0, float(stats.image_frequency[j]) * store.n_images / 10)
        assert float(got[j]) == pytest.approx(
            lift * (1 - float(stats.image_frequency[j])) * support, abs=1e-6
        )
    w = torch.nn.functional.normalize(sae.W_dec.detach(), dim=-1)
    cos = w @ w.T
    cos.fill_diagonal_(-2)
    near = nearest_latents(sae, [0, 5], n=3)
    assert [i for i, _ in near[5]] == cos[5].topk(3).indices.tolist()
    data = read_index(index)
    assert {r["id"]: r["score"] for r in data["latents"]}[0] == pytest.approx(float(got[0]), abs=1e-5)


def test_labels_and_titles_are_escaped(browser_site, tmp_path):
    sae, store, _ = browser_site

    class Evil:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        @property
        def label_names(self):
            return ["<script>alert(1)</script>", "b&c", "c"]

    index = build_browser(
        sae, Evil(store), out_dir=tmp_path / "site", images=LabelledImages(10, n_labels=3), k=2, max_pages=2,
        title="<b>title</b>", progress=False,
    ).index  # fmt: skip
    page = next((tmp_path / "site" / "latents").glob("*.html")).read_text()
    assert "<script>alert" not in page and "<b>title</b>" not in page and "&lt;b&gt;title&lt;/b&gt;" in page
    assert "&lt;script&gt;" in page or "alert" not in page
    assert "<b>title</b>" not in index.read_text()


def test_image_folder_store_is_reopened_or_the_page_says_images_are_missing(vit, tmp_path):
    import numpy as np

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            rng = np.random.default_rng(i + 10 * len(cls))
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / cls / f"{i}.png"
            )
    store = cache_activations(
        vit, str(tmp_path / "imgs"), sites=[SITE], out_dir=tmp_path / "store", progress=False
    )
    sae = make_sae(vit, d_sae=8)
    index = build_browser(sae, store, out_dir=tmp_path / "site", k=2, max_pages=2, progress=False).index
    assert "Images missing" not in index.read_text()  # found beside the store, file list matching
    shutil.move(str(tmp_path / "imgs"), str(tmp_path / "elsewhere"))
    index = build_browser(sae, store, out_dir=tmp_path / "site2", k=2, max_pages=2, progress=False).index
    assert "Images missing" in index.read_text()
    page = next((tmp_path / "site2" / "latents").glob("*.html")).read_text()
    assert "Images missing" in page and "imagefolder" in page
