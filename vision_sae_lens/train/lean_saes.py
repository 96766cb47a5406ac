"""SAELens' training SAEs with a leaner training step, as subclasses (the way SAELens extends its own:
``BatchTopKTrainingSAE(TopKTrainingSAE)``).

Each subclass overrides the SAELens methods whose work it does with fewer dense (batch, d_sae) matrices
(:mod:`~vision_sae_lens.train.lean_losses`, :mod:`~vision_sae_lens.train.sparse_topk`) and nothing else:
same config class, architecture name, parameters, buffers, initialisation and random draws, so a
checkpoint names the parent's architecture and loads with plain ``sae_lens.SAE.load_from_disk``. They are
training-only, chosen on a CPU by :func:`lean_training_class` (through
:func:`vision_sae_lens.train.build.training_classes`); a class that is not SAELens' own (a user's
subclass, a registered architecture) is kept as it is.

- ``LeanTopKTrainingSAE`` / ``LeanBatchTopKTrainingSAE``: the AuxK loss from (batch, k_aux) values and
  indices; in float32 on a CPU with no hooks attached, the sparse forward (one dense product a step).
  BatchTopK chooses its entries with :class:`~vision_sae_lens.train.sparse_topk.SampledBatchTopK`.
- ``LeanMatryoshkaBatchTopKTrainingSAE``: both AuxK variants lean, BatchTopK's sampled choice; the dense
  forward (its nested reconstructions read the dense activations' gradients).
- ``LeanStandardTrainingSAE``: the L1 penalty as a matrix-vector product, added into the decoder's
  gradient in place by its ReLU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from sae_lens import (
    BatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAE,
    StandardTrainingSAE,
    TopKTrainingSAE,
    TrainingSAE,
)

from vision_sae_lens.compat import TrainStepInput, TrainStepOutput
from vision_sae_lens.train.lean_losses import (
    InPlaceBackwardReLU,
    matryoshka_aux_loss,
    standard_l1_loss,
    topk_aux_loss,
)
from vision_sae_lens.train.sparse_topk import SampledBatchTopK, SparseForward, sparse_forward_applies


class LeanTopKTrainingSAE(TopKTrainingSAE):
    """SAELens' ``TopKTrainingSAE``; its training forward touches only the active latents where
    :func:`~vision_sae_lens.train.sparse_topk.sparse_forward_applies`, and its AuxK loss is lean."""

    _sparse_forward: SparseForward | None = None
    """The running training forward's sparse state (None outside ``training_forward_pass``)."""
    auxk_relu: bool = False
    """AuxK on the dead latents' ReLU'd pre-activations (set by the subclasses of :mod:`~vision_sae_lens.train.auxk`)."""

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        self._sparse_forward = SparseForward(self) if sparse_forward_applies(self) else None
        try:
            return super().training_forward_pass(step_input)
        finally:
            self._sparse_forward = None  # nothing of one step outlives it (and deepcopy sees no graph)

    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self._sparse_forward.encode(x) if self._sparse_forward is not None else None
        return encoded if encoded is not None else super().encode_with_hidden_pre(x)

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        decoded = self._sparse_forward.decode(feature_acts) if self._sparse_forward is not None else None
        return decoded if decoded is not None else super().decode(feature_acts)

    def calculate_topk_aux_loss(
        self,
        sae_in: torch.Tensor,
        sae_out: torch.Tensor,
        hidden_pre: torch.Tensor,
        dead_neuron_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        forward = self._sparse_forward
        values_at = forward.values_at if forward is not None and forward.produced(hidden_pre) else None
        return topk_aux_loss(
            self, sae_in, sae_out, hidden_pre, dead_neuron_mask, values_at=values_at, relu=self.auxk_relu
        )


class LeanBatchTopKTrainingSAE(LeanTopKTrainingSAE, BatchTopKTrainingSAE):
    """SAELens' ``BatchTopKTrainingSAE`` with :class:`LeanTopKTrainingSAE`'s step and the sampled choice."""

    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return SampledBatchTopK(self.cfg.k)


class LeanMatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAE):
    """SAELens' ``MatryoshkaBatchTopKTrainingSAE`` with lean AuxK losses and the sampled BatchTopK choice."""

    auxk_relu: bool = False
    """As :attr:`LeanTopKTrainingSAE.auxk_relu`."""

    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return SampledBatchTopK(self.cfg.k)

    def calculate_topk_aux_loss(
        self,
        sae_in: torch.Tensor,
        sae_out: torch.Tensor,
        hidden_pre: torch.Tensor,
        dead_neuron_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        return topk_aux_loss(self, sae_in, sae_out, hidden_pre, dead_neuron_mask, relu=self.auxk_relu)

    def calculate_matryoshka_aux_loss(
        self,
        sae_in: torch.Tensor,
        sae_out: torch.Tensor,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        dead_neuron_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        return matryoshka_aux_loss(
            self, sae_in, sae_out, feature_acts, hidden_pre, dead_neuron_mask, relu=self.auxk_relu
        )


class LeanStandardTrainingSAE(StandardTrainingSAE):
    """SAELens' ``StandardTrainingSAE`` whose L1 penalty keeps no (batch, d_sae) matrix for its backward."""

    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        activation = super().get_activation_fn()
        return InPlaceBackwardReLU() if type(activation) is torch.nn.ReLU else activation

    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        return standard_l1_loss(self, step_input, feature_acts, hidden_pre, sae_out)


LEAN_TRAINING_CLASSES: dict[type[TrainingSAE], type[TrainingSAE]] = {
    TopKTrainingSAE: LeanTopKTrainingSAE,
    BatchTopKTrainingSAE: LeanBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAE: LeanMatryoshkaBatchTopKTrainingSAE,
    StandardTrainingSAE: LeanStandardTrainingSAE,
}
"""SAELens' own training classes -> their lean subclass."""


def lean_training_class(cls: type[TrainingSAE]) -> type[TrainingSAE]:
    """The lean subclass of SAELens' training class ``cls``; ``cls`` itself for any other class (a user's
    subclass keeps every method it overrides, and an architecture without a lean step keeps SAELens')."""
    return LEAN_TRAINING_CLASSES.get(cls, cls)
