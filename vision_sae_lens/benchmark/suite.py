"""``score(sae, suite="synthetic")``: the ground-truth benchmark of one SAE, end to end.

The synthetic suite scores SAEs trained on ``demo:shapes-vit`` activations (any site, patch tokens).
It records the SAE's site on the held-out ``synthetic:shapes:test`` images into an activation store
(once; pass ``store=`` to reuse one), streams the store's ordered rows through the SAE
(:func:`~vision_sae_lens.benchmark.scoring.score_rows`), measures the spliced downstream loss on a seeded
random subset of the images, and with ``out_dir`` writes ``report.json``, ``report.md`` and
``report.html`` with plots. :func:`prepare_synthetic` records the training store for SAEs to train on.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vision_sae_lens import fsutil
from vision_sae_lens.benchmark.scoring import ScoreConfig, score_rows
from vision_sae_lens.benchmark.truth import BACKBONE_ID, DEFAULT_SITE, SyntheticTruth
from vision_sae_lens.data.synthetic import ShapesWorld
from vision_sae_lens.errors import ConfigError, SAEMismatchError, StoreMismatchError, close_matches

if TYPE_CHECKING:
    from vision_sae_lens.compat import SAE
    from vision_sae_lens.contracts import ActivationStoreReader

logger = logging.getLogger(__name__)

SUITES = ("synthetic",)


def score(
    sae: SAE | str | Path,
    suite: str = "synthetic",
    *,
    store: ActivationStoreReader | str | Path | None = None,
    out_dir: str | Path | None = None,
    n_images: int | None = None,
    config: ScoreConfig | None = None,
    downstream_images: int = 256,
    browser: bool = False,
    name: str | None = None,
    naming: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``sae`` (a SAELens SAE or checkpoint folder) on a ground-truth suite; returns the report.

    ``store``: an activation store of ``synthetic:shapes:test`` recorded from ``demo:shapes-vit`` at
    the SAE's site (recorded here when None, into ``out_dir/acts-test-<site>`` or a temporary folder).
    ``n_images``: test images to record (default all 1,000). ``downstream_images``: images of the
    spliced downstream metric (0 skips it). With ``out_dir`` the report files and plots are written;
    ``browser=True`` also builds the feature browser of every factor's best latents into
    ``out_dir/browser`` and links them from the report. ``naming``: name the latents with
    ``demo:shapes-clip`` and by labels, and report how often the names name the recovered factors
    (:mod:`vision_sae_lens.benchmark.naming`).
    """
    from sae_lens import SAE

    from vision_sae_lens.backbones import HookedSAEViT
    from vision_sae_lens.backbones.recorded import check_recorded_weights
    from vision_sae_lens.store import ActivationStore, cache_activations

    if suite not in SUITES:
        raise ConfigError(
            f"unknown benchmark suite {suite!r}.{close_matches(suite, SUITES)} Suites: {', '.join(SUITES)}"
        )
    folder = None if isinstance(sae, SAE) else Path(sae)
    if folder is not None:
        if not (folder / "cfg.json").is_file():
            raise SAEMismatchError(
                f"{folder} is not a SAELens checkpoint folder (no cfg.json); pass an SAE folder"
            )
        sae = SAE.load_from_disk(str(folder), device="cpu")
    assert isinstance(sae, SAE)  # loaded just above when a folder was given
    site = _check_sae(sae)
    cfg = config or ScoreConfig()
    model = HookedSAEViT.from_pretrained(BACKBONE_ID)
    model.check_sae(sae)
    tmp = None
    if store is None:
        if out_dir is not None:
            root = Path(out_dir)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="vsl-bench-")
            root = Path(tmp.name)
        world = ShapesWorld("test", n_images=n_images)
        store = cache_activations(
            model, world, sites=[site], tokens="patches", dtype="float32",
            out_dir=root / f"acts-test-{_safe(site)}", batch_size=128, progress=progress,
        )  # fmt: skip
    elif isinstance(store, (str, os.PathLike)):
        store = ActivationStore(store)
    try:
        world = _check_store(store, site)
        check_recorded_weights(model, store.metadata, what=f"store {store.path}")
        truth = SyntheticTruth(world, patch_size=store.layout.patch_size[0])
        report = score_rows(
            sae, lambda: store.ordered(site, cfg.batch_size), truth,
            layout=store.layout, n_images=store.n_images, config=cfg, progress=progress,
        )  # fmt: skip
        if downstream_images > 0:
            from vision_sae_lens.benchmark.downstream import multilabel_downstream

            rng = np.random.default_rng(cfg.seed + 2)
            idx = np.sort(rng.choice(len(world), size=min(downstream_images, len(world)), replace=False))
            report["downstream"] = multilabel_downstream(
                model,
                sae,
                [world[int(i)][0] for i in idx],
                np.stack([world.image_factors(int(i)) for i in idx]),
            )
        if naming:
            from vision_sae_lens.benchmark.naming import naming_accuracy

            report["naming"] = naming_accuracy(sae, store, world, report, seed=cfg.seed, progress=progress)
    finally:
        if tmp is not None:
            tmp.cleanup()
    from vision_sae_lens.backbones.shapes_vit import shapes_backbone_info

    info = shapes_backbone_info()
    report = {
        "suite": suite,
        "name": name or (folder.name if folder is not None else f"{sae.cfg.architecture()}_{sae.cfg.d_sae}"),
        "sae": {"architecture": sae.cfg.architecture(), "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae,
                "site": site, "path": str(folder) if folder is not None else None},
        "backbone": {"id": BACKBONE_ID, "test_accuracy": info.get("test_accuracy"),
                     "test_exact_match": info.get("test_exact_match")},
        "images": int(store.n_images),
        "config": asdict(cfg),
        **report,
    }  # fmt: skip
    if out_dir is not None:
        from vision_sae_lens.benchmark.report import write_report

        link = None
        if browser:
            link = _build_browser(sae, store, report, Path(out_dir) / "browser", progress=progress)
        write_report(report, out_dir, browser=link)
    return report


