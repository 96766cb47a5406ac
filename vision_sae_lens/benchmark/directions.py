"""SynthSAEBench's metrics for ground truth in activation space, by SAELens' own calculators.

With true feature directions (``truth.directions``, ``(F, d)``) and each row's true feature
activations, ``sae_lens.synthetic`` defines (``eval_sae_on_synthetic_data``):

- **MCC**: mean |cosine| of an optimal one-to-one (Hungarian) matching of decoder rows to directions;
- **uniqueness**: distinct directions that are some latent's best match, over the number of latents;
- **classification** (latent-centric): each latent is a detector of its best-matching direction
  (decoder cosine); precision / recall / F1 / accuracy of "fires" vs "the feature is active", averaged
  over latents;
- **shrinkage** (mean ``||x_hat|| / ||x||``), **explained variance**, SAE and true **L0**, **dead latents**.

:class:`SynthSAEBenchMetrics` feeds the scorer's batches to SAELens' calculator classes, so the numbers
(and names, ``SyntheticDataEvalResult.to_dict()``) are SynthSAEBench's by construction; only the rows
come from a store instead of the generator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from vision_sae_lens.errors import SAEMismatchError

if TYPE_CHECKING:
    from vision_sae_lens.compat import SAE


class SynthSAEBenchMetrics:
    """Streaming SynthSAEBench metrics of one SAE against ``directions`` ``(F, d)``."""

    def __init__(self, sae: SAE, directions: torch.Tensor) -> None:
        from vision_sae_lens.compat import ExplainedVarianceCalculator, synthetic

        decoder = getattr(sae, "W_dec", None)
        if not isinstance(decoder, torch.Tensor) or decoder.shape[-1] != directions.shape[1]:
            raise SAEMismatchError(
                f"SynthSAEBench's metrics compare decoder rows (W_dec, (d_sae, d)) with the true directions "
                f"(F, {directions.shape[1]}); this SAE has no matching W_dec"
            )
        self.decoder = decoder.detach().float().cpu()
        self.directions = directions.float().cpu()
        self.true_l0 = synthetic.L0Calculator()
        self.sae_l0 = synthetic.L0Calculator()
        self.dead = synthetic.DeadLatentsCalculator(self.decoder.shape[0])
        self.shrinkage = synthetic.ShrinkageCalculator()
        self.explained_variance = ExplainedVarianceCalculator()
        self.classification = synthetic.ClassificationMetricsCalculator(self.decoder, self.directions)

    def add(
        self,
        acts_nd: torch.Tensor,
        recon_nd: torch.Tensor,
        latents_ns: torch.Tensor,
        features_nf: torch.Tensor,
    ) -> None:
        """Count a batch: inputs, reconstructions, SAE latents and the rows' true feature activations."""
        self.true_l0.add_batch(features_nf)
        self.sae_l0.add_batch(latents_ns)
        self.dead.add_batch(latents_ns)
        self.shrinkage.add_batch(recon_nd, acts_nd)
        self.explained_variance.add_batch(recon_nd, acts_nd)
        self.classification.add_batch(latents_ns, features_nf)

    def result(self) -> dict[str, Any]:
        """``SyntheticDataEvalResult.to_dict()``: true_l0, sae_l0, dead_latents, shrinkage,
        explained_variance, mcc, uniqueness, classification {precision, recall, f1_score, accuracy}."""
        from vision_sae_lens.compat import synthetic

        return synthetic.SyntheticDataEvalResult(
            true_l0=self.true_l0.compute(),
            sae_l0=self.sae_l0.compute(),
            dead_latents=self.dead.compute(),
            shrinkage=self.shrinkage.compute(),
            explained_variance=self.explained_variance.compute(),
            mcc=synthetic.mean_correlation_coefficient(self.decoder, self.directions),
            uniqueness=synthetic.feature_uniqueness(self.decoder, self.directions),
            classification=self.classification.compute(),
        ).to_dict()
