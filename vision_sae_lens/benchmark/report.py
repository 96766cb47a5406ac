"""Benchmark reports as files: one SAE (``report.json`` / ``.md`` / ``.html`` + plots) and a comparison
of several (``comparison.md`` / ``.html`` with L0 vs NMSE and L0 vs recovery plots).

The markdown is the table a researcher pastes into a note; the HTML is the same tables with the plots
inline, written by jinja2 with autoescaping. Plots use matplotlib's non-interactive Agg backend.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from jinja2 import Environment

from vision_sae_lens import fsutil
from vision_sae_lens.benchmark.naming import naming_headline, naming_table
from vision_sae_lens.train.plots import save_figure

COLUMNS = (
    ("SAE", lambda r: r["name"]),
    ("arch", lambda r: r["sae"]["architecture"]),
    ("L0", lambda r: r["reconstruction"]["l0"]),
    ("NMSE", lambda r: r["reconstruction"]["nmse"]),
    ("dead", lambda r: r["reconstruction"]["dead_fraction"]),
    ("dense", lambda r: r["reconstruction"]["dense_fraction"]),
    ("shrinkage", lambda r: r["reconstruction"].get("shrinkage")),
    ("patch AUROC", lambda r: r["recovery"]["patch"]["mean_auroc"]),
    ("patch factor-F1", lambda r: r["recovery"]["patch"]["mean_factor_f1"]),
    ("recovered", lambda r: r["recovery"]["patch"]["fraction_recovered"]),
    ("image AUROC", lambda r: r["recovery"]["image"]["mean_auroc"]),
    ("image factor-F1", lambda r: r["recovery"]["image"]["mean_factor_f1"]),
    ("latents/factor", lambda r: r["splitting"]["mean_latents_per_factor"]),
    ("factors/latent", lambda r: r["splitting"]["mean_factors_per_latent"]),
    ("mono", lambda r: r["splitting"]["monosemantic_fraction"]),
    ("IoU", lambda r: r["localization"].get("mean_iou")),
    ("pointing", lambda r: r["localization"].get("pointing_game")),
    ("probe k=1 SAE", lambda r: _probe(r, "sae", 0)),
    ("probe k=1 raw", lambda r: _probe(r, "raw", 0)),
    ("loss rec.", lambda r: r.get("downstream", {}).get("sae", {}).get("loss_recovered")),
    ("naming acc.", lambda r: naming_headline(r)),
)
"""The image benchmark's table. "factor-F1" is factor-centric (each factor's best latent at its best
threshold), not SynthSAEBench's latent-centric F1."""

SYNTHSAE_COLUMNS = (
    ("SAE", lambda r: r["name"]),
    ("arch", lambda r: r["sae"]["architecture"]),
    ("MCC", lambda r: r["synthsaebench"]["mcc"]),
    ("uniqueness", lambda r: r["synthsaebench"]["uniqueness"]),
    ("latent F1", lambda r: r["synthsaebench"]["classification"]["f1_score"]),
    ("latent precision", lambda r: r["synthsaebench"]["classification"]["precision"]),
    ("latent recall", lambda r: r["synthsaebench"]["classification"]["recall"]),
    ("shrinkage", lambda r: r["synthsaebench"]["shrinkage"]),
    ("EV", lambda r: r["synthsaebench"]["explained_variance"]),
    ("dead", lambda r: r["synthsaebench"]["dead_latents"]),
    ("L0", lambda r: r["synthsaebench"]["sae_l0"]),
    ("true L0", lambda r: r["synthsaebench"]["true_l0"]),
    ("factor-F1", lambda r: r["recovery"]["row"]["mean_factor_f1"]),
    ("AUROC", lambda r: r["recovery"]["row"]["mean_auroc"]),
)
"""The table of reports on ground truth in activation space: SynthSAEBench's metrics under its own
names (MCC, uniqueness, latent-centric F1 / precision / recall, shrinkage, EV, dead latents, L0), then the
package's factor-centric recovery of each true feature."""


def columns_for(reports: list[dict[str, Any]]) -> tuple:
    """SYNTHSAE_COLUMNS when every report has SynthSAEBench's metrics, else COLUMNS."""
    return SYNTHSAE_COLUMNS if reports and all("synthsaebench" in r for r in reports) else COLUMNS


