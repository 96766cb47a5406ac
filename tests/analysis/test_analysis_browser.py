"""The static feature browser: files, the ``analyze`` command, and a real headless browser."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from analysis_helpers import SITE, LabelledImages, make_sae
from PIL import Image

from vision_sae_lens import cli
from vision_sae_lens.analysis import build_browser
from vision_sae_lens.store import cache_activations

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
)


@pytest.fixture(scope="module")
def browser_site(vit, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    source = LabelledImages(10, n_labels=3)
    store = cache_activations(vit, source, sites=[SITE], out_dir=root / "store", progress=False)
    sae = make_sae(vit, d_sae=24)
    index = build_browser(sae, store, out_dir=root / "site", images=source, k=5, max_pages=6, progress=False)
    return sae, store, index


def read_index(index: Path) -> dict:
    text = (index.parent / "data" / "index.js").read_text()
    return json.loads(text.removeprefix("window.VSL_INDEX = ").rstrip().rstrip(";"))


def test_browser_files_link_up(browser_site):
    sae, store, index = browser_site
    data = read_index(index)
    assert len(data["latents"]) == sae.cfg.d_sae
    pages = [r for r in data["latents"] if r["page"]]
    assert len(pages) == 6
    # Pages go to the latents that fire on the most images.
    paged = {r["id"] for r in pages}
    assert min(r["img_freq"] for r in pages) >= max(
        r["img_freq"] for r in data["latents"] if r["id"] not in paged
    )
    assert all(r["label"] in (None, "class0", "class1", "class2") for r in data["latents"])
    for row in pages:
        html = (index.parent / row["page"]).read_text()
        sources = re.findall(r'<img src="\.\./([^"]+)"', html)
        assert 0 < len(sources) <= 5
        for src in sources:
            with Image.open(index.parent / src) as img:
                assert min(img.size) >= 160  # small originals are enlarged for display
        assert "<svg" in html and "precision / recall" in html
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


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="chromium / chromedriver not installed (apt-get install chromium chromium-driver; .ci/run does)",
)
def test_browser_in_headless_chromium(browser_site, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, _, index = browser_site
    opts = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
    ):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager must not try to download one.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.get(index.resolve().as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "#latents tbody tr")
        assert len(rows) == 24
        driver.find_element(By.ID, "search").send_keys("class1")
        filtered = driver.find_elements(By.CSS_SELECTOR, "#latents tbody tr")
        assert filtered and all("class1" in r.text for r in filtered)
        driver.find_element(By.ID, "search").clear()
        driver.find_element(By.CSS_SELECTOR, 'th[data-key="max"]').click()
        maxes = [
            float(r.find_elements(By.TAG_NAME, "td")[4].text)
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
