"""Probes that the package's CPU training step (and its data-parallel BatchTopK) still mirror the SAELens code
they replace.

The lean training SAEs (:mod:`~vision_sae_lens.train.lean_saes`) override SAELens methods with code that
does the same work with fewer dense matrices. Each probe in :data:`MIRRORS` checks one of them twice: the
SAELens method still holds the lines the package's version follows (its source), and on a tiny SAE the two
still give the same loss and gradients. A probe raises :class:`~vision_sae_lens.errors.CompatError` naming
the mirror, so a SAELens upgrade that changes a mirrored method fails loudly instead of training a
different model. ``tests/train/test_train_mirrors.py`` runs them; the SAELens internals they rest on
(private or deep names) are probed in :mod:`vision_sae_lens.compat`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from sae_lens import (
    BatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAE,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)

from vision_sae_lens.compat import BatchTopK, TrainStepInput, require, require_sources
from vision_sae_lens.train.data_parallel import global_cut, keep_from_cut, largest_entries
from vision_sae_lens.train.lean_losses import standard_l1_loss, topk_aux_loss
from vision_sae_lens.train.lean_saes import LeanStandardTrainingSAE, LeanTopKTrainingSAE
from vision_sae_lens.train.sparse_topk import FAST_BATCH_TOPK_MIN_ENTRIES, batch_topk


def _probe_sparse_topk_forward() -> None:
    mirror = "TopK encode/decode (sparse forward)"
    require_sources(
        mirror,
        {
            TopKTrainingSAE.encode_with_hidden_pre: (
                "sae_in = self.process_sae_in(x)",
                "self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)",
                "hidden_pre = hidden_pre * self.W_dec.norm(dim=-1)",
                "self.hook_sae_acts_post(self.activation_fn(hidden_pre))",
                "return feature_acts, hidden_pre",
            ),
            TopKTrainingSAE.decode: (
                "feature_acts, self.W_dec, self.cfg.rescale_acts_by_decoder_norm",
                "+ self.b_dec",
                "self.hook_sae_recons(sae_out_pre)",
                "self.run_time_activation_norm_fn_out(sae_out_pre)",
                "self.reshape_fn_out(sae_out_pre, self.d_head)",
            ),
        },
    )
    for name in ("encode_with_hidden_pre", "decode"):
        require(
            getattr(BatchTopKTrainingSAE, name) is getattr(TopKTrainingSAE, name),
            mirror,
            f"BatchTopKTrainingSAE now overrides {name}",
        )
    big = torch.randn(1024, FAST_BATCH_TOPK_MIN_ENTRIES // 1024, generator=torch.Generator().manual_seed(0))
    require(
        torch.equal(batch_topk(big, 8), BatchTopK(8)(big)),
        mirror,
        "batch_topk no longer keeps the entries SAELens' BatchTopK keeps",
    )
    cfg = TopKTrainingSAEConfig(d_in=8, d_sae=32, k=2)
    torch.manual_seed(0)
    ours = LeanTopKTrainingSAE(cfg)
    torch.manual_seed(0)
    theirs = TopKTrainingSAE(cfg)
    x = torch.randn(6, 8)
    step_input = TrainStepInput(
        sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False
    )
    require(
        _same_loss_and_grads(
            lambda sae: sae.training_forward_pass(step_input).loss,
            (theirs, ours),
            lambda sae: [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec],
        ),
        mirror,
        "the sparse TopK forward no longer equals SAELens' training forward",
    )


def _probe_aux_losses() -> None:
    mirror = "TopK AuxK loss and standard L1"
    require_sources(
        mirror,
        {
            TopKTrainingSAE.calculate_topk_aux_loss: (
                "residual = (sae_in - sae_out).detach()",
                "k_aux = sae_in.shape[-1] // 2",
                "scale = min(num_dead / k_aux, 1.0)",
                "k_aux = min(k_aux, num_dead)",
                "calculate_topk_aux_acts(",
                "auxk_acts, self.W_dec, self.cfg.rescale_acts_by_decoder_norm",
                "self.reshape_fn_out(recons, self.d_head)",
                "(recons - residual).pow(2).sum(dim=-1).mean()",
                "self.cfg.aux_loss_coefficient * scale * auxk_loss",
            ),
            MatryoshkaBatchTopKTrainingSAE.calculate_matryoshka_aux_loss: (
                "self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)",
                "feature_acts, include_outer_loss=True",
                "partial_hidden_pre = hidden_pre[:, prev_width:width]",
                "residual = (sae_in - partial_sae_out).detach()",
                "rescale_acts_by_decoder_norm=False",
                "aux_losses.append(scale * auxk_loss)",
                "self.cfg.aux_loss_coefficient * stacked_losses.sum()",
            ),
            StandardTrainingSAE.calculate_aux_loss: (
                "weighted_feature_acts = feature_acts * self.W_dec.norm(dim=1)",
                "weighted_feature_acts.norm(p=self.cfg.lp_norm, dim=-1)",
                '(step_input.coefficients["l1"] * sparsity).mean()',
                'return {"l1_loss": l1_loss}',
            ),
        },
    )
    require(
        "self.calculate_topk_aux_loss(" in inspect.getsource(TopKTrainingSAE.calculate_aux_loss)
        and "self.calculate_matryoshka_aux_loss("
        in inspect.getsource(MatryoshkaBatchTopKTrainingSAE.calculate_aux_loss),
        mirror,
        "calculate_aux_loss no longer calls the method the lean subclasses override",
    )
    require(
        isinstance(
            StandardTrainingSAE(StandardTrainingSAEConfig(d_in=8, d_sae=32)).activation_fn, torch.nn.ReLU
        ),
        mirror,
        "StandardTrainingSAE's activation is no longer a ReLU",
    )
    # and the numbers: loss and gradients equal SAELens' own on a tiny SAE with dead latents
    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=8, d_sae=32, k=2))
    x = torch.randn(6, 8)
    _, hidden_pre = sae.encode_with_hidden_pre(x)
    sae_out = sae.decode(sae.encode(x))
    dead = torch.arange(32) % 3 != 0
    require(
        _same_loss_and_grads(
            lambda fn: fn(sae, x, sae_out, hidden_pre, dead),
            (TopKTrainingSAE.calculate_topk_aux_loss, topk_aux_loss),
            lambda _: [sae.W_dec, sae.W_enc],
        ),
        mirror,
        "topk_aux_loss no longer equals calculate_topk_aux_loss",
    )
    std = LeanStandardTrainingSAE(StandardTrainingSAEConfig(d_in=8, d_sae=32))
    step_input = TrainStepInput(
        sae_in=x, coefficients={"l1": 2.0}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False
    )
    feature_acts, hidden_pre = std.encode_with_hidden_pre(x)
    require(
        _same_loss_and_grads(
            lambda fn: fn(std, step_input, feature_acts, hidden_pre, x)["l1_loss"],
            (StandardTrainingSAE.calculate_aux_loss, standard_l1_loss),
            lambda _: [std.W_dec, std.W_enc],
        ),
        mirror,
        "standard_l1_loss no longer equals StandardTrainingSAE.calculate_aux_loss",
    )


def _probe_batch_topk_across_ranks() -> None:
    mirror = "BatchTopK choice and threshold over ranks"
    require_sources(
        mirror,
        {
            BatchTopK.forward: (
                "acts = x.relu()",
                "num_samples = acts.shape[:-1].numel()",
                "torch.topk(flat_acts, int(self.k * num_samples), dim=-1)",
            ),
            BatchTopKTrainingSAE.update_topk_threshold: (
                "positive_mask = acts_topk > 0",
                "lr = self.cfg.topk_threshold_lr",
                "torch.autocast(self.topk_threshold.device.type, enabled=False)",
                "acts_topk[positive_mask].min().to(self.topk_threshold.dtype)",
                "(1 - lr) * self.topk_threshold + lr * min_positive",
            ),
            BatchTopKTrainingSAE.training_forward_pass: ("self.update_topk_threshold(output.feature_acts)",),
        },
    )
    # and the numbers: the choice made from two ranks' slices is SAELens' choice over the whole batch
    x = torch.randn(12, 32, generator=torch.Generator().manual_seed(0))
    wanted = int(3 * x.shape[0])
    slices = [part.relu().flatten() for part in x.split(6)]
    cut = global_cut([largest_entries(flat, wanted) for flat in slices], wanted)
    ours = torch.cat([keep_from_cut(flat, cut).view(6, 32) for flat in slices])
    require(
        torch.equal(ours, BatchTopK(3)(x)),
        mirror,
        "the choice over slices no longer equals BatchTopK over the whole batch",
    )


def _same_loss_and_grads(loss_of: Callable, pair: tuple, params_of: Callable) -> bool:
    """``loss_of(x)`` for SAELens' ``pair[0]`` and ours ``pair[1]``: positive, equal, with equal gradients for
    ``params_of(x)``."""
    (ref, ref_grads), (ours, our_grads) = (
        (loss, torch.autograd.grad(loss, params_of(x), retain_graph=True))
        for x, loss in ((x, loss_of(x)) for x in pair)
    )
    return (
        bool(ref > 0)
        and torch.allclose(ref, ours, rtol=1e-5)
        and all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(ref_grads, our_grads, strict=True))
    )


MIRRORS: dict[str, Callable[[], None]] = {
    "TopK encode/decode (sparse forward)": _probe_sparse_topk_forward,
    "TopK AuxK loss and standard L1": _probe_aux_losses,
    "BatchTopK choice and threshold over ranks": _probe_batch_topk_across_ranks,
}
"""Mirror name -> probe that raises ``CompatError`` naming it when SAELens' mirrored code changed."""
