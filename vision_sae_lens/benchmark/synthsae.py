"""``vision-sae-lens bench synthsae``: a scaled SynthSAEBench world, the package's defaults vs SAELens' recipe.

SynthSAEBench-16k (SAELens' ``sae_lens.synthetic``) is 16,384 true features in 768 dimensions with a
Zipfian firing law, a 128-root hierarchy of mutually exclusive children, low-rank correlations and
orthogonalised directions; its recipe trains a 4,096-wide BatchTopK SAE (lr 3e-4, batch 1,024,
constant schedule). :func:`synthsae_world` keeps every law and scales the sizes by a quarter (4,096
features, d 256, 32 roots; SAE width 1,024, k 12), small enough for a CPU.

:func:`run_synthsae_benchmark` generates train and test rows with SAELens' generator (each from its own
seed), writes them as plain-row stores (the test store with its :class:`ActivationTruth`), trains

- ``package-topk``: the package's defaults (``build_sae_config("topk", ...)`` and ``TrainConfig``'s),
- ``saelens-recipe``: SAELens' recipe (its own ``BatchTopKTrainingSAEConfig`` defaults and the
  ``SyntheticSAERunnerConfig`` hyperparameters),

on the same rows (same held-out split and batch order), scores both with
:func:`~vision_sae_lens.benchmark.score_rows` and prints SynthSAEBench's table for both.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vision_sae_lens.benchmark.plain_rows import truth_path_of, write_plain_rows
from vision_sae_lens.errors import ConfigError

logger = logging.getLogger(__name__)

SITE = "activations"
SOURCE_ID = "synthetic:synthsaebench"


@dataclass(frozen=True)
class SynthSAESize:
    """The sizes of one run (the laws of the world are SynthSAEBench-16k's, see :func:`synthsae_world`)."""

    n_features: int = 4096
    """True features (SynthSAEBench-16k: 16,384)."""
    d: int = 256
    """Dimension of the rows (768)."""
    roots: int = 32
    """Hierarchy roots, branching 4, depth 3 (128)."""
    orthogonalization_steps: int = 100
    """Steps that push the directions apart (100)."""
    width: int = 1024
    """SAE latents (4,096)."""
    k: int = 12
    """Active latents per row of both SAEs (the recipe's 25 at a quarter of the true L0)."""
    train_rows: int = 262_144
    """Training rows (the generator makes ~1-2k rows/s on 2 CPU cores)."""
    test_rows: int = 32_768
    """Scored rows, from another seed."""

    def __post_init__(self) -> None:
        if min(self.n_features, self.d, self.roots, self.width, self.k, self.train_rows, self.test_rows) < 1:
            raise ConfigError("every SynthSAEBench size must be >= 1")
        if self.k > self.width:
            raise ConfigError(f"k ({self.k}) must not exceed the width ({self.width})")
        if self.roots * 4 > self.n_features:
            raise ConfigError(f"{self.roots} hierarchy roots need at least {self.roots * 4} features")


QUARTER = SynthSAESize()
QUICK = SynthSAESize(n_features=256, d=32, roots=4, orthogonalization_steps=10, width=64, k=4,
                     train_rows=8192, test_rows=2048)  # fmt: skip
"""A world the test suite builds, trains on and scores in seconds."""


def synthsae_world(size: SynthSAESize = QUARTER, *, seed: int = 42) -> Any:
    """SynthSAEBench-16k's ``SyntheticModelConfig`` at ``size`` (every other setting as SAELens ships it)."""
    from vision_sae_lens.compat import synthetic

    return synthetic.SyntheticModelConfig(
        num_features=size.n_features,
        hidden_dim=size.d,
        firing_probability=synthetic.ZipfianFiringProbabilityConfig(max_prob=0.4, min_prob=5e-4, exponent=0.5),
        hierarchy=synthetic.HierarchyConfig(
            total_root_nodes=size.roots, branching_factor=4, max_depth=3, mutually_exclusive_portion=1.0,
            mutually_exclusive_min_depth=0, compensate_probabilities=True, scale_children_by_parent=True,
        ),
        mean_firing_magnitudes=synthetic.LinearMagnitudeConfig(start=5.0, end=4.0),
        std_firing_magnitudes=synthetic.FoldedNormalMagnitudeConfig(mean=0.5, std=0.5),
        correlation=synthetic.LowRankCorrelationConfig(correlation_scale=0.1, rank=25),
        orthogonalization=synthetic.OrthogonalizationConfig(num_steps=size.orthogonalization_steps, lr=3e-4),
        bias=0.5,
        seed=seed,
    )  # fmt: skip


def sample_rows(
    model: Any, n_rows: int, *, seed: int, batch_size: int = 4096
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(rows, true feature activations)`` batches from SAELens' generator, seeded (the generator draws
    from torch's global RNG, which this seeds; call order fixes the rows)."""
    torch.manual_seed(seed)
    for start in range(0, n_rows, batch_size):
        hidden, features = model.sample_with_features(min(batch_size, n_rows - start))
        yield hidden, features


def run_synthsae_benchmark(
    out_dir: str | os.PathLike, *, size: SynthSAESize = QUARTER, seed: int = 0, progress: bool = True
) -> list[dict[str, Any]]:
    """Generate (or reuse) the world and its rows in ``out_dir``, train both SAEs, score them; returns
    the two reports (also written as ``comparison.*``; the table is printed)."""
    from vision_sae_lens.benchmark.report import format_table, write_comparison

    out = Path(out_dir)
    model = _world(out / "world", size, progress=progress)
    train_store = _rows(out / "acts-train", model, size.train_rows, seed=seed, truth=False, progress=progress)
    test_store = _rows(out / "acts-test", model, size.test_rows, seed=seed + 1, truth=True, progress=progress)
    runs = _train(train_store, size, out / "saes", progress=progress)
    reports = [_score(run, test_store, progress=progress) for run in runs]
    write_comparison(reports, out)
    print(format_table(reports))
    return reports


def _world(folder: Path, size: SynthSAESize, *, progress: bool) -> Any:
    from vision_sae_lens import fsutil
    from vision_sae_lens.compat import synthetic

    cfg = synthsae_world(size)
    if (folder / "synthetic_model_config.json").is_file():
        model = synthetic.SyntheticModel.load_from_disk(folder)
        if model.cfg.to_dict() != cfg.to_dict():
            raise ConfigError(f"{folder} holds another SynthSAEBench world; use another --out")
        return model
    if folder.exists():
        raise ConfigError(f"{folder} exists but holds no SynthSAEBench world; use another --out")
    logger.info("building the SynthSAEBench world (%d features, d %d)", size.n_features, size.d)
    model = synthetic.SyntheticModel(cfg)
    tmp = fsutil.temp_folder(folder)
    model.save(tmp)
    fsutil.replace_folder(tmp, folder)  # complete or absent: a killed run leaves only a temp folder
    return model


def _rows(folder: Path, model: Any, n_rows: int, *, seed: int, truth: bool, progress: bool) -> Any:
    from vision_sae_lens.store import ActivationStore

    if (folder / "metadata.json").is_file() and (not truth or truth_path_of(folder).is_file()):
        store = ActivationStore(folder)
        if store.n_rows != n_rows or store.dataset.get("seed") != seed:
            raise ConfigError(
                f"{folder} holds other rows ({store.n_rows}, seed {store.dataset.get('seed')}); use another --out"
            )
        return store
    dataset = {"kind": "synthsaebench", "world": model.cfg.to_dict(), "seed": seed, "count": n_rows}
    store, _ = write_plain_rows(
        folder, sample_rows(model, n_rows, seed=seed), source_id=SOURCE_ID, site=SITE,
        directions=model.feature_dict.feature_vectors.detach() if truth else None,
        dataset=dataset, total_rows=n_rows, progress=progress,
    )  # fmt: skip
    return store


def _train(store: Any, size: SynthSAESize, out: Path, *, progress: bool) -> list[Any]:
    from sae_lens import BatchTopKTrainingSAEConfig

    from vision_sae_lens.train import TrainConfig, build_sae_config, train_sae

    rows = store.n_rows
    package = TrainConfig(
        store=store, site=SITE, sae=build_sae_config("topk", d_in=size.d, d_sae=size.width, k=size.k),
        training_tokens=rows, name="package-topk",
    )  # fmt: skip
    # SynthSAEBench's recipe: SAELens' own config defaults and SyntheticSAERunnerConfig's training settings.
    recipe = TrainConfig(
        store=store, site=SITE, sae=BatchTopKTrainingSAEConfig(d_in=size.d, d_sae=size.width, k=size.k),
        training_tokens=rows, batch_size=1024, lr=3e-4, lr_end=3e-5, lr_scheduler="constant",
        lr_warm_up_steps=0, dead_feature_window=1000, feature_sampling_window=2000,
        n_batches_for_norm_estimate=1000, name="saelens-recipe",
    )  # fmt: skip
    runs = train_sae([package, recipe], out_dir=out, resume=True, progress=progress)
    assert isinstance(runs, list), "train_sae returns a list for a list of configs"
    return runs


def _score(run: Any, store: Any, *, progress: bool) -> dict[str, Any]:
    from dataclasses import asdict

    from sae_lens import SAE

    from vision_sae_lens.benchmark.scoring import ScoreConfig, score_rows
    from vision_sae_lens.benchmark.truth import ActivationTruth

    sae = SAE.load_from_disk(str(run.path), device="cpu")
    truth = ActivationTruth.load(truth_path_of(store.path), store=store)
    cfg = ScoreConfig()
    report = score_rows(sae, lambda: store.ordered(SITE, cfg.batch_size), truth, layout=store.layout,
                        n_images=store.n_images, config=cfg, progress=progress)  # fmt: skip
    return {
        "suite": "synthsae",
        "name": run.name,
        "sae": {"architecture": sae.cfg.architecture(), "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae,
                "site": SITE, "path": str(run.path)},
        "rows": store.n_rows,
        "config": asdict(cfg),
        **report,
    }  # fmt: skip
