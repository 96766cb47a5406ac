"""The AuxK loss on the dead latents' ReLU'd pre-activations, as training-SAE subclasses.

SAELens' TopK-family AuxK loss (``calculate_topk_aux_loss``, Matryoshka's ``calculate_matryoshka_aux_loss``)
decodes the top-k_aux dead latents' *raw* pre-activations. Most of them are negative, so the loss teaches a
dead latent to explain the residual with a negative activation, which TopK never lets it output: it stays
dead. OpenAI's reference (Gao et al. 2024), dictionary_learning and sparsify decode the ReLU'd values; on the
demo store that left 0.2% of TopK latents dead instead of 3.9%, at the same NMSE (``docs/training.md``).

:func:`with_auxk_relu` gives the subclass of a training class that does so (``TrainConfig.auxk_relu``,
on by default): SAELens' own classes get :class:`ReluAuxK` (each AuxK method called on ``hidden_pre.relu()``;
the largest values are the same, a negative one adds nothing), the package's lean CPU classes set their
``auxk_relu`` flag (their sparse forward looks the chosen values up with gradients, so the ReLU is applied
after that). A class that is neither (a user's subclass, an architecture without AuxK) is kept as it is.
Like the lean classes, these add no parameter, buffer or config field: checkpoints load with plain SAELens.
"""

from __future__ import annotations

from typing import Any

import torch
from sae_lens import BatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAE, TopKTrainingSAE, TrainingSAE

from vision_sae_lens.train.lean_saes import (
    LeanBatchTopKTrainingSAE,
    LeanMatryoshkaBatchTopKTrainingSAE,
    LeanTopKTrainingSAE,
)


class ReluAuxK:
    """Mixin, first in the bases of a SAELens TopK-family training class: its AuxK losses see ``hidden_pre.relu()``."""

    def calculate_topk_aux_loss(
        self,
        sae_in: torch.Tensor,
        sae_out: torch.Tensor,
        hidden_pre: torch.Tensor,
        dead_neuron_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        parent: Any = super()
        return parent.calculate_topk_aux_loss(
            sae_in=sae_in,
            sae_out=sae_out,
            hidden_pre=_relu_if_needed(hidden_pre, dead_neuron_mask),
            dead_neuron_mask=dead_neuron_mask,
        )

    def calculate_matryoshka_aux_loss(
        self,
        sae_in: torch.Tensor,
        sae_out: torch.Tensor,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        dead_neuron_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        parent: Any = super()
        return parent.calculate_matryoshka_aux_loss(
            sae_in=sae_in,
            sae_out=sae_out,
            feature_acts=feature_acts,
            hidden_pre=_relu_if_needed(hidden_pre, dead_neuron_mask),
            dead_neuron_mask=dead_neuron_mask,
        )


def _relu_if_needed(hidden_pre: torch.Tensor, dead_neuron_mask: torch.Tensor | None) -> torch.Tensor:
    # SAELens' AuxK losses are 0 without a dead latent and never read hidden_pre then: skip the (batch, d_sae)
    # copy on those steps (most of a healthy run).
    if dead_neuron_mask is None or not bool(dead_neuron_mask.any()):
        return hidden_pre
    return hidden_pre.relu()


class ReluAuxKTopKTrainingSAE(ReluAuxK, TopKTrainingSAE):
    """SAELens' ``TopKTrainingSAE`` with the AuxK loss on ReLU'd pre-activations."""


class ReluAuxKBatchTopKTrainingSAE(ReluAuxK, BatchTopKTrainingSAE):
    """SAELens' ``BatchTopKTrainingSAE`` with the AuxK loss on ReLU'd pre-activations."""


class ReluAuxKMatryoshkaBatchTopKTrainingSAE(ReluAuxK, MatryoshkaBatchTopKTrainingSAE):
    """SAELens' ``MatryoshkaBatchTopKTrainingSAE`` with both AuxK losses on ReLU'd pre-activations."""


class LeanReluAuxKTopKTrainingSAE(LeanTopKTrainingSAE):
    """The lean CPU ``TopKTrainingSAE`` with the AuxK loss on ReLU'd pre-activations."""

    auxk_relu = True


class LeanReluAuxKBatchTopKTrainingSAE(LeanBatchTopKTrainingSAE):
    """The lean CPU ``BatchTopKTrainingSAE`` with the AuxK loss on ReLU'd pre-activations."""

    auxk_relu = True


class LeanReluAuxKMatryoshkaBatchTopKTrainingSAE(LeanMatryoshkaBatchTopKTrainingSAE):
    """The lean CPU ``MatryoshkaBatchTopKTrainingSAE`` with both AuxK losses on ReLU'd pre-activations."""

    auxk_relu = True


RELU_AUXK_CLASSES: dict[type[TrainingSAE], type[TrainingSAE]] = {
    TopKTrainingSAE: ReluAuxKTopKTrainingSAE,
    BatchTopKTrainingSAE: ReluAuxKBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAE: ReluAuxKMatryoshkaBatchTopKTrainingSAE,
    LeanTopKTrainingSAE: LeanReluAuxKTopKTrainingSAE,
    LeanBatchTopKTrainingSAE: LeanReluAuxKBatchTopKTrainingSAE,
    LeanMatryoshkaBatchTopKTrainingSAE: LeanReluAuxKMatryoshkaBatchTopKTrainingSAE,
}
"""A training class (SAELens' own or its lean subclass) -> the same with the AuxK loss on ReLU'd values."""


def with_auxk_relu(cls: type[TrainingSAE]) -> type[TrainingSAE]:
    """``cls`` with its AuxK losses on ReLU'd pre-activations; ``cls`` itself where it has no such variant."""
    return RELU_AUXK_CLASSES.get(cls, cls)
