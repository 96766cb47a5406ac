"""A ground-truth benchmark of vision SAEs: do latents recover known visual factors, localize them,
and probe well? Offline, in minutes, on a CPU.

- :func:`score`: one SAE on a suite (``"synthetic"``: the shapes world seen through ``demo:shapes-vit``)
  -> a report dict, and report files with ``out_dir``.
- :func:`run_synthetic_benchmark`: record the world, train a sweep at equal budget, score and compare.
- :func:`score_rows` / :class:`ArrayTruth`: the same metrics on a user's own store and labels;
  :func:`sparse_probing`: k-sparse probes on any features.
- :class:`ActivationTruth` / :func:`write_plain_rows`: ground truth in activation space (true feature
  directions, per-row activations) for rows that are not image patches, adding SynthSAEBench's
  metrics; :func:`run_synthsae_benchmark`: SynthSAEBench's world at quarter size, the package's defaults
  vs SAELens' recipe.
- :func:`write_report` / :func:`write_comparison`: markdown + HTML with plots.
See docs/benchmark.md for each metric's definition and source.
"""

from typing import TYPE_CHECKING

from vision_sae_lens._lazy import lazy_exports

__all__ = [
    "score",
    "run_synthetic_benchmark",
    "prepare_synthetic",
    "score_rows",
    "ScoreConfig",
    "GroundTruth",
    "SyntheticTruth",
    "ArrayTruth",
    "ActivationTruth",
    "write_plain_rows",
    "run_synthsae_benchmark",
    "sparse_probing",
    "write_report",
    "write_comparison",
    "format_table",
]

if TYPE_CHECKING:
    from vision_sae_lens.benchmark.plain_rows import write_plain_rows
    from vision_sae_lens.benchmark.probing import sparse_probing
    from vision_sae_lens.benchmark.report import format_table, write_comparison, write_report
    from vision_sae_lens.benchmark.scoring import ScoreConfig, score_rows
    from vision_sae_lens.benchmark.suite import prepare_synthetic, score
    from vision_sae_lens.benchmark.sweep import run_synthetic_benchmark
    from vision_sae_lens.benchmark.synthsae import run_synthsae_benchmark
    from vision_sae_lens.benchmark.truth import ActivationTruth, ArrayTruth, GroundTruth, SyntheticTruth

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "score": "vision_sae_lens.benchmark.suite",
        "run_synthetic_benchmark": "vision_sae_lens.benchmark.sweep",
        "prepare_synthetic": "vision_sae_lens.benchmark.suite",
        "score_rows": "vision_sae_lens.benchmark.scoring",
        "ScoreConfig": "vision_sae_lens.benchmark.scoring",
        "GroundTruth": "vision_sae_lens.benchmark.truth",
        "SyntheticTruth": "vision_sae_lens.benchmark.truth",
        "ArrayTruth": "vision_sae_lens.benchmark.truth",
        "ActivationTruth": "vision_sae_lens.benchmark.truth",
        "write_plain_rows": "vision_sae_lens.benchmark.plain_rows",
        "run_synthsae_benchmark": "vision_sae_lens.benchmark.synthsae",
        "sparse_probing": "vision_sae_lens.benchmark.probing",
        "write_report": "vision_sae_lens.benchmark.report",
        "write_comparison": "vision_sae_lens.benchmark.report",
        "format_table": "vision_sae_lens.benchmark.report",
    },
)
