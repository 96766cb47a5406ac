"""The whole pipeline on the embedded MNIST ViT, offline, in minutes on a CPU (``vision-sae-lens demo``).

record patch activations of one mid-depth site -> train a small sweep with SAELens -> evaluate
(NMSE, L0, dead latents, and the digit classifier's accuracy with the SAE spliced in vs clean vs
ablated) -> top images, heatmaps and the HTML feature browser -> a summary table.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vision_sae_lens import fsutil
from vision_sae_lens.errors import ConfigError

if TYPE_CHECKING:
    from vision_sae_lens.train import TrainRun

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """Budget of the demo run (the defaults fit in a few minutes on 2 CPU cores)."""

    site: str = "blocks.1.hook_resid_post"
    """Site to study: the residual stream after 2 of the backbone's 4 blocks."""
    train_images: int | None = None
    """Training digits to record (None: all 4,000)."""
    test_images: int | None = None
    """Held-out digits for the accuracy figures (None: all 1,000)."""
    training_tokens: int = 1_000_000
    """Activation rows each SAE trains on (the store is re-read in new shuffled epochs)."""
    batch_size: int | None = None
    """Rows per optimizer step (None: the package default for the budget, as ``vision-sae-lens train``)."""
    d_sae: int = 512
    """Latents per SAE (8x the backbone's width of 64)."""
    sweep: tuple[tuple[str, dict[str, Any]], ...] = (
        ("topk", {"k": 16}),
        ("batchtopk", {"k": 16}),
        ("standard", {"l1_coefficient": 2.0}),
    )
    """(architecture, extra SAELens config fields) of each SAE trained in the one data pass."""
    browser_latents: int = 64
    """Latents that get a page in the feature browser (highest interest score first)."""
    seed: int = 0
    """Seed of the SAEs' initial weights and of the batch order."""

    def __post_init__(self) -> None:
        if not self.sweep:
            raise ConfigError("sweep must list at least one (architecture, fields) pair")
        if self.batch_size is not None and self.training_tokens < self.batch_size:
            raise ConfigError(
                f"training_tokens ({self.training_tokens}) must be at least batch_size ({self.batch_size})"
            )


