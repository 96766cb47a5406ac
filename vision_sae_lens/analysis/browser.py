"""A static HTML feature browser: ``index.html`` plus assets, opened straight from the file system.

One streaming pass over the store computes the statistics and the top-k images of every latent
(:mod:`~vision_sae_lens.analysis.scan`) while remembering where each image's rows start. The index
is a searchable, sortable table fed by ``data/index.js`` (a script, not JSON, because browsers block
``fetch`` on ``file://``). Each latent with a page gets ``latents/<id>.html`` with its statistics,
an SVG histogram, and its top images with heatmaps; a top image's heatmap comes from re-reading that
image's rows and encoding them, then painting them over the original image from the dataset.
"""

from __future__ import annotations

import html
import json
import logging
import shutil
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from vision_sae_lens.analysis._common import check_latents, encode_acts
from vision_sae_lens.analysis.geometry import grid_to_image, input_geometry, overlay
from vision_sae_lens.analysis.scan import ImageReduction, scan
from vision_sae_lens.analysis.stats import BIN_EDGES, FeatureStats, StatsAccumulator
from vision_sae_lens.analysis.topk import TopActivations, TopKAccumulator
from vision_sae_lens.errors import StoreError

logger = logging.getLogger(__name__)
_TEMPLATES = "templates"
_MIN_DISPLAY_PX = 160