_HTML = """<!doctype html><html><head><meta charset="utf-8"><title>{{ title }}</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}td:first-child{text-align:left}
img{max-width:520px;margin:8px}</style></head><body><h1>{{ title }}</h1>
{% for caption, header, rows in tables %}<h2>{{ caption }}</h2><table><tr>{% for h in header %}<th>{{ h }}</th>
{% endfor %}</tr>{% for row in rows %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</table>
{% endfor %}{% for img in images %}<img src="{{ img }}" alt="{{ img }}">{% endfor %}
{% for link, text in links %}<p><a href="{{ link }}">{{ text }}</a></p>{% endfor %}</body></html>"""


def write_report(report: dict[str, Any], out_dir: str | Path, *, browser: str | None = None) -> Path:
    """Write one SAE's report files and plots into ``out_dir``; returns the HTML path. ``browser``: a
    relative link to its feature browser's ``index.html``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fsutil.write_atomic(out / "report.json", json.dumps(report, indent=1, default=_json_default).encode())
    columns = columns_for([report])
    tables = [("Summary", [c for c, _ in columns], [[_fmt(fn(report)) for _, fn in columns]])]
    if "patch" in report["recovery"]:
        tables.append(_factor_table(report, browser))
    naming = naming_table(report)
    if naming is not None:
        tables.append(naming)
    probing = report.get("probing", {})
    if probing.get("available"):
        header = ["features", *(f"k={k}" for k in probing["ks"])]
        rows = [[kind, *(_fmt(v) for v in probing[kind])] for kind in ("sae", "raw")]
        rows.append(["majority class", *(_fmt(probing["majority_baseline"]) for _ in probing["ks"])])
        tables.append(("Sparse probing accuracy (image level, mean over factors)", header, rows))
    down = report.get("downstream")
    if down:
        header = ["model", "BCE", "accuracy", "KL to clean", "loss recovered"]
        rows = [[k, _fmt(down[k]["bce"]), _fmt(down[k]["accuracy"]), _fmt(down[k]["kl_to_clean"]),
                 _fmt(down[k].get("loss_recovered"))] for k in ("clean", "sae", "sae_with_error", "zero_ablation")]  # fmt: skip
        tables.append((f"Spliced downstream ({down['images']} test images)", header, rows))
    images = _plot_factors(report, out / "recovery_per_factor.png") if "patch" in report["recovery"] else []
    images += _plot_probing(report, out / "probing.png")
    title = f"{report['suite']} benchmark: {report['name']}"
    markdown = _markdown(title, [(c, h, [[str(x) for x in r] for r in rows]) for c, h, rows in tables])
    fsutil.write_atomic(out / "report.md", markdown.encode())
    links = [(browser, "feature browser")] if browser else []
    html = out / "report.html"
    fsutil.write_atomic(html, _render(title, tables, images, links).encode())
    return html


def write_comparison(
    reports: list[dict[str, Any]], out_dir: str | Path, *, links: dict[str, str] | None = None
) -> Path:
    """Write ``comparison.md`` / ``.html`` and the L0 plots for several SAE reports; returns the HTML path.
    ``links``: report name -> relative link to its own report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns = columns_for(reports)
    table = ("SAEs", [c for c, _ in columns], [[_fmt(fn(r)) for _, fn in columns] for r in reports])
    images = _plot_sweep(reports, out / "l0_vs_nmse.png", "NMSE", lambda r: r["reconstruction"]["nmse"])
    level = "patch" if reports and all("patch" in r["recovery"] for r in reports) else "row"
    images += _plot_sweep(reports, out / "l0_vs_recovery.png",
                          f"{level} factor-F1 of the best latent (mean over factors)",
                          lambda r: r["recovery"][level]["mean_factor_f1"])  # fmt: skip
    title = f"{reports[0]['suite'] if reports else ''} benchmark: comparison"
    fsutil.write_atomic(out / "comparison.md", _markdown(title, [table]).encode())
    fsutil.write_atomic(
        out / "comparison.json", json.dumps(reports, indent=1, default=_json_default).encode()
    )
    html = out / "comparison.html"
    page = _render(title, [table], images, sorted((links or {}).items(), key=lambda kv: kv[0]))
    fsutil.write_atomic(html, page.encode())
    return html


