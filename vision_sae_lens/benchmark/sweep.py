"""``run_synthetic_benchmark``: record the shapes world, train a sweep at equal budget, score and compare.

Every SAE of the sweep has the same width, reads the same batches (one data pass, see
:mod:`vision_sae_lens.train.sweep`) for the same number of rows; the sparse ones share ``k``. Each is
scored by :func:`vision_sae_lens.benchmark.score` on the held-out test images, and the reports are
compared in ``comparison.html`` / ``comparison.md``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vision_sae_lens.benchmark.report import format_table, write_comparison
from vision_sae_lens.benchmark.scoring import ScoreConfig
from vision_sae_lens.benchmark.suite import DEFAULT_SITE, prepare_synthetic, score

logger = logging.getLogger(__name__)

DEFAULT_SWEEP = ("topk", "batchtopk", "standard", "matryoshka")


def sweep_fields(architecture: str, *, d_sae: int, k: int, l1_coefficient: float) -> dict[str, Any]:
    """SAELens config fields of one sweep member at the shared width / sparsity budget."""
    if architecture in ("topk", "batchtopk"):
        return {"k": k}
    if architecture in ("matryoshka", "matryoshka_batchtopk"):
        return {"k": k, "matryoshka_widths": [d_sae // 4, d_sae // 2, d_sae]}
    if architecture in ("standard", "l1", "relu"):
        return {"l1_coefficient": l1_coefficient}
    return {}


def run_synthetic_benchmark(
    out_dir: str | Path,
    *,
    site: str = DEFAULT_SITE,
    architectures: tuple[str, ...] = DEFAULT_SWEEP,
    d_sae: int = 256,
    k: int = 8,
    l1_coefficient: float = 2.0,
    training_tokens: int = 400_000,
    batch_size: int = 1024,
    train_images: int | None = None,
    test_images: int | None = None,
    config: ScoreConfig | None = None,
    downstream_images: int = 256,
    browser: bool = True,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Record, train ``architectures`` at equal budget, score each and write the comparison into
    ``out_dir`` (``acts-*``, ``saes/<name>``, ``reports/<name>`` with a feature browser of each factor's
    best latents when ``browser``, ``comparison.*``). Returns the reports."""
    from vision_sae_lens.train import TrainConfig, build_sae_config, train_sae

    out = Path(out_dir)
    train_store, test_store = prepare_synthetic(
        out, site=site, train_images=train_images, test_images=test_images, progress=progress
    )
    if not architectures:
        return []
    configs = [
        TrainConfig(
            store=train_store,
            site=site,
            sae=build_sae_config(arch, d_in=train_store.site_dim(site), d_sae=d_sae,
                                 **sweep_fields(arch, d_sae=d_sae, k=k, l1_coefficient=l1_coefficient)),
            training_tokens=training_tokens,
            batch_size=batch_size,
            lr=1e-3,
            lr_scheduler="cosineannealing",
            lr_warm_up_steps=min(20, training_tokens // batch_size // 4),
            dead_feature_window=100,
            feature_sampling_window=100,
            n_batches_for_norm_estimate=10,
            downstream_images=0,
            name=f"{arch}-{d_sae}",
        )
        for arch in architectures
    ]  # fmt: skip
    runs = train_sae(configs, out_dir=out / "saes", progress=progress)
    assert isinstance(runs, list), "train_sae returns a list for a list of configs"
    reports = []
    for run in runs:
        logger.info("scoring %s", run.name)
        reports.append(
            score(run.path, store=test_store, out_dir=out / "reports" / run.name, config=config,
                  downstream_images=downstream_images, browser=browser, name=run.name, progress=progress)
        )  # fmt: skip
    write_comparison(reports, out, links={r["name"]: f"reports/{r['name']}/report.html" for r in reports})
    print(format_table(reports))
    return reports