def build_browser(
    sae: Any,
    store: Any,
    *,
    out_dir: str | Path,
    images: Any = None,
    k: int = 16,
    by: str = "max",
    latents: Any = None,
    max_pages: int = 200,
    batch_size: int = 4096,
    title: str | None = None,
    progress: bool = True,
) -> Path:
    """Write the feature browser for ``sae`` over an activation ``store`` into ``out_dir``; returns index.html.

    ``images``: the store's images (anything ``data.open_images`` takes); default: re-opened from the
    store's dataset description when possible (demo and Hugging Face datasets), else heatmaps are drawn
    on a blank canvas. ``latents``: which latents get a page (default: the ``max_pages`` that fire on the most images).
    """
    out = Path(out_dir)
    for sub in ("assets", "data", "latents", "img"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    labels = getattr(store, "labels", None)
    d_sae = int(sae.cfg.d_sae)
    stats_acc = StatsAccumulator(
        d_sae, labels=labels, n_labels=len(getattr(store, "label_names", None) or [])
    )
    topk_acc = TopKAccumulator(d_sae, k, by=by)
    starts = _ImageStarts()
    view = scan(sae, store, [stats_acc, topk_acc, starts], batch_size=batch_size, progress=progress)
    stats = stats_acc.result(dense_threshold=0.1, label_names=getattr(store, "label_names", None))
    top = topk_acc.result(view.layout)
    pages = _pick_pages(sae, stats, latents, max_pages)
    source = _image_source(store, images)
    ctx = _Context(sae, store, view, stats, top, source, out, title or _default_title(sae, store))
    _copy_assets(out)
    _write_index(ctx, pages)
    _write_latent_pages(ctx, pages, starts, progress)
    logger.info("feature browser written to %s (%d latent pages)", out / "index.html", len(pages))
    return out / "index.html"


class _ImageStarts:
    """Scan consumer: the first row of every image, so an image's rows can be re-read later."""

    def __init__(self) -> None:
        self.row = 0
        self.start: dict[int, tuple[int, int]] = {}

    def rows(self, feats_ns: torch.Tensor, image_n: torch.Tensor, token_n: torch.Tensor) -> None:
        images, counts = torch.unique_consecutive(image_n, return_counts=True)
        offsets = torch.cumsum(counts, 0) - counts
        for img, off, n in zip(images.tolist(), offsets.tolist(), counts.tolist(), strict=True):
            lo, hi = self.start.get(img, (self.row + off, self.row + off))
            self.start[img] = (lo, hi + n)
        self.row += image_n.numel()

    def images(self, red: ImageReduction) -> None:
        pass


class _Context:
    def __init__(self, sae, store, view, stats: FeatureStats, top: TopActivations, source, out: Path, title):
        self.sae, self.store, self.view, self.stats, self.top = sae, store, view, stats, top
        self.source, self.out, self.title = source, out, title
        self.labels = getattr(store, "labels", None)
        self.label_names = stats.label_names
        self.preprocessing = dict(getattr(store, "metadata", {}).get("preprocessing") or {})
        self.meta = (
            f"{getattr(store, 'backbone_id', '')} · {view.site} · {view.tokens} · "
            f"{stats.frequency.numel()} latents · {stats.n_images} images · {stats.n_rows} tokens"
        )

    def label_of(self, image: int) -> str:
        if self.labels is None or image >= len(self.labels) or int(self.labels[image]) < 0:
            return ""
        lab = int(self.labels[image])
        return self.label_names[lab] if self.label_names and lab < len(self.label_names) else str(lab)


def _pick_pages(sae: Any, stats: FeatureStats, latents: Any, max_pages: int) -> list[int]:
    if latents is not None:
        return check_latents(sae, latents).tolist()
    # Most images first: those pages have the most to show; ties keep latent order.
    alive = (~stats.dead).nonzero().flatten()
    order = torch.sort(stats.image_frequency[alive], descending=True, stable=True).indices
    return sorted(alive[order[:max_pages]].tolist())


def _image_source(store: Any, images: Any) -> Any:
    from vision_sae_lens.data import open_images

    if images is not None:
        plain = isinstance(images, (str, Path)) or (
            isinstance(images, (list, tuple)) and not any(isinstance(x, tuple) for x in images)
        )
        return open_images(images) if plain or not hasattr(images, "__getitem__") else images
    desc = dict(getattr(store, "dataset", None) or {})
    spec = _spec_from_description(desc)
    if spec is not None:
        try:
            source = open_images(spec)
            if "subset" in desc:
                from vision_sae_lens.data import redraw_subset

                source = redraw_subset(source, desc["subset"])
            if len(source) >= getattr(store, "n_images", 0):
                return source
        except Exception as exc:  # the dataset may be gone or need a download: heatmaps still work
            logger.warning("could not re-open the store's images (%s): %s", spec, exc)
    logger.warning(
        "the store's images cannot be re-opened from its description %s; pass images=... to show them "
        "(heatmaps are drawn on a blank canvas).",
        desc,
    )
    return None


def _spec_from_description(desc: dict[str, Any]) -> str | None:
    name, split, kind = desc.get("name"), desc.get("split"), desc.get("kind")
    if isinstance(name, str) and name.startswith("demo:"):
        return f"{name}:{split}" if split else name
    if kind in ("hf", "hf-disk") and name:
        return f"{kind}:{name}" + (f":{split}" if split else "")
    return None


def _default_title(sae: Any, store: Any) -> str:
    return f"SAE feature browser · {sae.cfg.metadata.hook_name}"


def _copy_assets(out: Path) -> None:
    root = resources.files("vision_sae_lens.analysis") / _TEMPLATES
    for name in ("style.css", "browser.js"):
        with resources.as_file(root / name) as path:
            shutil.copyfile(path, out / "assets" / name)


def _template(name: str) -> Template:
    return Template((resources.files("vision_sae_lens.analysis") / _TEMPLATES / name).read_text("utf-8"))


def _write_index(ctx: _Context, pages: list[int]) -> None:
    s, has_page = ctx.stats, set(pages)
    rows = []
    for j in range(s.frequency.numel()):
        best = -1 if s.best_label is None else int(s.best_label[j])
        rows.append(
            dict(
                id=j,
                freq=_num(s.frequency[j]),
                img_freq=_num(s.image_frequency[j]),
                mean_active=_num(s.mean_active[j]),
                max=_num(s.max_activation[j]),
                label=_label_name(ctx, best),
                precision=None if s.precision is None or best < 0 else _num(s.precision[j]),
                recall=None if s.recall is None or best < 0 else _num(s.recall[j]),
                flag="dead" if bool(s.dead[j]) else "dense" if bool(s.dense[j]) else "",
                page=f"latents/{j}.html" if j in has_page else None,
            )
        )
    payload = {"summary": s.summary(), "latents": rows}
    (ctx.out / "data" / "index.js").write_text("window.VSL_INDEX = " + json.dumps(payload) + ";\n", "utf-8")
    page = _template("index.html").substitute(title=html.escape(ctx.title), meta=html.escape(ctx.meta))
    (ctx.out / "index.html").write_text(page, "utf-8")


def _write_latent_pages(ctx: _Context, pages: list[int], starts: _ImageStarts, progress: bool) -> None:
    wanted: dict[int, list[tuple[int, int]]] = {}
    for j in pages:
        for rank, entry in enumerate(ctx.top.for_latent(j)):
            wanted.setdefault(entry["image"], []).append((j, rank))
    cards: dict[int, list[str]] = {j: [] for j in pages}
    for image in tqdm(sorted(wanted), desc="heatmaps", unit="img", disable=not progress):
        grid_hs = _image_grids(ctx, image, starts, [j for j, _ in wanted[image]])
        for j, rank in wanted[image]:
            entry = ctx.top.for_latent(j)[rank]
            name = f"img/{j}_{rank}.png"
            _render(ctx, image, grid_hs[j], float(ctx.stats.max_activation[j]), entry["patch"]).save(
                ctx.out / name
            )
            cards[j].append((rank, _card(ctx, entry, name)))
    tpl = _template("latent.html")
    for pos, j in enumerate(pages):
        body = "".join(c for _, c in sorted(cards[j])) or '<p class="empty">This latent never fires.</p>'
        prev = f'<a href="{pages[pos - 1]}.html">&larr; latent {pages[pos - 1]}</a>' if pos else ""
        nxt = (
            f'<a href="{pages[pos + 1]}.html">latent {pages[pos + 1]} &rarr;</a>'
            if pos + 1 < len(pages)
            else ""
        )
        page = tpl.substitute(
            latent=j,
            title=html.escape(ctx.title),
            meta=html.escape(ctx.meta),
            prev=prev,
            next=nxt,
            stats=_stats_dl(ctx, j),
            n_active=int(ctx.stats.hist_counts[j].sum()),
            histogram=_histogram_svg(ctx.stats.hist_counts[j]),
            by=ctx.top.by,
            cards=body,
        )
        (ctx.out / "latents" / f"{j}.html").write_text(page, "utf-8")


def _image_grids(
    ctx: _Context, image: int, starts: _ImageStarts, latents: list[int]
) -> dict[int, np.ndarray]:
    """Per latent, the (grid_h, grid_w) activations of one image, from its rows in the store."""
    if image not in starts.start:
        raise StoreError(f"image {image} has no rows in the store")
    lo, hi = starts.start[image]
    site = ctx.view.site
    acts = torch.as_tensor(ctx.store.read_rows(site, lo, hi))
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


def _render(ctx: _Context, image: int, grid_hw: np.ndarray, vmax: float, patch: int) -> Image.Image:
    lay = ctx.view.layout
    if ctx.source is not None:
        original = ctx.source[image][0].convert("RGB")
    else:
        original = Image.new("RGB", (lay.image_size[1], lay.image_size[0]), (128, 128, 128))
    prep = ctx.preprocessing if ctx.source is not None else {}
    geometry = input_geometry(prep, lay, original.size)
    pic = overlay(original, grid_to_image(grid_hw, lay, geometry, original.size), vmax=vmax)
    factor = max(1, -(-_MIN_DISPLAY_PX // max(1, min(pic.size))))
    if factor > 1:
        pic = pic.resize((pic.width * factor, pic.height * factor), Image.NEAREST)
    if patch >= 0:
        box = geometry.box_in_original(lay.patch_box(patch))
        ImageDraw.Draw(pic).rectangle([round(v * factor) for v in box], outline=(80, 220, 255), width=2)
    return pic


def _card(ctx: _Context, entry: dict[str, Any], src: str) -> str:
    label = ctx.label_of(entry["image"])
    where = f"patch {entry['patch']}" if entry["patch"] >= 0 else f"token {entry['token']}"
    caption = f"<b>{entry['value']:.3f}</b> · image {entry['image']}" + (
        f" · {html.escape(label)}" if label else ""
    )
    return (
        f'<figure class="card"><img src="../{src}" alt="image {entry["image"]}">'
        f"<figcaption>{caption}<br>{where}</figcaption></figure>"
    )


def _stats_dl(ctx: _Context, j: int) -> str:
    s = ctx.stats
    q50, q90, q99 = (float(v) for v in s.quantiles()[j])
    items = [
        ("token frequency", f"{float(s.frequency[j]):.5f}"),
        ("image frequency", f"{float(s.image_frequency[j]):.4f}"),
        ("mean when active", f"{float(s.mean_active[j]):.4f}"),
        ("max activation", f"{float(s.max_activation[j]):.4f}"),
        ("quantiles 50/90/99%", f"{q50:.3g} / {q90:.3g} / {q99:.3g}"),
    ]
    if s.best_label is not None and int(s.best_label[j]) >= 0:
        items += [
            ("best label", html.escape(_label_name(ctx, int(s.best_label[j])) or "")),
            ("precision / recall", f"{float(s.precision[j]):.3f} / {float(s.recall[j]):.3f}"),
        ]
    if bool(s.dense[j]):
        items.append(("flag", "dense"))
    return "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)


def _histogram_svg(counts: torch.Tensor, width: int = 360, height: int = 120) -> str:
    nz = counts.nonzero().flatten()
    if nz.numel() == 0:
        return '<p class="empty">no activations</p>'
    lo, hi = int(nz[0]), int(nz[-1]) + 1
    c = counts[lo:hi].double()
    bar_w = width / len(c)
    top = float(c.max())
    bars = "".join(
        f'<rect x="{i * bar_w:.2f}" y="{height - 18 - v / top * (height - 24):.2f}" width="{max(bar_w - 0.5, 0.5):.2f}" '
        f'height="{v / top * (height - 24):.2f}" fill="#b3402a"/>'
        for i, v in enumerate(c.tolist())
    )
    left, right = float(BIN_EDGES[lo]), float(BIN_EDGES[hi])
    axis = (
        f'<text x="2" y="{height - 4}" font-size="10" fill="#6b7385">{left:.3g}</text>'
        f'<text x="{width - 2}" y="{height - 4}" font-size="10" fill="#6b7385" text-anchor="end">{right:.3g}</text>'
    )
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">{bars}{axis}</svg>'
    )


def _label_name(ctx: _Context, label: int) -> str | None:
    if label < 0:
        return None
    names = ctx.label_names
    return names[label] if names and label < len(names) else str(label)


def _num(v: Any) -> float | None:
    f = float(v)
    return None if f != f else round(f, 6)