def format_table(reports: list[dict[str, Any]]) -> str:
    """The comparison table as markdown (what the CLI prints)."""
    columns = columns_for(reports)
    return _markdown_table([c for c, _ in columns], [[_fmt(fn(r)) for _, fn in columns] for r in reports])


# ------------------------------------------------------------------------------------ helpers
def _factor_table(report: dict[str, Any], browser: str | None) -> tuple[str, list[str], list[list[Any]]]:
    patch, image = report["recovery"]["patch"]["per_factor"], report["recovery"]["image"]["per_factor"]
    loc = report["localization"].get("per_factor", {})
    split = report["splitting"]["latents_per_factor"]
    header = [
        "factor",
        "latent",
        "patch AUROC",
        "patch factor-F1",
        "image AUROC",
        "image factor-F1",
        "split into",
        "IoU",
        "pointing",
    ]
    rows = [
        [name, _latent_link(patch[name]["auroc_latent"], browser), _fmt(patch[name]["auroc"]), _fmt(patch[name]["factor_f1"]),
         _fmt(image[name]["auroc"]), _fmt(image[name]["factor_f1"]), str(split[name]),
         _fmt(loc.get(name, {}).get("iou")), _fmt(loc.get(name, {}).get("pointing"))]
        for name in report["factors"]
    ]  # fmt: skip
    return ("Per factor (best single latent)", header, rows)


class _Link(str):
    """A latent id that renders as a link to its feature-browser page in HTML (plain text in markdown)."""

    href: str

    def __html__(self) -> str:
        from markupsafe import escape

        return f'<a href="{escape(self.href)}">{escape(str(self))}</a>'


def _latent_link(latent: int, browser: str | None) -> str:
    if browser is None:
        return str(latent)
    link = _Link(str(latent))
    link.href = (
        f"{browser.rsplit('/', 1)[0]}/latents/{latent}.html" if "/" in browser else f"latents/{latent}.html"
    )
    return link


def _plot_factors(report: dict[str, Any], path: Path) -> list[str]:
    plt = _pyplot()
    names = report["factors"]
    patch = report["recovery"]["patch"]["per_factor"]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [patch[n]["auroc"] for n in names], width=0.4, label="AUROC")
    ax.bar([x + 0.2 for x in xs], [patch[n]["factor_f1"] for n in names], width=0.4, label="factor-F1")
    ax.set_xticks(list(xs), names, rotation=70, fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{report['name']}: best single latent per factor (patch level)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return [path.name]


def _plot_probing(report: dict[str, Any], path: Path) -> list[str]:
    probing = report.get("probing", {})
    if not probing.get("available"):
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(probing["ks"], probing["sae"], marker="o", label="SAE latents")
    ax.plot(probing["ks"], probing["raw"], marker="s", label="raw activations")
    ax.axhline(probing["majority_baseline"], color="grey", ls=":", label="majority class")
    ax.set_xscale("log")
    ax.set_xlabel("k (features per probe)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("k-sparse probing", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return [path.name]


def _plot_sweep(reports: list[dict[str, Any]], path: Path, ylabel: str, y_of) -> list[str]:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for r in reports:
        ax.scatter(r["reconstruction"]["l0"], y_of(r), s=40)
        ax.annotate(r["name"], (r["reconstruction"]["l0"], y_of(r)), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")  # fmt: skip
    ax.set_xlabel("L0 (active latents per patch)")
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(f"L0 vs {ylabel.split(' (')[0]}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return [path.name]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _probe(report: dict[str, Any], kind: str, i: int) -> float | None:
    probing = report.get("probing", {})
    return probing[kind][i] if probing.get("available") else None


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _markdown(title: str, tables: list[tuple[str, list[str], list[list[str]]]]) -> str:
    parts = [f"# {title}"]
    for caption, header, rows in tables:
        parts += [f"## {caption}", _markdown_table(header, rows)]
    return "\n\n".join(parts) + "\n"


def _render(title: str, tables: list, images: list[str], links: list[tuple[str, str]]) -> str:
    env = Environment(autoescape=True)
    return env.from_string(_HTML).render(title=title, tables=tables, images=images, links=links)


def _json_default(v: Any) -> Any:
    if hasattr(v, "tolist"):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")
