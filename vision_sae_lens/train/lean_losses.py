"""SAELens' training losses, computed with fewer dense (batch, d_sae) matrices.

Each function equals the SAELens method named in its docstring, value and gradients, up to the order of
float sums; the training-SAE subclasses of :mod:`vision_sae_lens.train.lean_saes` call them in place of
those methods and :mod:`vision_sae_lens.train.mirrors` checks them against the SAELens code they follow.

- AuxK (TopK, BatchTopK, Matryoshka): SAELens scatters the top-k_aux dead pre-activations into a dense
  (batch, d_sae) tensor, multiplies it by 1/||W_dec|| into a second one and keeps both for the backward
  of a dense product. Here the (batch, k_aux) values and indices alone decode, through ``embedding_bag``
  (as EleutherAI's sparsify decodes).
- The standard SAE's L1: for p = 1 on ReLU activations the penalty is a matrix-vector product whose
  gradient for the activations is one row for every sample; :class:`InPlaceBackwardReLU` adds that row
  into the decoder's gradient and masks it in place: one (batch, d_sae) gradient matrix instead of three.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from sae_lens import MatryoshkaBatchTopKTrainingSAE, StandardTrainingSAE, TopKTrainingSAE

from vision_sae_lens.compat import TrainStepInput, matryoshka_partial_decodes

ValuesAt = Callable[[torch.Tensor], torch.Tensor]
"""Pre-activations, with their gradients, at a (batch, k) matrix of latent indices."""


def topk_aux_loss(
    sae: TopKTrainingSAE,
    sae_in: torch.Tensor,
    sae_out: torch.Tensor,
    hidden_pre: torch.Tensor,
    dead_neuron_mask: torch.Tensor | None,
    *,
    values_at: ValuesAt | None = None,
    relu: bool = False,
) -> torch.Tensor:
    """SAELens' ``TopKTrainingSAE.calculate_topk_aux_loss(sae_in, sae_out, hidden_pre, dead_neuron_mask)``
    for ``sae``, decoding the top-k_aux dead latents without a dense (batch, d_sae) activation matrix.
    Where ``hidden_pre`` carries no gradient (the sparse forward), ``values_at`` gives the chosen values.
    ``relu=True`` is that loss on ``hidden_pre.relu()`` (:mod:`~vision_sae_lens.train.auxk`)."""
    if dead_neuron_mask is None or (num_dead := int(dead_neuron_mask.sum())) == 0:
        return sae_out.new_tensor(0.0)
    if sae.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
        # SAELens refuses these (the residual is in another space): its own method raises its own error
        return TopKTrainingSAE.calculate_topk_aux_loss(sae, sae_in, sae_out, hidden_pre, dead_neuron_mask)
    residual = (sae_in - sae_out).detach()
    k_aux = sae_in.shape[-1] // 2  # the TopK paper's heuristic, as SAELens
    scale = min(num_dead / k_aux, 1.0)
    k_aux = min(k_aux, num_dead)
    inv_norm_s = 1 / sae.W_dec.norm(dim=-1) if sae.cfg.rescale_acts_by_decoder_norm else None
    recons = _decode_top_dead(
        hidden_pre, dead_neuron_mask, k_aux, sae.W_dec, inv_norm_s, num_dead, values_at, relu=relu
    )
    recons = sae.reshape_fn_out(recons, sae.d_head)
    auxk_loss = (recons - residual).pow(2).sum(dim=-1).mean()
    return sae.cfg.aux_loss_coefficient * scale * auxk_loss


def matryoshka_aux_loss(
    sae: MatryoshkaBatchTopKTrainingSAE,
    sae_in: torch.Tensor,
    sae_out: torch.Tensor,
    feature_acts: torch.Tensor,
    hidden_pre: torch.Tensor,
    dead_neuron_mask: torch.Tensor | None,
    *,
    relu: bool = False,
) -> torch.Tensor:
    """SAELens' ``MatryoshkaBatchTopKTrainingSAE.calculate_matryoshka_aux_loss`` for ``sae`` (one AuxK
    loss per nested level, against that level's partial reconstruction), decoded as :func:`topk_aux_loss`
    (``relu`` as there)."""
    if dead_neuron_mask is None or int(dead_neuron_mask.sum()) == 0:
        return sae_out.new_tensor(0.0)
    k_aux = sae_in.shape[-1] // 2
    W_dec = sae.W_dec
    scaled_W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True) if sae.cfg.rescale_acts_by_decoder_norm else W_dec
    losses, prev = [], 0
    for width, partial_sae_out in matryoshka_partial_decodes(sae, feature_acts, include_outer_loss=True):
        dead = dead_neuron_mask[prev:width]
        num_dead = int(dead.sum())
        if num_dead:
            scale = min(num_dead / k_aux, 1.0)
            residual = (sae_in - partial_sae_out).detach()
            part_k_aux = min(k_aux, num_dead)
            recons = _decode_top_dead(
                hidden_pre[:, prev:width],
                dead,
                part_k_aux,
                scaled_W_dec[prev:width],
                None,
                num_dead,
                relu=relu,
            )
            losses.append(scale * (recons - residual).pow(2).sum(dim=-1).mean())
        prev = width
    return sae.cfg.aux_loss_coefficient * torch.stack(losses).sum()


def _decode_top_dead(
    hidden_pre: torch.Tensor,
    dead_s: torch.Tensor,
    k_aux: int,
    W_dec_sd: torch.Tensor,
    inv_norm_s: torch.Tensor | None,
    num_dead: int,
    values_at: ValuesAt | None = None,
    *,
    relu: bool = False,
) -> torch.Tensor:
    """sum over the k_aux largest dead pre-activations of each row of value * inv_norm * W_dec row (the
    value ReLU'd with ``relu``: the largest values are the same, a negative one adds nothing); where
    ``hidden_pre`` carries no gradient, ``values_at(indices)`` gives the selected values with theirs."""
    lead, d_sae = hidden_pre.shape[:-1], hidden_pre.shape[-1]
    hidden_pre = hidden_pre.reshape(-1, d_sae)
    # every latent dead (the common case early in training): the mask would change nothing
    candidates = hidden_pre if num_dead == d_sae else torch.where(dead_s[None], hidden_pre, -torch.inf)
    top = candidates.topk(k_aux, sorted=False)
    del candidates  # the masked copy is not needed for backward (topk keeps only the indices)
    values_bk = top.values if values_at is None else values_at(top.indices)
    if relu:
        values_bk = values_bk.relu()
    weights_bk = values_bk if inv_norm_s is None else values_bk * inv_norm_s[top.indices]
    recons_bd = torch.nn.functional.embedding_bag(
        top.indices, W_dec_sd, per_sample_weights=weights_bk.to(W_dec_sd.dtype), mode="sum"
    )
    return recons_bd.reshape(*lead, W_dec_sd.shape[-1])


def standard_l1_loss(
    sae: StandardTrainingSAE,
    step_input: TrainStepInput,
    feature_acts: torch.Tensor,
    hidden_pre: torch.Tensor,
    sae_out: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """SAELens' ``StandardTrainingSAE.calculate_aux_loss``: ``l1 * ||feature_acts * ||W_dec rows|| ||_p``,
    batch mean. For p = 1 on ReLU activations (never negative) the norm is the matrix-vector product
    ``feature_acts @ ||W_dec rows||``, whose backward needs no (batch, d_sae) matrix (the activations'
    gradient is one row for every sample); same gradients (where an activation is 0 the ReLU passes none
    either way)."""
    relu = sae.activation_fn
    if sae.cfg.lp_norm != 1 or not isinstance(relu, torch.nn.ReLU | InPlaceBackwardReLU):
        return StandardTrainingSAE.calculate_aux_loss(sae, step_input, feature_acts, hidden_pre, sae_out)
    # Where the activations are exactly this ReLU's output, their L1 gradient (one row, the same for every
    # sample) is handed to the ReLU's backward, which adds it into the decoder's gradient in place; otherwise
    # it is returned as a broadcast view.
    sink = relu.gradient_rows_for(feature_acts) if isinstance(relu, InPlaceBackwardReLU) else None
    sparsity = _RowMeanOfProduct.apply(feature_acts, sae.W_dec.norm(dim=1), sink)
    return {"l1_loss": step_input.coefficients["l1"] * sparsity}


class _RowMeanOfProduct(torch.autograd.Function):
    """``(acts @ weights).mean()`` for a (batch, d) ``acts``, keeping only the column sums of ``acts`` for the
    backward. The gradient for ``acts`` is one row repeated for every sample: it goes to ``sink`` (a list the
    producing :class:`InPlaceBackwardReLU` adds from) when one is given, else out as a broadcast view of the
    row; neither materialises a (batch, d) matrix."""

    @staticmethod
    def forward(ctx, acts: torch.Tensor, weights: torch.Tensor, sink: list | None) -> torch.Tensor:
        acts_sum = acts.sum(dim=0)
        ctx.save_for_backward(acts_sum, weights)
        ctx.acts_shape, ctx.sink = acts.shape, sink
        return acts_sum @ weights / acts.shape[0]

    @staticmethod
    def backward(ctx, grad):
        acts_sum, weights = ctx.saved_tensors
        scale = grad / ctx.acts_shape[0]
        grad_acts = None
        if ctx.needs_input_grad[0]:
            row = weights * scale
            if ctx.sink is None:
                grad_acts = row.expand(ctx.acts_shape)
            else:  # autograd runs this before the ReLU's backward, which depends on it
                ctx.sink.append(row)
        grad_weights = acts_sum * scale if ctx.needs_input_grad[1] else None
        return grad_acts, grad_weights, None


class _ReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, rows: list) -> torch.Tensor:
        out = x.relu()
        ctx.save_for_backward(out)
        ctx.rows = rows
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        if not ctx.rows:  # no L1 rows were handed over: an ordinary ReLU backward, nothing in place
            return grad.masked_fill(out <= 0, 0), None
        # Rows are handed over only by standard_l1_loss in a training forward, where the gradient reaching the
        # activations is the fresh matrix the decoder's backward made: adding the L1 rows and zeroing it in
        # place saves the two (batch, d_sae) matrices that autograd's sum and ReLU's own backward would
        # allocate. A view (a broadcast) is copied first.
        if not grad.is_contiguous() or grad._base is not None:
            grad = grad.clone()
        for row in ctx.rows:
            grad.add_(row)
        ctx.rows.clear()
        return grad.masked_fill_(out <= 0, 0), None


class InPlaceBackwardReLU(torch.nn.Module):
    """``torch.nn.ReLU`` whose backward adds the L1 gradient rows :func:`standard_l1_loss` hands it into the
    incoming gradient and masks that in place (see ``_ReLUFunction``)."""

    def __init__(self) -> None:
        super().__init__()
        self._rows: list[torch.Tensor] = []
        self._out: weakref.ref[torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._rows = []
        out = _ReLUFunction.apply(x, self._rows)
        self._out = weakref.ref(out)
        return out

    def gradient_rows_for(self, acts: torch.Tensor) -> list[torch.Tensor] | None:
        """The list whose rows this ReLU's backward adds to its gradient, if ``acts`` is its last output."""
        return self._rows if self._out is not None and self._out() is acts else None
