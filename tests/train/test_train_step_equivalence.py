"""The package's CPU training step (``FastSAETrainer`` with the lean training SAEs: fused Adam, boolean
firing statistics, lean losses, sparse TopK forward) against SAELens' own ``SAETrainer.step``: same seed,
same batches -> same weights, statistics and schedules."""

from __future__ import annotations

import pytest
import torch
from sae_lens import (
    BatchTopKTrainingSAEConfig,
    JumpReLUTrainingSAEConfig,
    LoggingConfig,
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
    SAETrainer,
    StandardTrainingSAEConfig,
    TopKTrainingSAEConfig,
)
from torch.utils._python_dispatch import TorchDispatchMode

from vision_sae_lens.compat import BatchTopK, SAETrainerConfig, TrainStepInput, get_sae_training_class
from vision_sae_lens.train import lean_losses, lean_saes, sparse_topk
from vision_sae_lens.train.build import training_classes
from vision_sae_lens.train.fast_trainer import FastSAETrainer
from vision_sae_lens.train.lean_saes import LeanStandardTrainingSAE, LeanTopKTrainingSAE, lean_training_class
from vision_sae_lens.train.sparse_topk import sparse_forward_applies

D_IN, D_SAE, BATCH, STEPS = 16, 64, 32, 12

CONFIGS = {
    "standard": lambda: StandardTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, l1_coefficient=2.0, l1_warm_up_steps=4),
    "topk": lambda: TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4),
    "batchtopk": lambda: BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4),
    "jumprelu": lambda: JumpReLUTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE),
}  # fmt: skip


def _trainer(
    make_cfg,
    *,
    lr: float,
    dead_feature_window: int = 3,
    fast: bool = False,
    device: str | None = None,
    auxk_relu: bool = False,
    **kwargs,
) -> SAETrainer:
    """SAELens' trainer and training SAE, or the classes training chooses for ``device`` (``fast``: "cpu");
    every one runs here on the CPU."""
    torch.manual_seed(0)
    sae_cfg = make_cfg()
    sae_cls, trainer_cls = get_sae_training_class(sae_cfg.architecture())[0], SAETrainer
    if fast or device is not None:
        sae_cls, trainer_cls = training_classes(sae_cls, device or "cpu", auxk_relu=auxk_relu)
    sae = sae_cls(sae_cfg)
    cfg = SAETrainerConfig(
        total_training_samples=STEPS * BATCH, train_batch_size_samples=BATCH, lr=lr, lr_end=lr / 10,
        lr_scheduler_name="cosineannealing", lr_warm_up_steps=3, lr_decay_steps=0, n_restart_cycles=1,
        adam_beta1=0.9, adam_beta2=0.999, device="cpu", autocast=False, dead_feature_window=dead_feature_window,
        feature_sampling_window=5, n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False), n_batches_for_norm_estimate=1,
    )  # fmt: skip
    return trainer_cls(cfg=cfg, sae=sae, data_provider=iter(()), **kwargs)


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(BATCH, D_IN, generator=g) * 3 for _ in range(STEPS)]


def _run(trainer: SAETrainer, step) -> list[float]:
    losses = []
    for batch in _batches():
        trainer.maybe_reset_sparsity()
        losses.append(float(step(trainer, batch).loss.detach()))
        trainer.n_training_steps += 1
    return losses


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_fast_step_equals_saelens_trainer(arch):
    reference = _trainer(CONFIGS[arch], lr=3e-2)
    ours = _trainer(CONFIGS[arch], lr=3e-2, fast=True)
    assert ours.fused_adam
    assert ours.optimizer.param_groups[0]["fused"] and not reference.optimizer.param_groups[0].get("fused")
    ref_losses = _run(reference, lambda t, b: t.step(b))
    our_losses = _run(ours, lambda t, b: t.step(b))
    assert our_losses == pytest.approx(ref_losses, rel=1e-4, abs=1e-5)
    for (name, a), (_, b) in zip(reference.sae.named_parameters(), ours.sae.named_parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), name
    assert not torch.equal(ours.sae.W_enc, _trainer(CONFIGS[arch], lr=3e-2).sae.W_enc)  # it did train
    assert torch.equal(ours.act_freq_scores, reference.act_freq_scores)
    assert torch.equal(ours.n_forward_passes_since_fired, reference.n_forward_passes_since_fired)
    assert ours.n_frac_active_samples == reference.n_frac_active_samples
    assert ours.n_training_samples == reference.n_training_samples
    assert ours.optimizer.param_groups[0]["lr"] == pytest.approx(reference.optimizer.param_groups[0]["lr"])
    assert ours.get_coefficients() == reference.get_coefficients()