@dataclass
class DemoResult:
    """Where the demo wrote its outputs and what it measured."""

    out_dir: Path
    store_dir: Path
    sae_dirs: list[Path]
    browser_index: Path
    accuracy: dict[str, float]
    """Digit accuracy on the held-out split: clean, zero_ablation, mean_ablation, and one per SAE."""
    n_test: int = 0
    """Held-out test digits the accuracies are measured on (a stratified draw when a subset)."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    """The summary table, one row per SAE."""


def run_demo(out_dir: str | Path, *, config: DemoConfig | None = None, progress: bool = True) -> DemoResult:
    """Run the demo into ``out_dir`` and print a summary table; returns what it measured."""
    from vision_sae_lens.analysis import build_browser
    from vision_sae_lens.backbones import HookedSAEViT
    from vision_sae_lens.data import open_images, select_images
    from vision_sae_lens.demo import DEMO_BACKBONE_ID, demo_backbone_info
    from vision_sae_lens.store import cache_activations
    from vision_sae_lens.train import TrainConfig, build_sae_config, train_sae

    cfg = config or DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()

    model = HookedSAEViT.from_pretrained(DEMO_BACKBONE_ID)
    logger.info(
        "1/5 backbone %s (recorded test accuracy %s)", model, demo_backbone_info().get("test_accuracy")
    )
    train_digits, test_digits = open_images("demo:mnist:train"), open_images("demo:mnist:test")
    # The shipped digits are sorted by class: subsets are seeded, stratified draws, never the first N.
    if cfg.train_images is not None and cfg.train_images < len(train_digits):
        train_digits = select_images(train_digits, cfg.train_images, seed=cfg.seed)
    if cfg.test_images is not None and cfg.test_images < len(test_digits):
        test_digits = select_images(test_digits, cfg.test_images, seed=cfg.seed + 1)

    logger.info("2/5 recording %s on %d training digits", cfg.site, len(train_digits))
    store = cache_activations(
        model, train_digits, sites=[cfg.site], tokens="patches", dtype="float32",
        out_dir=out / "acts", batch_size=256, progress=progress,
    )  # fmt: skip

    logger.info(
        "3/5 training %d SAEs in one pass over the store, then scoring each on %d held-out digits",
        len(cfg.sweep),
        len(test_digits),
    )
    configs = [
        TrainConfig(
            store=store,
            site=cfg.site,
            sae=build_sae_config(arch, d_in=model.d_model, d_sae=cfg.d_sae, **fields),
            training_tokens=cfg.training_tokens,
            batch_size=cfg.batch_size,  # everything else: the package defaults, as the CLI uses them
            seed=cfg.seed,
            data_seed=cfg.seed,
            downstream_images=len(test_digits),
            name=f"{arch}-{cfg.d_sae}",
        )
        for arch, fields in cfg.sweep
    ]
    runs = train_sae(configs, out_dir=out / "saes", model=model, images=test_digits, progress=progress)
    assert isinstance(runs, list), "train_sae returns a list for a list of configs"
    accuracy = _accuracies(runs)

    best = max(runs, key=lambda run: accuracy[run.name])
    logger.info("4/5 top images, heatmaps and feature browser for %s", best.name)
    index = build_browser(
        best.sae, store, out_dir=out / "browser", images=train_digits,
        max_pages=cfg.browser_latents, title=f"demo: {best.name} on {cfg.site}", model=model, progress=progress,
        overwrite=True,  # the demo's own browser of an earlier run (a foreign folder is still refused)
    ).index  # fmt: skip

    logger.info("5/5 summary")
    rows = [_summary_row(run, accuracy) for run in runs]
    result = DemoResult(
        out, store.path, [run.path for run in runs], index, accuracy, n_test=len(test_digits), rows=rows
    )
    summary = {
        "config": asdict(cfg),
        "accuracy": accuracy,
        "saes": rows,
        "seconds": time.perf_counter() - started,
    }
    # write_json_atomic: never through a link planted at the name; no NaN (an undefined ratio is null)
    fsutil.write_json_atomic(out / "summary.json", _finite_or_none(summary), indent=2)
    print(format_summary(result))
    print(f"\nfeature browser: {index.resolve().as_uri()}")
    return result


def format_summary(result: DemoResult) -> str:
    """The summary table as text.

    Accuracies are on the held-out test digits (all 1,000, or a seeded stratified draw); NMSE and L0
    on the training run's held-out images; dead by the package's one definition (never fires on any
    row of the store). "recovered" above 1 is marked as noise: an SAE cannot beat the clean model.
    """
    acc = result.accuracy
    dead_rows = result.rows[0].get("density_rows", 0) if result.rows else 0
    lines = [
        f"digit accuracy on {result.n_test} held-out test digits (stratified): clean {acc['clean']:.3f} | "
        f"zero-ablation {acc['zero_ablation']:.3f} | mean-ablation {acc['mean_ablation']:.3f}",
        f"{'SAE':<22}{'L0':>7}{'NMSE':>8}{'dead':>7}{'clean':>8}{'spliced':>9}{'zero-abl.':>10}{'recovered':>11}",
    ]
    for row in result.rows:
        rec = row["accuracy_recovered"]
        flag = "  (>1: noise)" if rec == rec and rec > 1 else ""
        lines.append(
            f"{row['name']:<22}{row['l0']:>7.1f}{row['nmse']:>8.4f}{row['dead_fraction']:>7.3f}{acc['clean']:>8.3f}"
            f"{row['spliced_accuracy']:>9.3f}{acc['zero_ablation']:>10.3f}{rec:>11.3f}{flag}"
        )
    lines.append(
        f"dead: fires on none of the store's {dead_rows:,} rows; NMSE / L0 on the training run's held-out images"
    )
    return "\n".join(lines)


def _accuracies(runs: list[TrainRun]) -> dict[str, float]:
    """Held-out digit accuracy from the runs' evaluation reports: clean, zero- and mean-ablation of
    the site's patch tokens (CLS passes through), and each SAE spliced in without its error term."""
    down = runs[0].report["downstream"]
    out = {
        "clean": down["clean_accuracy"],
        "zero_ablation": down["zero_ablation"]["accuracy"],
        "mean_ablation": down["mean_ablation"]["accuracy"],
    }
    out.update({run.name: run.report["downstream"]["accuracy"] for run in runs})
    return out


def _summary_row(run: TrainRun, accuracy: dict[str, float]) -> dict[str, Any]:
    report = run.report
    spliced = accuracy[run.name]
    clean, zero = accuracy["clean"], accuracy["zero_ablation"]
    return {
        "name": run.name,
        "path": str(run.path),
        "l0": float(report["l0"]),
        "nmse": float(report["nmse"]),
        "dead_fraction": float(report["dead_fraction"]),
        "density_rows": int(report.get("density_rows", 0)),
        "spliced_accuracy": spliced,
        "accuracy_recovered": (spliced - zero) / (clean - zero) if clean != zero else float("nan"),
    }


def _finite_or_none(value: object) -> object:
    """``value`` with every NaN / Inf float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value
