"""Latent names in the feature browser: the index and the pages show what names.json says, hostile names
are escaped and bounded, names of another SAE or store are refused, ``analyze`` finds the SAE folder's
own names.json, and a real headless browser searches by name."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from analysis_helpers import headless_chromium, needs_chromium, read_index
from naming_oracle import N_FACTORS, oracle_sae, write_oracle_store

from vision_sae_lens import cli
from vision_sae_lens.analysis import build_browser, name_latents, write_names
from vision_sae_lens.data.synthetic import ShapesWorld
from vision_sae_lens.errors import ConfigError, SAEMismatchError
from vision_sae_lens.fsutil import MAX_JSON_BYTES, seal_sae_folder, verify_sae_folder
from vision_sae_lens.names_format import MAX_DISPLAY_CHARS, MAX_NAMES_BYTES, WEAK_AUROC, is_weak, read_names

N_IMAGES = 120
HOSTILE = "</script><img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def named(tmp_path_factory):
    """(world, store, sealed SAE folder holding names.json by the store's labels, the names document)."""
    root = tmp_path_factory.mktemp("browser-names")
    world = ShapesWorld("test", n_images=N_IMAGES)
    store = write_oracle_store(world, root / "store")
    sae = oracle_sae()
    sae.save_model(str(root / "sae"))
    seal_sae_folder(root / "sae")
    names = name_latents(sae, store, max_images=None, progress=False)  # the store's labels: main shapes
    write_names(names, root / "sae")
    return world, store, root / "sae", json.loads((root / "sae" / "names.json").read_text())


def test_index_and_pages_show_the_names_and_their_evidence(named, tmp_path):
    world, store, sae_dir, doc = named
    site = build_browser(
        oracle_sae(), store, out_dir=tmp_path / "site", names=sae_dir / "names.json", max_pages=N_FACTORS, k=1,
        render_workers=1, progress=False,
    )  # fmt: skip
    data = read_index(tmp_path / "site")
    weak = 0
    for row, entry in zip(data["latents"], doc["latents"], strict=True):
        assert (row["name"], row["name_score"], row["auroc"]) == (
            entry["name"],
            entry["score"],
            entry["auroc"],
        )
        assert (
            row["weak"] == (entry["auroc"] is None or entry["auroc"] < WEAK_AUROC) == is_weak(entry["auroc"])
        )
        weak += row["weak"]
    assert 0 < weak < N_FACTORS, "the oracle named by shapes has both strong and weak names"
    assert site.summary["named"] == N_FACTORS and site.summary["weak_names"] == weak
    assert data["names"] is True and "Names:" in (tmp_path / "site" / "index.html").read_text()
    for entry in doc["latents"]:
        page = (tmp_path / "site" / "latents" / f"{entry['latent']}.html").read_text()
        assert f"<title>Latent {entry['latent']} &middot; {entry['name']}" in page
        assert f"<dd>{entry['auroc']:.3f}</dd>" in page and "runner-up names" in page
        assert f"<dt>F1</dt><dd>{entry['score']:.3f}</dd>" in page and "need not descend" not in page
        assert all(f"<td>{r['name']}</td>" in page for r in entry["runner_up"])
        assert ('class="badge"' in page) == is_weak(entry["auroc"])
    # without names the index has no name columns (and the data says so)
    build_browser(oracle_sae(), store, out_dir=tmp_path / "plain", max_pages=1, k=1, progress=False)
    assert read_index(tmp_path / "plain")["names"] is False
    assert 'data-key="name"' not in (tmp_path / "plain" / "index.html").read_text()


def test_hostile_names_are_escaped_and_bounded(named, tmp_path):
    world, store, _, doc = named
    evil = copy.deepcopy(doc)
    evil["latents"][0]["name"] = HOSTILE
    evil["latents"][1]["runner_up"][0]["name"] = HOSTILE + "&amp;"
    evil["latents"][2]["name"] = "x" * 5000
    build_browser(
        oracle_sae(), store, out_dir=tmp_path / "site", names=evil, latents=[0, 1, 2], k=1, render_workers=1,
        progress=False,
    )  # fmt: skip
    script = (tmp_path / "site" / "data" / "index.js").read_text()
    assert "<" not in script and ">" not in script and "&" not in script  # nothing can close the script
    rows = read_index(tmp_path / "site")["latents"]
    assert rows[0]["name"] == HOSTILE  # the same text, once parsed
    assert len(rows[2]["name"]) == MAX_DISPLAY_CHARS and rows[2]["name"].endswith("…")
    for j in (0, 1, 2):
        page = (tmp_path / "site" / "latents" / f"{j}.html").read_text()
        assert "<img src=x" not in page and "</script><img" not in page
        assert "x" * (MAX_DISPLAY_CHARS + 1) not in page
    page0 = (tmp_path / "site" / "latents" / "0.html").read_text()
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page0
    assert "&amp;amp;" in (tmp_path / "site" / "latents" / "1.html").read_text()


def test_a_names_file_larger_than_other_json_files_is_read_up_to_its_own_limit(named, tmp_path):
    # 65,536 latents with six names of 200 characters: ~100 MB, above the 64 MiB of config files.
    _, _, _, doc = named
    big = tmp_path / "names.json"
    big.write_text(json.dumps({**doc, "padding": "x" * (MAX_JSON_BYTES + 1)}))  # readers skip unknown keys
    assert read_names(big)["latents"] == doc["latents"]
    huge = tmp_path / "huge" / "names.json"
    huge.parent.mkdir()
    with open(huge, "wb") as fh:
        fh.truncate(MAX_NAMES_BYTES + 1)  # sparse: no disk used
    with pytest.raises(ConfigError, match="larger than"):
        read_names(huge.parent)


def test_names_of_another_sae_or_store_are_refused_before_the_scan(named, tmp_path):
    world, store, sae_dir, doc = named
    other = oracle_sae()
    with torch.no_grad():
        other.W_enc[0, 0] = 2.0  # same site and width, other weights
    with pytest.raises(SAEMismatchError, match="other weights"):
        build_browser(other, store, out_dir=tmp_path / "a", images=world, names=sae_dir, progress=False)
    other_store = write_oracle_store(ShapesWorld("test", n_images=40), tmp_path / "store40")
    with pytest.raises(SAEMismatchError, match="fingerprint"):
        build_browser(oracle_sae(), other_store, out_dir=tmp_path / "b", names=sae_dir, progress=False)
    wrong_width = copy.deepcopy(doc)
    wrong_width["latents"] = wrong_width["latents"][:5]
    with pytest.raises(SAEMismatchError, match="names 5 latents, this SAE has 19"):
        build_browser(oracle_sae(), store, out_dir=tmp_path / "c", names=wrong_width, progress=False)
    assert not any((tmp_path / n).exists() for n in "abc"), "nothing is written before the check"


def test_analyze_uses_the_sae_folders_matching_names_or_names_while_building(named, tmp_path, caplog):
    world, store, sae_dir, doc = named
    common = [
        "analyze",
        "--sae",
        str(sae_dir),
        "--images",
        "synthetic:shapes:test",
        "-k",
        "1",
        "--max-pages",
        "1",
    ]
    assert cli.main([*common, "--store", str(store.path), "--out", str(tmp_path / "own")]) == 0
    assert [r["name"] for r in read_index(tmp_path / "own")["latents"]] == [e["name"] for e in doc["latents"]]
    # The SAE folder's names were made on another store: not shown, and the log says why.
    other_store = write_oracle_store(ShapesWorld("test", n_images=40), tmp_path / "store40")
    with caplog.at_level(logging.WARNING):
        code = cli.main([*common, "--store", str(other_store.path), "--out", str(tmp_path / "other")])
    assert code == 0 and read_index(tmp_path / "other")["names"] is False
    assert "not showing the names" in caplog.text and "fingerprint" in caplog.text
    # An explicit names file that does not fit fails before the scan.
    assert cli.main([*common, "--store", str(other_store.path), "--out", str(tmp_path / "x"),
                     "--names", str(sae_dir / "names.json")]) == 1  # fmt: skip
    assert not (tmp_path / "x").exists()
    # Naming while building: names shown and kept beside the browser; the SAE folder is left as it was.
    code = cli.main([*common, "--store", str(store.path), "--out", str(tmp_path / "namer"), "--namer",
                     "demo:shapes-clip", "--concepts", "builtin:shapes"])  # fmt: skip
    assert code == 0
    rows = read_index(tmp_path / "namer")["latents"]
    assert rows[7]["name"] == "a red shape"
    kept = json.loads((tmp_path / "namer" / "names.json").read_text())
    assert kept["method"]["namer"] == "demo:shapes-clip" and kept["latents"][7]["name"] == "a red shape"
    page = next((tmp_path / "namer" / "latents").glob("*.html")).read_text()
    assert "<dt>contrast score</dt>" in page and "need not descend" in page  # re-ranked best 3
    assert json.loads((sae_dir / "names.json").read_text()) == doc and verify_sae_folder(sae_dir)


@needs_chromium
def test_names_in_headless_chromium(named, tmp_path):
    from selenium.webdriver.common.by import By

    world, store, _, doc = named
    evil = copy.deepcopy(doc)
    evil["latents"][0]["name"] = HOSTILE
    build_browser(oracle_sae(), store, out_dir=tmp_path / "site", images=world, names=evil, latents=[0, 7],
                  k=2, progress=False)  # fmt: skip
    driver = headless_chromium(1400, 900)
    try:
        driver.get((tmp_path / "site" / "index.html").resolve().as_uri())
        cells = driver.find_elements(By.CSS_SELECTOR, "#latents tbody td span.name")
        assert HOSTILE in [c.get_attribute("title") for c in cells]  # shown as text
        assert driver.find_elements(By.CSS_SELECTOR, "img[src='x']") == []  # never as markup
        weak_rows = driver.find_elements(By.CSS_SELECTOR, "#latents tbody td.weak .badge")
        assert len(weak_rows) == sum(e["auroc"] is None or e["auroc"] < WEAK_AUROC for e in evil["latents"])
        query = "a weak " + evil["latents"][7]["name"]  # every word must match: the name, "weak", ...
        driver.find_element(By.ID, "search").send_keys(query)
        rows = driver.find_elements(By.CSS_SELECTOR, "#latents tbody tr")
        shown = {int(r.find_elements(By.TAG_NAME, "td")[0].text) for r in rows}
        want = set()
        for r in read_index(tmp_path / "site")["latents"]:
            text = " ".join(
                [r["name"] or "", "weak" if r["weak"] else "", r["label"] or "", r["labels"], r["flag"]]
            )
            if all(w in text.lower() for w in query.lower().split()):
                want.add(r["id"])
        assert (
            want
            and shown == want
            and any(
                r["name"] == evil["latents"][7]["name"]
                for r in read_index(tmp_path / "site")["latents"]
                if r["id"] in shown
            )
        )
        driver.get((tmp_path / "site" / "latents" / "0.html").resolve().as_uri())
        assert driver.find_element(By.CSS_SELECTOR, ".latent-name").text.startswith(HOSTILE)
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()