def test_no_clipping_when_none_is_configured(monkeypatch):
    """max_grad_norm=None equals SAELens' step with its fixed clip removed (and a large gradient
    makes the clip matter, so the default really clips)."""
    clipped = _trainer(CONFIGS["standard"], lr=1e-2, fast=True)
    _run(clipped, lambda t, b: t.step(b))
    unclipped = _trainer(CONFIGS["standard"], lr=1e-2, fast=True, max_grad_norm=None)
    _run(unclipped, lambda t, b: t.step(b))
    reference = _trainer(CONFIGS["standard"], lr=1e-2)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: torch.tensor(0.0))
    _run(reference, lambda t, b: t.step(b))
    assert torch.allclose(unclipped.sae.W_enc, reference.sae.W_enc, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(clipped.sae.W_enc, unclipped.sae.W_enc, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ the TopK auxiliary loss (AuxK)
AUX_CONFIGS = {
    "topk": CONFIGS["topk"],
    "topk-unscaled": lambda: TopKTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, k=4, rescale_acts_by_decoder_norm=False
    ),
    "batchtopk": CONFIGS["batchtopk"],
    "matryoshka": lambda: MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, k=4, matryoshka_widths=[8, 24, D_SAE]
    ),
    "matryoshka-aux": lambda: MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, k=4, matryoshka_widths=[8, 24, D_SAE], use_matryoshka_aux_loss=True
    ),
}


@pytest.mark.parametrize("dead_feature_window", [-1, 0], ids=["all-dead", "some-dead"])
@pytest.mark.parametrize("arch", list(AUX_CONFIGS))
def test_lean_training_forward_step_equals_saelens_trainer(arch, dead_feature_window, monkeypatch):
    """With latents dead (every one: window -1; those silent on the last batch: window 0) the AuxK
    loss is active; our step (lean aux loss) gives SAELens' losses and weights after every step."""
    calls = []
    for name in ("topk_aux_loss", "matryoshka_aux_loss"):
        original = getattr(lean_losses, name)
        monkeypatch.setattr(lean_saes, name, lambda *a, _f=original, **k: calls.append(1) or _f(*a, **k))
    reference = _trainer(AUX_CONFIGS[arch], lr=3e-2, dead_feature_window=dead_feature_window)
    ours = _trainer(AUX_CONFIGS[arch], lr=3e-2, dead_feature_window=dead_feature_window, fast=True)
    ref_aux, our_aux = [], []
    for batch in _batches():
        for trainer, aux, step in (
            (reference, ref_aux, SAETrainer.step),
            (ours, our_aux, FastSAETrainer.step),
        ):
            trainer.maybe_reset_sparsity()
            out = step(trainer, batch)
            aux.append(float(out.losses["auxiliary_reconstruction_loss"].detach()))
            aux.append(float(out.loss.detach()))
            trainer.n_training_steps += 1
        for (name, a), (_, b) in zip(
            reference.sae.named_parameters(), ours.sae.named_parameters(), strict=True
        ):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (name, trainer.n_training_steps)
    assert our_aux == pytest.approx(ref_aux, rel=1e-4, abs=1e-5)
    assert sum(a > 0 for a in ref_aux[::2]) >= STEPS - 1  # the aux loss was on (window 0: from step 2)
    assert len(calls) >= STEPS - 1  # and ours computed it
    assert "calculate_topk_aux_loss" not in vars(ours.sae)  # the shadowing ended with the step
    assert "calculate_matryoshka_aux_loss" not in vars(ours.sae)


