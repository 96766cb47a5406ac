"""PNG plots of evaluation reports: the feature-density histogram and L0 vs NMSE across a sweep."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vision_sae_lens.fsutil import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 100) -> None:
    """Save ``fig`` as a PNG at ``path``, atomically: a symlink planted at the name is replaced, not written
    through."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    write_atomic(path, buffer.getvalue())


def plot_density(histogram: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Bar chart of log10 feature density (``report["density_histogram"]``), dead latents noted."""
    plt = _pyplot()
    edges, counts = histogram["log10_density_edges"], histogram["counts"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(
        edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:], strict=True)], align="edge"
    )
    ax.set_xlabel("log10 feature density (fraction of rows where the latent fires)")
    ax.set_ylabel("latents")
    ax.set_title(f"{title}  (never fired: {histogram['never_fired']})".strip())
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def plot_sweep(summary: list[dict[str, Any]], path: str | Path) -> Path:
    """Scatter of L0 against NMSE, one labelled point per SAE of a sweep."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in summary:
        if row.get("l0") is None or row.get("nmse") is None:
            continue
        ax.scatter(row["l0"], row["nmse"])
        ax.annotate(
            row["name"], (row["l0"], row["nmse"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("NMSE (fraction of variance unexplained)")
    ax.set_title("sparsity vs reconstruction")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)
