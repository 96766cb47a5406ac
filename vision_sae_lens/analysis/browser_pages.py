"""Writing the feature browser's files: latent pages (heatmaps, charts, ablation), then the index.

Pages are jinja2 templates (``templates/*.html``) rendered with autoescaping on: every string from
data (labels, titles, dataset descriptions) is escaped by the template engine; the only markup
passed in is the SVG of :mod:`~vision_sae_lens.analysis.svg`, built from numbers.
"""

from __future__ import annotations

import collections
import json
import logging
import multiprocessing
import os
import shutil
from concurrent.futures import Future, ProcessPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from vision_sae_lens.analysis._common import encode_acts
from vision_sae_lens.analysis.explain import nearest_latents
from vision_sae_lens.analysis.geometry import grid_to_image, input_geometry, overlay
from vision_sae_lens.analysis.stats import BIN_EDGES
from vision_sae_lens.analysis.svg import histogram_svg, label_bars_svg, spatial_svg
from vision_sae_lens.errors import StoreError
from vision_sae_lens.fsutil import write_atomic
from vision_sae_lens.names_format import WEAK_AUROC

logger = logging.getLogger(__name__)
_TEMPLATES = "templates"
_MIN_DISPLAY_PX = 160
_THUMB_PX = 48
PAGE_LABELS = 20
"""Labels a latent page charts; with more, the highest firing rates and a line for the rest."""
INDEX_LABELS = 5
"""Firing labels per latent in the index's search data (``data/index.js``)."""
_PARALLEL_MIN_IMAGES = 16  # below this, starting worker processes costs more than the rendering