def test_lean_training_forward_keeps_no_dense_latent_matrix_for_backward():
    """SAELens' AuxK keeps (batch, d_sae) tensors for its backward (the scattered activations and their
    rescaled copy); ours keeps only (batch, k_aux) ones. Counted with autograd's saved-tensor hooks."""
    from sae_lens import TopKTrainingSAE

    torch.manual_seed(0)
    batch, d_sae = 40, 256
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=d_sae, k=4))
    x = torch.randn(batch, D_IN)
    _, hidden_pre = sae.encode_with_hidden_pre(x)
    sae_out = sae.decode(sae.encode(x)).detach()
    dead = torch.ones(d_sae, dtype=torch.bool)

    def dense_saved(fn) -> tuple[int, torch.Tensor]:
        shapes = []

        def pack(t):
            shapes.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = fn(sae, x, sae_out, hidden_pre, dead)
        return sum(s == (batch, d_sae) for s in shapes), loss

    n_ref, ref = dense_saved(TopKTrainingSAE.calculate_topk_aux_loss)
    n_ours, ours = dense_saved(lean_losses.topk_aux_loss)
    assert n_ref >= 2
    assert n_ours == 0
    assert torch.allclose(ours, ref, rtol=1e-5)
    ref_grads = torch.autograd.grad(ref, [sae.W_dec, sae.W_enc, sae.b_enc], retain_graph=True)
    our_grads = torch.autograd.grad(ours, [sae.W_dec, sae.W_enc, sae.b_enc])
    for a, b in zip(ref_grads, our_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_lean_training_forward_leaves_overriding_subclasses_alone():
    """A user's subclass keeps its own method (no lean class replaces it); SAELens' own class gets the lean
    subclass, whose method is the lean one."""
    from sae_lens import TopKTrainingSAE

    class Custom(TopKTrainingSAE):
        def calculate_topk_aux_loss(self, *args, **kwargs):
            return torch.tensor(7.0)

    sae = lean_training_class(Custom)(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4))
    plain = lean_training_class(TopKTrainingSAE)(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4))
    assert type(sae).calculate_topk_aux_loss is Custom.calculate_topk_aux_loss
    assert type(plain).calculate_topk_aux_loss is LeanTopKTrainingSAE.calculate_topk_aux_loss
    assert "calculate_topk_aux_loss" not in vars(plain)


def test_lean_l1_keeps_no_dense_product_and_equals_saelens():
    """SAELens' L1 keeps ``feature_acts * ||W_dec||`` (batch, d_sae) for its backward; ours keeps the
    activations' column sums. Same loss and gradients."""
    from sae_lens import StandardTrainingSAE

    torch.manual_seed(0)
    batch, d_sae = 40, 256
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=D_IN, d_sae=d_sae))
    x = torch.randn(batch, D_IN) * 3
    step_input = TrainStepInput(
        sae_in=x, coefficients={"l1": 2.0}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False
    )

    def run(fn):
        shapes = []

        def pack(t):
            shapes.append(tuple(t.shape))
            return t

        feature_acts, hidden_pre = sae.encode_with_hidden_pre(x)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = fn(sae, step_input, feature_acts, hidden_pre, x)["l1_loss"]
        grads = torch.autograd.grad(loss, [sae.W_dec, sae.W_enc, sae.b_enc])
        return sum(s == (batch, d_sae) for s in shapes), loss, grads

    n_ref, ref, ref_grads = run(StandardTrainingSAE.calculate_aux_loss)
    n_ours, ours, our_grads = run(lean_losses.standard_l1_loss)
    assert n_ref >= 2 and n_ours == 0  # ours: the activations' column sums
    assert ref > 0 and torch.allclose(ours, ref, rtol=1e-5)
    for a, b in zip(ref_grads, our_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ["standard", "topk", "batchtopk"])
