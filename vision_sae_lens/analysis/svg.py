"""Small inline SVG charts for the feature browser: activation histogram, spatial firing map, label bars.

Each function returns ``markupsafe.Markup``: the SVG is built from numbers, and every piece of text
that comes from data (label names) is escaped here, so templates may insert it as is.
"""

from __future__ import annotations

import math

import torch
from markupsafe import Markup, escape

_MUTED, _BAR = "#6b7385", "#b3402a"


def histogram_svg(
    counts: torch.Tensor, edges: torch.Tensor, *, width: int = 420, height: int = 170
) -> Markup:
    """Bars of non-zero activation counts on log-spaced ``edges`` with labelled x (activation, log
    scale) and y (tokens) axes."""
    nz = counts.nonzero().flatten()
    if nz.numel() == 0:
        return Markup('<p class="empty">no activations</p>')
    lo, hi = int(nz[0]), int(nz[-1]) + 1
    c = counts[lo:hi].double()
    left, bottom, top_pad = 46, 34, 8
    plot_w, plot_h = width - left - 8, height - bottom - top_pad
    bar_w = plot_w / len(c)
    top = float(c.max())
    parts = [
        f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{width - 8}" y2="{top_pad + plot_h}" stroke="{_MUTED}"/>'
    ]
    parts.append(f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{top_pad + plot_h}" stroke="{_MUTED}"/>')
    for i, v in enumerate(c.tolist()):
        h = v / top * plot_h
        parts.append(
            f'<rect x="{left + i * bar_w:.2f}" y="{top_pad + plot_h - h:.2f}" width="{max(bar_w - 0.5, 0.5):.2f}" '
            f'height="{h:.2f}" fill="{_BAR}"><title>{_fmt(float(edges[lo + i]))}–{_fmt(float(edges[lo + i + 1]))}: '
            f"{int(v)} tokens</title></rect>"
        )
    lo_v, hi_v = float(edges[lo]), float(edges[hi])
    for dec in range(math.floor(math.log10(lo_v)), math.ceil(math.log10(hi_v)) + 1):
        v = 10.0**dec
        if lo_v <= v <= hi_v:
            x = left + (math.log10(v) - math.log10(lo_v)) / (math.log10(hi_v) - math.log10(lo_v)) * plot_w
            parts.append(
                f'<line x1="{x:.1f}" y1="{top_pad + plot_h}" x2="{x:.1f}" y2="{top_pad + plot_h + 4}" stroke="{_MUTED}"/>'
            )
            parts.append(_text(x, top_pad + plot_h + 15, _fmt(v), anchor="middle"))
    parts.append(_text(left, top_pad + plot_h + 15, _fmt(lo_v), anchor="start"))
    parts.append(_text(width - 8, top_pad + plot_h + 15, _fmt(hi_v), anchor="end"))
    parts.append(_text(left + plot_w / 2, height - 3, "activation (log scale)", anchor="middle"))
    parts.append(_text(left - 4, top_pad + 9, f"{int(top):,}", anchor="end"))
    parts.append(_text(left - 4, top_pad + plot_h, "0", anchor="end"))
    parts.append(
        f'<text x="11" y="{top_pad + plot_h / 2:.1f}" font-size="10" fill="{_MUTED}" text-anchor="middle" '
        f'transform="rotate(-90 11 {top_pad + plot_h / 2:.1f})">tokens</text>'
    )
    return _svg(width, height, "".join(parts), "activation histogram")


def spatial_svg(grid_hw: torch.Tensor, *, cell: int = 22) -> Markup:
    """The patch grid shaded by how often the latent fires at each patch (counts in tooltips)."""
    h, w = grid_hw.shape
    top = float(grid_hw.max()) or 1.0
    parts = []
    for r in range(h):
        for c in range(w):
            v = float(grid_hw[r, c])
            shade = int(255 - 200 * v / top)
            parts.append(
                f'<rect x="{c * cell}" y="{r * cell}" width="{cell - 1}" height="{cell - 1}" '
                f'fill="rgb(255,{shade},{shade})"><title>patch ({r}, {c}): {int(v)} firings</title></rect>'
            )
    return _svg(w * cell, h * cell, "".join(parts), "spatial firing map")


def label_bars_svg(
    names: list[str],
    rate_l: torch.Tensor,
    *,
    rest: tuple[int, float] | None = None,
    width: int = 360,
    row: int = 18,
) -> Markup:
    """One horizontal bar per label: the share of that label's images on which the latent fires.

    ``rest`` = (labels not drawn, their share of the images the latent fires on) adds a closing line
    such as "+9,980 more labels: 37% of its firing images".
    """
    label_w, plot_w = 90, width - 90 - 44
    parts = []
    for i, (name, rate) in enumerate(zip(names, rate_l.tolist(), strict=True)):
        y = i * row
        parts.append(_text(label_w - 6, y + row - 5, str(name)[:14], anchor="end"))
        parts.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{max(rate * plot_w, 0.5):.1f}" height="{row - 6}" fill="{_BAR}"/>'
        )
        parts.append(_text(label_w + rate * plot_w + 4, y + row - 5, f"{100 * rate:.0f}%", anchor="start"))
    rows = len(names)
    if rest is not None:
        hidden, share = rest
        line = f"+{hidden:,} more labels: {100 * share:.0f}% of its firing images"
        parts.append(_text(4, rows * row + row - 5, line, anchor="start"))
        rows += 1
    return _svg(width, row * rows + 4, "".join(parts), "firing rate per label")


def _svg(width: float, height: float, body: str, label: str) -> Markup:
    return Markup(
        f'<svg width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-label="{label}">{body}</svg>'
    )


def _text(x: float, y: float, text: str, *, anchor: str) -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="10" fill="{_MUTED}" text-anchor="{anchor}">{escape(text)}</text>'


def _fmt(v: float) -> str:
    return f"{v:.3g}"
