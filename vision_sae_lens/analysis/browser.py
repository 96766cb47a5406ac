"""A static HTML feature browser: ``index.html`` plus assets, opened straight from the file system.

One streaming pass over the store computes the statistics, the top-k images and a random sample of
firing images of every latent (:mod:`~vision_sae_lens.analysis.scan`) while remembering where each
image's rows start. Default pages go to the latents with the highest interest score (selective,
mid-frequency; dead, dense and positional latents flagged and left out: see
:mod:`~vision_sae_lens.analysis.explain`). The index is a searchable (ids, labels, flags), sortable,
paged table fed by ``data/index.js`` (a script, not JSON, because browsers block ``fetch`` on
``file://``), with a thumbnail per paged latent. Each page shows the latent's statistics, an
activation histogram with axes, its spatial firing map over the patch grid, firing per label, the
nearest latents by decoder cosine, the effect of ablating it on the model's outputs (with
``model=``), its top images with heatmaps and images from lower activation quantiles. Pages are
jinja2 templates with autoescaping. When the store's images cannot be re-opened, every page says so.
The whole site is built in a temp folder beside ``out_dir``, marked as ours and renamed into place under
a lock (:func:`~vision_sae_lens.fsutil.building_folder`): it never writes into a folder it does not own.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vision_sae_lens.analysis._common import check_latents
from vision_sae_lens.analysis.browser_names import BrowserNames, browser_names, save_names
from vision_sae_lens.analysis.browser_pages import copy_assets, write_index, write_latent_pages
from vision_sae_lens.analysis.explain import SampleAccumulator, interest_scores
from vision_sae_lens.analysis.scan import scan
from vision_sae_lens.analysis.stats import FeatureStats, StatsAccumulator
from vision_sae_lens.analysis.store_images import store_images
from vision_sae_lens.analysis.topk import TopActivations, TopKAccumulator
from vision_sae_lens.errors import ConfigError, escape_control
from vision_sae_lens.fsutil import building_folder
from vision_sae_lens.layout import RowLayout
from vision_sae_lens.train.evaluate import DENSE_THRESHOLD, DENSITY_MAX_ROWS

if TYPE_CHECKING:
    from vision_sae_lens.backbones import HookedSAEViT
    from vision_sae_lens.compat import SAE
    from vision_sae_lens.contracts import ActivationStoreReader

logger = logging.getLogger(__name__)


def build_browser(
    sae: SAE,
    store: ActivationStoreReader,
    *,
    out_dir: str | Path,
    images: Any = None,
    k: int = 16,
    by: str = "max",
    latents: Any = None,
    max_pages: int = 200,
    batch_size: int = 4096,
    title: str | None = None,
    model: HookedSAEViT | None = None,
    ablation_images: int = 8,
    progress: bool = True,
    overwrite: bool = False,
    max_rows: int | None = DENSITY_MAX_ROWS,
    render_workers: int | None = None,
    names: Any = None,
    namer: Any = None,
    concepts: Any = None,
) -> BrowserSite:
    """Write the feature browser for ``sae`` over an activation ``store`` into the folder ``out_dir``.

    Returns a :class:`BrowserSite`: the path of ``index.html``, the summary the index shows (latents,
    dead, dense, positional, pages, ...) and the latents that got a page.

    The browser is built in a temp folder beside ``out_dir`` and renamed into place when complete
    (:func:`~vision_sae_lens.fsutil.building_folder`): ``out_dir`` must be new or empty, or, with
    ``overwrite``, a browser this package wrote (its marker file), which is then replaced whole; any
    other folder is refused before the scan, and a second build into the same ``out_dir`` while one
    runs gets :class:`~vision_sae_lens.errors.OutputLockedError`.

    ``images``: the store's images (anything ``data.open_images`` takes); default: re-opened from the
    store's dataset description when possible (demo, Hugging Face datasets, image folders found beside
    the store or the working directory with the recorded file list), else every page says the images
    are missing and heatmaps are drawn on a blank canvas. ``latents``: which latents get a page
    (default: the ``max_pages`` with the highest interest score). ``model``: the backbone, to show the
    effect of ablating each paged latent on its ``ablation_images`` top images. ``max_rows``: a store with
    more rows is scanned on a seeded random, label-stratified sample of whole images holding at most that
    many rows (default: the rows evaluation counts dead and dense latents on; None scans every row).
    ``render_workers``: processes that render heatmaps (default: one per core, at most 8).

    Latent names (see :mod:`~vision_sae_lens.analysis.browser_names`): ``names`` (a names.json, its
    document or a ``LatentNames``), checked against the SAE and store before the scan, or ``namer`` and
    ``concepts`` to name the latents while building (kept as ``out_dir/names.json``); the index then
    shows and searches each latent's name with its detection AUROC, and each page its runner-ups.
    """
    if isinstance(store.layout, RowLayout):  # before any file is written
        raise ConfigError(
            "the feature browser shows image patches, but this store holds plain rows (RowLayout: one "
            "example per row, no image grid); use top_activating / feature_stats on it instead."
        )
    with building_folder(out_dir, kind="browser", overwrite=overwrite, what="feature browser") as out:
        for sub in ("assets", "data", "latents", "img"):
            (out / sub).mkdir()
        source, missing = store_images(store, images)  # a refused dataset description fails before the scan
        if missing:
            logger.warning(
                "%s; pass images=... (--images) to show them (heatmaps are drawn on a blank canvas).",
                escape_control(missing),
            )
        shown_names = browser_names(
            sae, store, names, namer=namer, concepts=concepts, images=source, progress=progress
        )
        labels = store.labels
        d_sae = int(sae.cfg.d_sae)
        stats_acc = StatsAccumulator(d_sae, labels=labels, n_labels=len(store.label_names or []))
        topk_acc = TopKAccumulator(d_sae, k, by=by)
        samples = SampleAccumulator(d_sae)
        view = scan(
            sae, store, [stats_acc, topk_acc, samples], batch_size=batch_size, progress=progress,
            max_rows=max_rows,
        )  # fmt: skip
        stats = stats_acc.result(dense_threshold=DENSE_THRESHOLD, label_names=store.label_names)
        top = topk_acc.result(view.layout)
        patch_tokens = torch.arange(view.layout.n_prefix, view.layout.n_tokens)
        interest = interest_scores(stats, patch_tokens)
        pages = _pick_pages(sae, stats, interest, latents, max_pages)
        ctx = _Context(sae, store, view, stats, top, source, out, title or _default_title(sae, store))
        ctx.add_scan(interest=interest, samples=samples, missing=missing, patch_tokens=patch_tokens)
        ctx.names = shown_names
        if shown_names is not None:
            save_names(shown_names, out)
        copy_assets(out)
        write_latent_pages(
            ctx, pages, model=model, ablation_images=ablation_images, progress=progress,
            workers=render_workers,
        )  # fmt: skip
        summary = write_index(ctx, pages)
    index = Path(os.path.abspath(out_dir)) / "index.html"
    logger.info("feature browser written to %s (%d latent pages)", index, len(pages))
    return BrowserSite(index=index, summary=summary, pages=list(pages))


@dataclass(frozen=True)
class BrowserSite:
    """What :func:`build_browser` wrote."""

    index: Path
    """The browser's ``index.html`` (open it in a web browser)."""
    summary: dict[str, Any]
    """The figures the index shows: latents, dead, dense, positional, pages, the dead/dense definition."""
    pages: list[int]
    """Latents that got a page, in page order."""