def test_pre_activations_are_freed_before_the_backward_pass(arch):
    """The (batch, d_sae) pre-activations the forward returns are dead by the time gradients flow (autograd
    does not keep them for these activations, and our step drops the output's reference); SAELens' own step
    keeps them alive through its output."""
    import weakref

    alive_in_backward = {}
    for name, step in (("saelens", SAETrainer.step), ("ours", FastSAETrainer.step)):
        trainer = _trainer(CONFIGS[arch], lr=1e-3, fast=name == "ours")
        sae, seen = trainer.sae, {}
        encode = sae.encode_with_hidden_pre

        def encode_and_watch(x, _encode=encode, _seen=seen):
            feature_acts, hidden_pre = _encode(x)
            _seen["ref"] = weakref.ref(hidden_pre)
            return feature_acts, hidden_pre

        sae.encode_with_hidden_pre = encode_and_watch
        flags = alive_in_backward.setdefault(name, [])
        sae.W_enc.register_hook(
            lambda grad, _seen=seen, _flags=flags: _flags.append(_seen["ref"]() is not None)
        )
        assert step(trainer, _batches()[0]).loss > 0
    assert alive_in_backward == {"saelens": [True], "ours": [False]}


def test_standard_backward_allocates_one_dense_gradient():
    """SAELens' standard step allocates three (batch, d_sae) float matrices in its backward (the decoder's
    gradient for the activations, the L1's, ReLU's masked copy); ours allocates the decoder's alone (plus a
    boolean mask) and gets the same gradients."""
    batch, d_sae = 40, 256

    class DenseAllocations(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = [
                a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)
            ]
            seen = {a.untyped_storage().data_ptr() for a in inputs}
            for t in out if isinstance(out, tuple | list) else [out]:
                # a new buffer: not an input written in place, a view, a detached alias or a broadcast
                dense = isinstance(t, torch.Tensor) and t.shape == (batch, d_sae) and t.is_contiguous()
                if dense and t.untyped_storage().data_ptr() not in seen:
                    self.bytes += t.element_size() * t.numel()
            return out

    def run(lean: bool):
        torch.manual_seed(0)
        sae_cls = LeanStandardTrainingSAE if lean else get_sae_training_class("standard")[0]
        sae = sae_cls(StandardTrainingSAEConfig(d_in=D_IN, d_sae=d_sae))
        x = torch.randn(batch, D_IN) * 3
        step_input = TrainStepInput(
            sae_in=x,
            coefficients={"l1": 2.0},
            dead_neuron_mask=None,
            n_training_steps=0,
            is_logging_step=False,
        )
        out = sae.training_forward_pass(step_input)
        out.hidden_pre = None
        with DenseAllocations() as allocations:
            out.loss.backward()
        assert isinstance(sae.activation_fn, torch.nn.ReLU) != lean  # the lean SAE's ReLU is its own
        return allocations.bytes, [p.grad for p in sae.parameters()]

    (ref_bytes, ref_grads), (our_bytes, our_grads) = run(lean=False), run(lean=True)
    matrix = batch * d_sae * 4
    assert ref_bytes >= 3 * matrix
    assert our_bytes <= matrix + batch * d_sae  # the decoder's gradient and a boolean mask
    for a, b in zip(ref_grads, our_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ the sparse TopK step (CPU)
class _LatentMatrixProducts(TorchDispatchMode):
    """Counts matrix products with a (batch, d_sae) operand or result."""

    def __init__(self, shape):
        super().__init__()
        self.shape, self.count = shape, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._schema.name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"):
            tensors = [a for a in (*args, out) if isinstance(a, torch.Tensor)]
            self.count += any(tuple(t.shape) in (self.shape, self.shape[::-1]) for t in tensors)
        return out


@pytest.mark.parametrize("arch", ["topk", "topk-unscaled", "batchtopk"])
def test_sparse_topk_step_equals_saelens_and_multiplies_no_latent_matrix(arch):
    """On a CPU our TopK-family step multiplies the dense (batch, d_sae) pre-activations once (the encoder's
    forward, which chooses the top k); SAELens' multiplies such matrices in the decoder's forward and in
    every backward product. Same losses and weights after every step, AuxK loss on (some latents dead)."""
    products = {}
    trainers = {
        name: _trainer(AUX_CONFIGS[arch], lr=3e-2, dead_feature_window=0, fast=name == "ours")
        for name in ("saelens", "ours")
    }
    steps = {"saelens": SAETrainer.step, "ours": FastSAETrainer.step}
    for i, batch in enumerate(_batches()):
        losses = {}
        for name, trainer in trainers.items():
            trainer.maybe_reset_sparsity()
            with _LatentMatrixProducts((BATCH, D_SAE)) as counter:
                out = steps[name](trainer, batch)
            products.setdefault(name, []).append(counter.count)
            losses[name] = (
                float(out.loss.detach()),
                float(out.losses["auxiliary_reconstruction_loss"].detach()),
            )
            trainer.n_training_steps += 1
        assert losses["ours"] == pytest.approx(losses["saelens"], rel=1e-4, abs=1e-5), i
        for (p, a), (_, b) in zip(
            trainers["saelens"].sae.named_parameters(), trainers["ours"].sae.named_parameters(), strict=True
        ):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (p, i)
    assert all(n == 1 for n in products["ours"])
    assert all(n >= 5 for n in products["saelens"])
    assert "encode_with_hidden_pre" not in vars(trainers["ours"].sae)  # no method was shadowed


def test_sparse_topk_step_is_kept_off_where_it_does_not_apply():
    """Hooks on the SAE, a caller's own method on the instance, another dtype: SAELens' dense step."""

    def sae():
        return LeanTopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4))

    assert sparse_forward_applies(sae())
    hooked = sae()
    hooked.hook_sae_acts_post.add_hook(lambda t, hook: t)
    overridden = sae()
    overridden.decode = lambda acts: acts
    assert not sparse_forward_applies(hooked)
    assert not sparse_forward_applies(overridden)
    assert not sparse_forward_applies(sae().to(torch.float64))


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("shift", [-0.6, -1e4], ids=["some-rows-silent", "nothing-fires"])
def test_sparse_topk_step_where_few_or_no_latents_fire(arch, shift):
    """Rows with no active latent (empty bags), or none in the batch: SAELens' loss and gradients, AuxK on."""
    torch.manual_seed(0)
    sae_cfg = AUX_CONFIGS[arch]()
    sae = get_sae_training_class(sae_cfg.architecture())[0](sae_cfg)
    with torch.no_grad():
        sae.b_enc.fill_(shift)
    lean = lean_training_class(type(sae))(sae_cfg)  # the same SAE, trained by the package's step
    lean.load_state_dict(sae.state_dict())
    step_input = TrainStepInput(
        sae_in=_batches()[0], coefficients={}, dead_neuron_mask=torch.arange(D_SAE) % 2 == 0,
        n_training_steps=0, is_logging_step=False,
    )  # fmt: skip
    params = [[s.W_enc, s.b_enc, s.W_dec, s.b_dec] for s in (sae, lean)]
    ref = sae.training_forward_pass(step_input)
    ours = lean.training_forward_pass(step_input)
    silent_rows = int((ours.feature_acts == 0).all(dim=1).sum())
    assert silent_rows == BATCH if shift < -100 else 0 < silent_rows < BATCH
    assert torch.allclose(ref.loss, ours.loss, rtol=1e-5)
    assert float(ours.losses["auxiliary_reconstruction_loss"].detach()) > 0
    for a, b in zip(
        torch.autograd.grad(ref.loss, params[0]), torch.autograd.grad(ours.loss, params[1]), strict=True
    ):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------- BatchTopK's choice without sorting