def _build_browser(
    sae: SAE, store: ActivationStoreReader, report: dict[str, Any], out: Path, *, progress: bool
) -> str:
    """Feature browser pages of the latents that best recover each factor; returns the report's link."""
    from vision_sae_lens.analysis import build_browser

    per_factor = report["recovery"]["patch"]["per_factor"]
    latents = sorted(
        {v["auroc_latent"] for v in per_factor.values()}
        | {v["factor_f1_latent"] for v in per_factor.values()}
    )
    world = ShapesWorld("test", n_images=store.n_images, seed=int(store.dataset.get("seed", 0)))
    build_browser(sae, store, out_dir=out, images=world, latents=latents, max_pages=len(latents),
                  title=f"{report['name']}: best latents per factor", progress=progress,
                  overwrite=True)  # fmt: skip
    # Link back from the browser's front page to the report (after its title; the page is ours to edit).
    index = out / "index.html"
    page = index.read_text("utf-8")
    linked = page.replace("</h1>", '</h1>\n  <p><a href="../report.html">benchmark report</a></p>', 1)
    fsutil.write_atomic(index, linked.encode())
    return "browser/index.html"


def prepare_synthetic(
    out_dir: str | Path,
    *,
    site: str = DEFAULT_SITE,
    train_images: int | None = None,
    test_images: int | None = None,
    progress: bool = True,
) -> tuple[Any, Any]:
    """Record ``site`` of ``demo:shapes-vit`` on the train and test images of ``synthetic:shapes`` into
    ``out_dir/acts-train`` and ``out_dir/acts-test-<site>``; returns both stores (resumes finished ones)."""
    from vision_sae_lens.backbones import HookedSAEViT
    from vision_sae_lens.store import cache_activations

    out = Path(out_dir)
    model = HookedSAEViT.from_pretrained(BACKBONE_ID)
    model.check_site(site)
    stores = []
    for split, n, folder in (
        ("train", train_images, "acts-train"),
        ("test", test_images, f"acts-test-{_safe(site)}"),
    ):
        stores.append(
            cache_activations(
                model, ShapesWorld(split, n_images=n), sites=[site], tokens="patches", dtype="float32",
                out_dir=out / folder, batch_size=128, progress=progress,
            )
        )  # fmt: skip
    return stores[0], stores[1]


def _check_sae(sae: SAE) -> str:
    from vision_sae_lens.metadata import vision_facts_of

    site = sae.cfg.metadata.hook_name
    if not site:
        raise SAEMismatchError(
            "the SAE has no cfg.metadata.hook_name; set it to the demo:shapes-vit site it reads"
        )
    facts = vision_facts_of(sae)
    if facts is not None and facts.backbone != BACKBONE_ID:
        raise SAEMismatchError(
            f"the synthetic suite scores SAEs trained on {BACKBONE_ID} activations; this SAE was trained on "
            f"{facts.backbone!r}. Train one with `vision-sae-lens bench synthetic --out DIR`."
        )
    if facts is not None and facts.tokens != "patches":
        raise SAEMismatchError(
            f"the synthetic suite scores patch-token SAEs; this one reads {facts.tokens!r} tokens"
        )
    return site


def _check_store(store: ActivationStoreReader, site: str) -> ShapesWorld:
    desc = store.dataset
    if store.backbone_id != BACKBONE_ID or desc.get("kind") != "synthetic" or desc.get("split") != "test":
        raise StoreMismatchError(
            f"{store.path} holds {store.backbone_id} activations of {desc.get('kind')}:{desc.get('split')}; the "
            f"synthetic suite needs {BACKBONE_ID} on synthetic:shapes:test (omit store= to record it)."
        )
    if site not in store.sites:
        raise StoreMismatchError(f"{store.path} has sites {store.sites}, not the SAE's site {site!r}")
    if store.tokens != "patches":
        raise StoreMismatchError(f"{store.path} holds {store.tokens!r} tokens; the suite needs patches")
    return ShapesWorld("test", n_images=int(desc["count"]), seed=int(desc.get("seed", 0)))


def _safe(site: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", site)