class _Context:
    def __init__(
        self,
        sae: SAE,
        store: ActivationStoreReader,
        view: Any,
        stats: FeatureStats,
        top: TopActivations,
        source: Any,
        out: Path,
        title: str,
    ) -> None:
        self.sae, self.store, self.view, self.stats, self.top = sae, store, view, stats, top
        self.source, self.out, self.title = source, out, title
        self.names: BrowserNames | None = None
        self.labels = store.labels
        self.label_names = stats.label_names
        self.preprocessing = dict(store.metadata.get("preprocessing") or {})
        self.meta = (
            f"{store.backbone_id} · {view.site} · {view.tokens} · "
            f"{stats.frequency.numel()} latents · {stats.n_images} images · {stats.n_rows} tokens"
        )

    def add_scan(
        self,
        *,
        interest: dict[str, torch.Tensor],
        samples: SampleAccumulator,
        missing: str | None,
        patch_tokens: torch.Tensor,
    ) -> None:
        """What the pages read besides the statistics: interest scores, quantile samples, why images are
        missing (None when they are not), the patch token positions."""
        self.interest, self.samples, self.missing, self.patch_tokens = (
            interest,
            samples,
            missing,
            patch_tokens,
        )

    def label_of(self, image: int) -> str:
        if self.labels is None or image >= len(self.labels) or int(self.labels[image]) < 0:
            return ""
        lab = int(self.labels[image])
        return self.label_names[lab] if self.label_names and lab < len(self.label_names) else str(lab)


def _pick_pages(sae: SAE, stats: FeatureStats, interest: dict, latents: Any, max_pages: int) -> list[int]:
    if latents is not None:
        return check_latents(sae, latents).tolist()
    # Highest interest score first (ties: more images, then latent order); flagged latents score 0
    # and only fill pages left over.
    alive = (~stats.dead).nonzero().flatten()
    key = interest["score"][alive].double() * 2 + stats.image_frequency[alive].double() * 1e-6
    order = torch.sort(key, descending=True, stable=True).indices
    return alive[order[:max_pages]].tolist()


def _default_title(sae: SAE, store: Any) -> str:
    return f"SAE feature browser · {sae.cfg.metadata.hook_name}"