def _batch_topk_inputs():
    g = torch.Generator().manual_seed(3)
    n, d = 1024, 1024  # FAST_BATCH_TOPK_MIN_ENTRIES entries
    normal = torch.randn(n, d, generator=g)
    return {
        "normal": (normal, 8, True),
        "scaled-columns": (normal * torch.rand(1, d, generator=g) * 5, 8, True),
        "fractional-k": (normal, 9.5, True),
        "k-too-small-to-sample": (normal, 2, False),
        "large-k": (normal, 200, True),
        # every row twice, so each value appears twice; an odd number wanted: the cut falls between two equal entries
        "tied-at-the-cut": (normal[: n // 2].repeat(2, 1), 8 + 1 / n, False),
        "pairs-kept-whole": (normal[: n // 2].repeat(2, 1), 8, True),
        "few-positive": (normal - 3.5, 8, False),  # fewer positives than wanted: zeros are kept too
        "small-batch": (normal[:64], 8, False),
    }


@pytest.mark.parametrize("case", list(_batch_topk_inputs()))
def test_batch_topk_keeps_the_entries_saelens_batchtopk_keeps(case):
    """``batch_topk`` against SAELens' ``BatchTopK`` (a sort of the whole batch): the same tensor,
    on the fast path where it applies and by deferring to SAELens where it cannot be exact."""
    x, k, fast = _batch_topk_inputs()[case]
    used_fast = x.numel() >= sparse_topk.FAST_BATCH_TOPK_MIN_ENTRIES and (
        sparse_topk._largest_entries(x.relu().flatten(), int(k * x.shape[0])) is not None
    )
    assert used_fast == fast
    assert torch.equal(sparse_topk.batch_topk(x, k), BatchTopK(k)(x))


def test_batch_topk_with_a_nan_defers_to_saelens():
    x = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(4))
    x[5, 7] = float("nan")
    assert sparse_topk._largest_entries(x.relu().flatten(), 8 * 1024) is None
    torch.testing.assert_close(sparse_topk.batch_topk(x, 8), BatchTopK(8)(x), equal_nan=True, rtol=0, atol=0)


def test_batchtopk_training_with_the_fast_choice_equals_saelens(monkeypatch):
    """Batches of 1024 x 1024 latents, where the step takes the fast choice: SAELens' trainer's losses, weights
    and BatchTopK threshold after every step (AuxK on)."""
    d_sae, batch, steps = 1024, 1024, 4
    chosen = []
    largest = sparse_topk._largest_entries
    monkeypatch.setattr(sparse_topk, "_largest_entries", lambda *a: chosen.append(largest(*a)) or chosen[-1])

    def trainer(fast: bool):
        torch.manual_seed(0)
        sae_cls, trainer_cls = get_sae_training_class("batchtopk")[0], SAETrainer
        if fast:
            sae_cls, trainer_cls = training_classes(sae_cls, "cpu")
        sae = sae_cls(BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=d_sae, k=16))
        cfg = SAETrainerConfig(
            total_training_samples=steps * batch, train_batch_size_samples=batch, lr=3e-2, lr_end=3e-3,
            lr_scheduler_name="constant", lr_warm_up_steps=0, lr_decay_steps=0, n_restart_cycles=1,
            adam_beta1=0.9, adam_beta2=0.999, device="cpu", autocast=False, dead_feature_window=0,
            feature_sampling_window=5, n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
            logger=LoggingConfig(log_to_wandb=False), n_batches_for_norm_estimate=1,
        )  # fmt: skip
        return trainer_cls(cfg=cfg, sae=sae, data_provider=iter(()))

    ref, ours = trainer(fast=False), trainer(fast=True)
    g, aux = torch.Generator().manual_seed(5), []
    for i in range(steps):
        x = torch.randn(batch, D_IN, generator=g) * 3
        losses = []
        for t, step in ((ref, SAETrainer.step), (ours, FastSAETrainer.step)):
            t.maybe_reset_sparsity()
            out = step(t, x)
            losses.append(
                (float(out.loss.detach()), float(out.losses["auxiliary_reconstruction_loss"].detach()))
            )
            t.n_training_steps += 1
        assert losses[1] == pytest.approx(losses[0], rel=1e-4, abs=1e-5), i
        aux.append(losses[1][1])
        for (name, a), (_, b) in zip(ref.sae.named_parameters(), ours.sae.named_parameters(), strict=True):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (name, i)
        assert torch.allclose(ref.sae.topk_threshold, ours.sae.topk_threshold, rtol=1e-6), i
    assert len(chosen) == steps and all(c is not None for c in chosen)  # each step took the fast choice
    assert any(a > 0 for a in aux)


@pytest.mark.parametrize("arch", list(AUX_CONFIGS))
def test_relu_auxk_step_equals_saelens_aux_loss_on_relu_pre_activations(arch):
    """``auxk_relu`` (the default of TrainConfig) is SAELens' own AuxK loss fed ``hidden_pre.relu()`` (OpenAI's
    reference, dictionary_learning and sparsify): the class chosen for a GPU (SAELens' step) and the one chosen
    for a CPU (the lean / sparse step) give the same losses and weights through every step as SAELens' methods
    called on the ReLU'd values by hand; and they differ from SAELens' raw pre-activations."""
    # window 0: the latents silent on the last batch are dead, and their pre-activations are mostly negative
    reference = _trainer(AUX_CONFIGS[arch], lr=3e-2, dead_feature_window=0)
    sae = reference.sae
    cls = type(sae)
    sae.calculate_topk_aux_loss = lambda *, hidden_pre, **kw: cls.calculate_topk_aux_loss(
        sae, hidden_pre=hidden_pre.relu(), **kw
    )
    if isinstance(sae, MatryoshkaBatchTopKTrainingSAE):
        sae.calculate_matryoshka_aux_loss = lambda *, hidden_pre, **kw: cls.calculate_matryoshka_aux_loss(
            sae, hidden_pre=hidden_pre.relu(), **kw
        )
    trainers = {
        "reference": reference,
        "gpu choice": _trainer(
            AUX_CONFIGS[arch], lr=3e-2, dead_feature_window=0, device="cuda", auxk_relu=True
        ),
        "cpu choice": _trainer(AUX_CONFIGS[arch], lr=3e-2, dead_feature_window=0, fast=True, auxk_relu=True),
        "raw": _trainer(AUX_CONFIGS[arch], lr=3e-2, dead_feature_window=0, fast=True),
    }
    assert type(trainers["gpu choice"].sae).__name__.startswith("ReluAuxK")
    assert type(trainers["cpu choice"].sae).__name__.startswith("LeanReluAuxK")
    losses: dict[str, list[float]] = {name: [] for name in trainers}
    for batch in _batches():
        for name, trainer in trainers.items():
            trainer.maybe_reset_sparsity()
            out = trainer.step(batch)
            losses[name].append(float(out.losses["auxiliary_reconstruction_loss"].detach()))
            trainer.n_training_steps += 1
    for name in ("gpu choice", "cpu choice"):
        assert losses[name] == pytest.approx(losses["reference"], rel=1e-4, abs=1e-5), name
        pairs = zip(reference.sae.named_parameters(), trainers[name].sae.named_parameters(), strict=True)
        for (param, a), (_, b) in pairs:
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (name, param)
    assert sum(a > 0 for a in losses["cpu choice"]) >= STEPS - 1  # the aux loss was on from step 2
    assert losses["raw"] != pytest.approx(losses["cpu choice"], rel=1e-3)