def copy_assets(out: Path) -> None:
    """The stylesheet and the index script."""
    root = resources.files("vision_sae_lens.analysis") / _TEMPLATES
    for name in ("style.css", "browser.js"):
        with resources.as_file(root / name) as path:
            shutil.copyfile(path, out / "assets" / name)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("vision_sae_lens.analysis", _TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    env.globals["weak_auroc"] = WEAK_AUROC
    return env


def write_index(ctx: Any, pages: list[int]) -> dict[str, Any]:
    """``data/index.js`` (one row per latent, every latent: the table pages), then ``index.html``;
    returns the summary the index shows.

    Call it after every latent page is written: ``index.html`` appears last.
    """
    s, has_page = ctx.stats, set(pages)
    score, positional = ctx.interest["score"], ctx.interest["positional"]
    rows = []
    for j in range(s.frequency.numel()):
        best = -1 if s.best_label is None else int(s.best_label[j])
        flag = "dead" if bool(s.dead[j]) else "dense" if bool(s.dense[j]) else ""
        flag = flag or ("positional" if bool(positional[j]) else "")
        rows.append(
            dict(
                id=j,
                score=_num(score[j]),
                freq=_num(s.frequency[j]),
                img_freq=_num(s.image_frequency[j]),
                mean_active=_num(s.mean_active[j]),
                max=_num(s.max_activation[j]),
                label=_label_name(ctx, best),
                labels=" ".join(_firing_labels(ctx, j)),
                precision=None if s.precision is None or best < 0 else _num(s.precision[j]),
                recall=None if s.recall is None or best < 0 else _num(s.recall[j]),
                flag=flag,
                page=f"latents/{j}.html" if j in has_page else None,
                thumb=f"img/thumb_{j}.png" if (ctx.out / "img" / f"thumb_{j}.png").exists() else None,
                **(ctx.names.index_fields(j) if ctx.names is not None else {}),
            )
        )
    summary = {**s.summary(), "positional": int(positional.sum()), "pages": len(pages)}
    if ctx.names is not None:
        summary.update(ctx.names.summary())
    payload = {"summary": summary, "latents": rows, "names": ctx.names is not None, "weak_auroc": WEAK_AUROC}
    (ctx.out / "data" / "index.js").write_text(f"window.VSL_INDEX = {script_json(payload)};\n", "utf-8")
    page = (
        _env()
        .get_template("index.html")
        .render(
            title=ctx.title,
            meta=ctx.meta,
            missing=ctx.missing,
            names=ctx.names.method() if ctx.names is not None else None,
        )
    )
    # Last and atomic: a browser folder with an index.html is a finished one (pages, data, images).
    write_atomic(ctx.out / "index.html", page.encode("utf-8"))
    return summary


def write_latent_pages(
    ctx: Any,
    pages: list[int],
    *,
    model: Any,
    ablation_images: int,
    progress: bool,
    workers: int | None = None,
) -> None:
    """``latents/<id>.html`` for each paged latent, with its heatmaps under ``img/``, rendered on ``workers``
    processes (default: :func:`render_workers`; in this process for a handful of images)."""
    wanted: dict[int, list[tuple[int, str, int]]] = {}
    lower = {j: ctx.samples.lower_quantile_samples(j) for j in pages}
    for j in pages:
        for rank, entry in enumerate(ctx.top.for_latent(j)):
            wanted.setdefault(entry["image"], []).append((j, "top", rank))
        for rank, entry in enumerate(lower[j]):
            wanted.setdefault(entry["image"], []).append((j, "low", rank))
    cards: dict[tuple[int, str], list[tuple[int, dict]]] = {}
    workers = render_workers() if workers is None else max(1, int(workers))
    bar = tqdm(total=len(wanted), desc="heatmaps", unit="img", disable=not progress)
    with _Renderer(workers if len(wanted) >= _PARALLEL_MIN_IMAGES else 1, bar) as renderer:
        for image in sorted(wanted):
            grid_hs = _image_grids(ctx, image, [j for j, _, _ in wanted[image]])
            jobs = []
            for j, kind, rank in wanted[image]:
                if kind == "top":
                    entry = ctx.top.for_latent(j)[rank]
                    patch, caption = entry["patch"], f"image {image}"
                else:
                    entry = lower[j][rank]
                    patch, caption = (
                        int(np.argmax(grid_hs[j])),
                        f"q{int(100 * entry['quantile'])} · image {image}",
                    )
                name = f"img/{j}_{kind}{rank}.png"
                thumb = ctx.out / "img" / f"thumb_{j}.png" if kind == "top" and rank == 0 else None
                jobs.append((ctx.out / name, grid_hs[j], float(ctx.stats.max_activation[j]), patch, thumb))
                card = dict(
                    src=f"../{name}", value=entry["value"], caption=caption, label=ctx.label_of(image)
                )
                card["where"] = f"patch {patch}" if patch >= 0 else f"token {entry.get('token', '')}"
                cards.setdefault((j, kind), []).append((rank, card))
            original = ctx.source[image][0].convert("RGB") if ctx.source is not None else None
            prep = ctx.preprocessing if ctx.source is not None else {}
            renderer.submit(render_heatmaps, original, ctx.view.layout, prep, jobs)
    bar.close()
    neighbours = nearest_latents(ctx.sae, pages)
    effects = _ablation_effects(ctx, pages, model, ablation_images, progress) if model is not None else {}
    tpl = _env().get_template("latent.html")
    for pos, j in enumerate(pages):
        page = tpl.render(
            latent=j,
            title=ctx.title,
            meta=ctx.meta,
            missing=ctx.missing,
            prev=pages[pos - 1] if pos else None,
            next=pages[pos + 1] if pos + 1 < len(pages) else None,
            stats=_stats_items(ctx, j),
            n_active=int(ctx.stats.hist_counts[j].sum()),
            histogram=histogram_svg(ctx.stats.hist_counts[j], BIN_EDGES),
            spatial=_spatial(ctx, j),
            labels=_label_bars(ctx, j),
            neighbours=[dict(id=i, cos=c, page=i in set(pages)) for i, c in neighbours.get(j, [])],
            effect=effects.get(j),
            by=ctx.top.by,
            top_cards=[c for _, c in sorted(cards.get((j, "top"), []), key=lambda rc: rc[0])],
            low_cards=[c for _, c in sorted(cards.get((j, "low"), []), key=lambda rc: rc[0])],
            name=ctx.names.page(j) if ctx.names is not None else None,
            names_method=ctx.names.method() if ctx.names is not None else None,
        )
        (ctx.out / "latents" / f"{j}.html").write_text(page, "utf-8")


def script_json(obj: Any) -> str:
    """``obj`` as JSON that is also safe inside an HTML ``<script>``: non-ASCII characters (the line
    separators U+2028/9 among them) and ``<``, ``>``, ``&`` are written as ``\\u`` escapes, so no string
    in it (a latent's name, a label) can close the script or start markup."""
    text = json.dumps(obj)  # ensure_ascii: JSON's own syntax never uses < > &, only strings can
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _ablation_effects(ctx: Any, pages: list[int], model: Any, n: int, progress: bool) -> dict[int, dict]:
    """Per paged latent: zero-ablate it on its top images (error term kept) and summarise the change."""
    from vision_sae_lens.analysis.interventions import ablate

    if ctx.source is None:
        return {}
    out = {}
    for j in tqdm(pages, desc="ablations", unit="latent", disable=not progress):
        images = [ctx.source[e["image"]][0] for e in ctx.top.for_latent(j)[:n]]
        if not images:
            continue
        m = ablate(model, ctx.sae, images, latents=j, mode="zero").metrics()
        if "mean_kl" in m:
            drop = float(np.mean(m["top1_prob_drop"]))
            out[j] = {
                "images": len(images),
                "rows": [
                    ("top-1 prediction changed", f"{100 * m['top1_changed']:.0f}% of images"),
                    ("mean drop of the clean top-1 probability", f"{drop:+.4f}"),
                    ("mean KL(clean ‖ ablated)", f"{m['mean_kl']:.4g}"),
                ],
            }
        else:
            out[j] = {
                "images": len(images),
                "rows": [("mean cosine to the clean embedding", f"{m['mean_cosine']:.4f}")],
            }
    return out


def _spatial(ctx: Any, j: int) -> Any:
    counts = ctx.stats.token_counts
    lay = ctx.view.layout
    if counts is None or counts.shape[1] == 0:
        return None
    row = torch.zeros(lay.n_tokens, dtype=torch.long)
    width = min(counts.shape[1], lay.n_tokens)
    row[:width] = counts[j, :width]
    return spatial_svg(row[ctx.patch_tokens].reshape(lay.grid))


def _label_bars(ctx: Any, j: int) -> Any:
    """Every label's firing rate in label order, or with more than :data:`PAGE_LABELS` labels the
    highest rates and one line for the rest (10,000 iNat classes must not make a 2 MB page)."""
    rate = _label_rates(ctx.stats, j)
    if rate is None:
        return None
    n = rate.numel()
    if n <= PAGE_LABELS:
        return label_bars_svg([_label_name(ctx, i) or str(i) for i in range(n)], rate)
    shown = torch.sort(rate, descending=True, stable=True).indices[:PAGE_LABELS]
    counts = ctx.stats.label_counts[j].double()
    total = float(counts.sum())
    hidden_share = (total - float(counts[shown].sum())) / total if total else 0.0
    names = [_label_name(ctx, i) or str(i) for i in shown.tolist()]
    return label_bars_svg(names, rate[shown], rest=(n - PAGE_LABELS, hidden_share))


def _firing_labels(ctx: Any, j: int) -> list[str]:
    """Up to :data:`INDEX_LABELS` labels on whose images the latent fires at least half as often as on
    its best label, highest rate first (the index's search text)."""
    rate = _label_rates(ctx.stats, j)
    if rate is None or float(rate.max()) <= 0:
        return []
    order = torch.sort(rate, descending=True, stable=True).indices[:INDEX_LABELS]
    return [_label_name(ctx, i) or str(i) for i in order.tolist() if rate[i] >= 0.5 * rate.max()]


def _label_rates(s: Any, j: int) -> torch.Tensor | None:
    """Per label, the share of its images on which latent ``j`` fires (None without labels)."""
    if s.label_counts is None or s.label_images is None:
        return None
    n = s.label_counts.shape[1]
    return s.label_counts[j].double() / s.label_images[:n].double().clamp(min=1)


def _image_grids(ctx: Any, image: int, latents: list[int]) -> dict[int, np.ndarray]:
    """Per latent, the (grid_h, grid_w) activations of one image, from its rows in the store."""
    offsets = ctx.store.image_offsets()
    lo, hi = int(offsets[image]), int(offsets[image + 1])
    if hi <= lo:
        raise StoreError(f"image {image} has no rows in the store")
    acts = torch.as_tensor(ctx.store.read_rows(ctx.view.site, lo, hi))
    _, token_n = ctx.store.provenance(lo, hi)
    feats_ns = encode_acts(ctx.sae, acts).float().cpu()
    lay = ctx.view.layout
    out = {}
    for j in set(latents):
        grid = np.zeros(lay.n_patches, dtype=np.float32)
        patch = np.asarray(token_n) - lay.n_prefix
        ok = (patch >= 0) & (patch < lay.n_patches)
        grid[patch[ok]] = feats_ns[torch.as_tensor(ok), j].numpy()
        out[j] = grid.reshape(lay.grid)
    return out


def render_heatmaps(
    original: Image.Image | None, layout: Any, preprocessing: dict, jobs: list[tuple]
) -> None:
    """Write the heatmap PNGs of one image: ``jobs`` of (path, grid_hw, vmax, patch, thumbnail path or None).

    A module-level function of picklable arguments: it runs in a worker process."""
    for path, grid_hw, vmax, patch, thumb in jobs:
        pic = _render(original, layout, preprocessing, grid_hw, vmax, patch)
        pic.save(path)
        if thumb is not None:
            pic.resize((_THUMB_PX, _THUMB_PX), Image.Resampling.BILINEAR).save(thumb)


def render_workers() -> int:
    """Rendering processes: one per core this process may use, at most 8 (each holds a few hundred MB of
    imported libraries)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores))


class _Renderer:
    """Runs rendering calls on a pool of worker processes (or here, for one worker), a bounded number in
    flight so memory stays flat, ticking ``bar`` as each finishes; errors surface at the next submit or exit."""

    def __init__(self, workers: int, bar: Any) -> None:
        # spawn, not fork: the parent holds threads (prefetch, hashing) whose locks a fork would copy.
        ctx = multiprocessing.get_context("spawn")
        self.pool = ProcessPoolExecutor(workers, mp_context=ctx) if workers > 1 else None
        self.limit, self.bar = 2 * workers, bar
        self.pending: collections.deque[Future] = collections.deque()

    def submit(self, fn: Any, *args: Any) -> None:
        if self.pool is None:
            fn(*args)
            self.bar.update()
            return
        while len(self.pending) >= self.limit:
            self.pending.popleft().result()
        future = self.pool.submit(fn, *args)
        future.add_done_callback(lambda _: self.bar.update())
        self.pending.append(future)

    def __enter__(self) -> _Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            while self.pending and exc[0] is None:
                self.pending.popleft().result()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)


def _render(
    original: Image.Image | None, lay: Any, prep: dict, grid_hw: np.ndarray, vmax: float, patch: int
) -> Image.Image:
    if original is None:  # no image source: the heatmap on a blank canvas
        original = Image.new("RGB", (lay.image_size[1], lay.image_size[0]), (128, 128, 128))
    geometry = input_geometry(prep, lay, original.size)
    pic = overlay(original, grid_to_image(grid_hw, lay, geometry, original.size), vmax=vmax)
    factor = max(1, -(-_MIN_DISPLAY_PX // max(1, min(pic.size))))
    if factor > 1:
        pic = pic.resize((pic.width * factor, pic.height * factor), Image.Resampling.NEAREST)
    if patch >= 0:
        box = geometry.box_in_original(lay.patch_box(patch))
        ImageDraw.Draw(pic).rectangle([round(v * factor) for v in box], outline=(80, 220, 255), width=2)
    return pic


def _stats_items(ctx: Any, j: int) -> list[tuple[str, str]]:
    s = ctx.stats
    q50, q90, q99 = (float(v) for v in s.quantiles()[j])
    items = [
        ("interest score", f"{float(ctx.interest['score'][j]):.3f}"),
        ("token frequency", f"{float(s.frequency[j]):.5f}"),
        ("image frequency", f"{float(s.image_frequency[j]):.4f}"),
        ("mean when active", f"{float(s.mean_active[j]):.4f}"),
        ("max activation", f"{float(s.max_activation[j]):.4f}"),
        ("quantiles 50/90/99%", f"{q50:.3g} / {q90:.3g} / {q99:.3g}"),
        ("spatial entropy", f"{float(ctx.interest['entropy'][j]):.2f}"),
    ]
    if s.best_label is not None and int(s.best_label[j]) >= 0:
        items += [
            ("best label", _label_name(ctx, int(s.best_label[j])) or ""),
            ("precision / recall", f"{float(s.precision[j]):.3f} / {float(s.recall[j]):.3f}"),
        ]
    flags = [
        f for f, on in (("dense", s.dense[j]), ("positional", ctx.interest["positional"][j])) if bool(on)
    ]
    if flags:
        items.append(("flag", ", ".join(flags)))
    return items


def _label_name(ctx: Any, label: int) -> str | None:
    if label < 0:
        return None
    names = ctx.label_names
    return names[label] if names and label < len(names) else str(label)


def _num(v: Any) -> float | None:
    f = float(v)
    return None if f != f else round(f, 6)
