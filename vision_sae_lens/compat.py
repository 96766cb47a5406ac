"""The one place that touches SAELens / TransformerLens internals (private names and deep APIs).

``HookedSAEViT`` reuses SAELens' ``HookedSAETransformer`` splicing methods and its ``_SAEWrapper`` so an
SAE behaves on images exactly as on text. Those are private: every such name is imported here, and
:data:`SEAMS` holds one probe per seam. ``tests/backbones/test_compat_seams.py`` runs each probe, so an
upgrade that moves or changes a seam fails loudly with the seam's name instead of silently
changing behaviour. Public, stable imports (``HookPoint``, ``ActivationCache``) live here too, so the
whole dependency surface on these two libraries reads in one file.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from sae_lens import SAE
from sae_lens.analysis.hooked_sae_transformer import (
    HookedSAETransformer,
    _SAEWrapper,
    get_deep_attr,
    set_deep_attr,
)
from sae_lens.saes.sae import _disable_hooks

# TransformerLens 3 moved HookedRootModule out of hook_points (importing it from there warns and is
# gone in 4.0); the dedicated module is the supported path.
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

SAEWrapper = _SAEWrapper
"""SAELens' per-site SAE wrapper (private ``_SAEWrapper``): hooks copied from the SAE, ``hook_sae_error``,
``hook_sae_output``, ``use_error_term``, ``exclude_special_tokens`` and a per-position bypass mask."""

disable_sae_hooks = _disable_hooks
"""Context manager that runs an SAE with its HookPoints bypassed (SAELens' ``_disable_hooks``)."""


class CompatError(RuntimeError):
    """A SAELens / TransformerLens seam this package relies on has changed; the message names it."""


def _require(ok: bool, seam: str, what: str) -> None:
    if not ok:
        raise CompatError(
            f"compatibility seam {seam!r} changed: {what}. This vision_sae_lens release supports "
            "sae-lens 6.54 and transformer-lens 3.x; pin those or update vision_sae_lens/compat.py."
        )


def _require_sources(seam: str, needles: dict[Callable, tuple[str, ...]]) -> None:
    """Each function's source still contains each of its needles (the lines our replacement mirrors)."""
    for fn, parts in needles.items():
        src = inspect.getsource(fn)
        for needle in parts:
            _require(needle in src, seam, f"{fn.__qualname__} no longer does {needle!r} (update compat)")


def _params(fn: Callable) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _probe_wrapper_contract() -> None:
    seam = "sae_lens _SAEWrapper"
    _require(
        _params(_SAEWrapper.__init__)[:4] == ["self", "sae", "use_error_term", "exclude_special_tokens"],
        seam,
        "constructor is no longer (sae, use_error_term, exclude_special_tokens)",
    )
    for attr in ("set_token_mask", "capture_input", "sae", "forward"):
        _require(hasattr(_SAEWrapper, attr), seam, f"has no {attr}")
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=4, d_sae=8))
    wrapper = _SAEWrapper(sae, use_error_term=True, exclude_special_tokens=[0])
    for name in ("hook_sae_error", "hook_sae_output", "hook_sae_acts_post", "hook_sae_input"):
        _require(
            isinstance(getattr(wrapper, name, None), HookPoint), seam, f"wrapper has no HookPoint {name}"
        )
    _require(wrapper.sae is sae and wrapper.use_error_term is True, seam, "sae / use_error_term not kept")
    _require(wrapper.exclude_special_tokens == [0], seam, "exclude_special_tokens not kept")
    _require(getattr(wrapper, "_token_mask", "missing") is None, seam, "no _token_mask attribute")
    mask = torch.tensor([[True, False]])
    wrapper.set_token_mask(mask)
    _require(wrapper._token_mask is mask, seam, "set_token_mask does not set _token_mask")
    x = torch.randn(1, 2, 4)
    out = wrapper(x)
    _require(torch.equal(out[:, 0], x[:, 0]), seam, "a masked position no longer bypasses the SAE")


def _probe_wrapper_error_is_constant() -> None:
    seam = "sae_lens _SAEWrapper error term"
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=4, d_sae=8))
    wrapper = _SAEWrapper(sae, use_error_term=True)
    x = torch.randn(3, 4, requires_grad=True)
    (grad_x,) = torch.autograd.grad(wrapper(x).sum(), x)
    x_hat = lambda v: sae.decode(sae.encode(v))  # noqa: E731
    (expected,) = torch.autograd.grad(x_hat(x).sum(), x)
    _require(
        torch.allclose(grad_x, expected, atol=1e-6),
        seam,
        "gradients no longer reach the input only through the reconstruction (error term not constant)",
    )


def _probe_borrowed_methods() -> None:
    seam = "sae_lens HookedSAETransformer methods"
    for name in BORROWED_METHODS:
        _require(hasattr(HookedSAETransformer, name), seam, f"HookedSAETransformer has no {name}")
    src = inspect.getsource(HookedSAETransformer.saes)
    _require(
        "self.add_sae(" in src and "self._reset_sae(" in src,
        seam,
        "saes() no longer calls add_sae/_reset_sae",
    )
    _require(
        "exclude_special_tokens" in _params(HookedSAETransformer.add_sae),
        seam,
        "add_sae lost exclude_special_tokens",
    )
    src = inspect.getsource(HookedSAETransformer._reset_sae)
    _require(
        "_transcoder_output_hooks" in src and "_acts_to_saes" in src, seam, "_reset_sae bookkeeping changed"
    )


def _probe_deep_attr() -> None:
    seam = "sae_lens get_deep_attr/set_deep_attr"
    root = torch.nn.Module()
    root.blocks = torch.nn.ModuleList([torch.nn.Module()])
    root.blocks[0].hook = HookPoint()
    new = HookPoint()
    set_deep_attr(root, "blocks.0.hook", new)
    _require(get_deep_attr(root, "blocks.0.hook") is new, seam, "dotted paths with indices no longer resolve")


def _probe_disable_hooks() -> None:
    seam = "sae_lens _disable_hooks"
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=4, d_sae=8))
    calls: list[int] = []
    sae.hook_sae_acts_post.add_hook(lambda t, hook: calls.append(1))
    with _disable_hooks(sae):
        sae(torch.randn(2, 4))
    sae.reset_hooks()
    _require(not calls, seam, "hooks still fire inside _disable_hooks")


def _probe_root_module() -> None:
    seam = "transformer_lens HookedRootModule"
    for name in ("run_with_cache", "run_with_hooks", "hooks", "add_hook", "add_caching_hooks", "setup"):
        _require(hasattr(HookedRootModule, name), seam, f"has no {name}")
    _require(
        "remove_batch_dim" in _params(HookedRootModule.run_with_cache),
        seam,
        "run_with_cache lost remove_batch_dim",
    )
    _require("has_batch_dim" in _params(ActivationCache.__init__), seam, "ActivationCache lost has_batch_dim")
    root = type("_Probe", (HookedRootModule,), {})()  # a subclass, as HookedSAEViT is (the bare class warns)
    root.hook_x = HookPoint()
    root.setup()
    _require(
        getattr(root, "hook_dict", {}).get("hook_x") is root.hook_x, seam, "setup() no longer fills hook_dict"
    )
    _require(hasattr(root, "mod_dict"), seam, "setup() no longer fills mod_dict")


def build_open_clip_visual(arch: str, pretrained_cfg: dict | None = None) -> torch.nn.Module:
    """open_clip's image tower of architecture ``arch`` alone, randomly initialised exactly as inside
    ``open_clip.create_model(arch)`` (the tower is built first, from the same RNG state), without the
    text tower; ``preprocess_cfg`` is set as ``create_model`` sets it (private ``_build_vision_tower``),
    merged with a pretrained tag's ``pretrained_cfg`` (its mean, std, ...) as ``create_model`` does."""
    import copy
    from dataclasses import asdict

    import open_clip
    from open_clip.model import _build_vision_tower, set_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = copy.deepcopy(open_clip.get_model_config(arch))
    if cfg is None:
        raise CompatError(f"open_clip has no model config {arch!r}")
    vision_cfg = dict(cfg["vision_cfg"])
    if "timm_model_name" in vision_cfg:  # create_model without CLIP weights: no timm download either
        vision_cfg["timm_model_pretrained"] = False
    visual = _build_vision_tower(cfg["embed_dim"], vision_cfg, cfg.get("quick_gelu", False), None)
    # create_model's preprocessing for a built-in name: the defaults, merged with the tag's, at the
    # tower's size
    preprocess = merge_preprocess_dict(asdict(PreprocessCfg()), pretrained_cfg or {})
    set_model_preprocess_cfg(visual, {**preprocess, "size": visual.image_size})
    return visual


def _probe_open_clip_visual() -> None:
    seam = "open_clip _build_vision_tower"
    try:
        from open_clip import model as oc_model
    except ImportError:  # open_clip is optional: no backbone of it can be loaded, so nothing to check
        return
    fn = getattr(oc_model, "_build_vision_tower", None)
    _require(callable(fn), seam, "open_clip.model has no _build_vision_tower")
    assert fn is not None
    _require(
        _params(fn)[:4] == ["embed_dim", "vision_cfg", "quick_gelu", "cast_dtype"],
        seam,
        "signature is no longer (embed_dim, vision_cfg, quick_gelu, cast_dtype)",
    )
    src = inspect.getsource(oc_model.CLIP.__init__)
    first = src.find("_build_vision_tower(")
    _require(
        0 <= first < src.find("_build_text_tower("),
        seam,
        "CLIP no longer builds its image tower before its text tower (random init would differ)",
    )


# ------------------------------------------------------------------------------- SAELens trainer
# ``SAETrainer.step`` costs more than the SAE's own work: a non-fused Adam, a float copy of the whole
# (batch, d_sae) activation matrix for the firing statistics, and an unconditional gradient clip. The
# two functions below keep SAETrainer (its schedulers, scaler, statistics, checkpoint state) and
# replace only its optimizer and its private ``_train_step``, with the same results.


def use_fused_adam(trainer) -> bool:
    """Give ``trainer`` (a fresh ``SAETrainer``) the same Adam and lr schedule with ``fused=True``
    where the device supports it; True when it did. Call it before loading any trainer state."""
    from sae_lens.training.optim import get_lr_scheduler

    params = list(trainer.sae.parameters())
    if not all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params):
        return False
    cfg = trainer.cfg
    try:
        optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), fused=True)
    except (RuntimeError, ValueError):  # a device without a fused Adam kernel keeps SAELens' own
        return False
    trainer.optimizer = optimizer
    trainer.lr_scheduler = get_lr_scheduler(
        cfg.lr_scheduler_name,
        lr=cfg.lr,
        optimizer=optimizer,
        warm_up_steps=cfg.lr_warm_up_steps,
        decay_steps=cfg.lr_decay_steps,
        training_steps=cfg.total_training_steps,
        lr_end=cfg.lr_end,
        num_cycles=cfg.n_restart_cycles,
    )
    return True


def trainer_step(trainer, batch: torch.Tensor, *, max_grad_norm: float | None = 1.0, auxk_relu: bool = False):
    """``trainer.step(batch)`` (SAELens' ``SAETrainer.step``) without its avoidable cost: the firing
    statistics are counted on a boolean mask (no float copy of the activations), the forward and its losses
    use fewer dense (batch, d_sae) matrices (:func:`lean_training_forward`, which takes ``auxk_relu``), the
    gradient is clipped to ``max_grad_norm`` only when one is given (SAELens always clips at 1.0, the
    default), and the returned output's ``hidden_pre`` is an empty tensor (freed before the backward pass)."""
    from sae_lens.saes.sae import TrainStepInput

    sae = trainer.sae
    batch = batch.to(sae.device)
    trainer.n_training_samples += batch.shape[0]
    sae_in = trainer.activation_scaler(batch)
    sae.train()
    with trainer.autocast_if_enabled, lean_training_forward(sae, auxk_relu=auxk_relu):
        out = sae.training_forward_pass(
            step_input=TrainStepInput(
                sae_in=sae_in,
                dead_neuron_mask=trainer.dead_neurons,
                coefficients=trainer.get_coefficients(),
                n_training_steps=trainer.n_training_steps,
                is_logging_step=trainer._is_logging_step(),
            ),
        )
        with torch.no_grad():
            acts = out.feature_acts
            # One boolean pass summed in int32: 2.4x faster on a CPU than .any(0) plus an int64 .sum(0)
            fired_d = ((acts.to_dense() if acts.is_sparse else acts) != 0).sum(0, dtype=torch.int32)
            trainer.n_forward_passes_since_fired += 1
            trainer.n_forward_passes_since_fired[fired_d > 0] = 0
            trainer.act_freq_scores += fired_d
            trainer.n_frac_active_samples += trainer.cfg.train_batch_size_samples
    # Nothing reads the pre-activations after the forward (SAELens' trainer, our logging). Where autograd
    # does not keep them (ReLU, TopK, BatchTopK), dropping the output's reference frees a (batch, d_sae)
    # tensor before the backward pass, whose peak is the run's peak memory.
    out.hidden_pre = out.hidden_pre.new_empty(0)
    out.loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(sae.parameters(), max_grad_norm)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.lr_scheduler.step()
    for scheduler in trainer.coefficient_schedulers.values():
        scheduler.step()
    return out


def _probe_trainer_step() -> None:
    seam = "sae_lens SAETrainer._train_step"
    from sae_lens.training.sae_trainer import SAETrainer

    src = inspect.getsource(SAETrainer._train_step)
    for needle in (
        "training_forward_pass",
        "dead_neuron_mask=self.dead_neurons",
        "coefficients=self.get_coefficients()",
        "n_training_steps=self.n_training_steps",
        "is_logging_step=self._is_logging_step()",
        "self.n_forward_passes_since_fired[did_fire] = 0",
        "self.act_freq_scores += firing_feats.sum(0)",
        "self.n_frac_active_samples += self.cfg.train_batch_size_samples",
        "clip_grad_norm_(sae.parameters(), 1.0)",
        "self.optimizer.step()",
        "self.lr_scheduler.step()",
        "scheduler.step()",
    ):
        _require(needle in src, seam, f"no longer does {needle!r} (update compat.trainer_step to match)")
    step_src = inspect.getsource(SAETrainer.step)
    _require(
        "self.activation_scaler(batch)" in step_src
        and "self.n_training_samples += batch.shape[0]" in step_src,
        seam,
        "step() no longer scales the batch and counts samples as trainer_step does",
    )
    init_src = inspect.getsource(SAETrainer.__init__)
    for needle in ("Adam(", "get_lr_scheduler(", "num_cycles=cfg.n_restart_cycles", "lr_end=cfg.lr_end"):
        _require(needle in init_src, seam, f"__init__ no longer builds its optimizer with {needle!r}")


# ------------------------------------------------------------------------------- SAELens TopK aux loss
# SAELens' AuxK loss (``TopKTrainingSAE.calculate_topk_aux_loss``: TopK, BatchTopK, and Matryoshka unless
# ``use_matryoshka_aux_loss``, which has its own per-level variant) scatters the top-k_aux dead
# pre-activations into a dense (batch, d_sae) tensor, multiplies it by 1/||W_dec|| into a second one and
# keeps both for the backward of a dense matmul. The functions below compute the same loss from the
# (batch, k_aux) values and indices alone: ``embedding_bag`` sums the selected decoder rows weighted by
# the values, as EleutherAI's sparsify decodes. Same selection, same products; only the order of the
# final sum differs (float tolerance). With ``auxk_relu`` the selected values go through a ReLU first, as in
# OpenAI's reference, dictionary_learning and sparsify: SAELens feeds the raw (often negative) values.


@contextmanager
def lean_training_forward(sae, *, auxk_relu: bool = False) -> Iterator[None]:
    """Inside the block, ``sae``'s training forward gives SAELens' losses with fewer dense (batch, d_sae)
    matrices: a TopK / Matryoshka SAE computes its auxiliary loss with :func:`topk_aux_loss` /
    :func:`matryoshka_aux_loss`, a plain TopK / BatchTopK SAE on a CPU encodes and decodes sparsely
    (:class:`_SparseTopKStep`), and a standard SAE computes its L1 penalty with :func:`standard_l1_loss`
    through a ReLU whose backward works in place. The instance's SAELens methods and ReLU are shadowed, then
    restored; an SAE of another kind, or a subclass that overrides those methods, is left as it is.
    ``auxk_relu``: the AuxK loss decodes the dead latents' ReLU'd pre-activations (see :func:`topk_aux_loss`)."""
    from sae_lens.saes.matryoshka_batchtopk_sae import MatryoshkaBatchTopKTrainingSAE
    from sae_lens.saes.standard_sae import StandardTrainingSAE
    from sae_lens.saes.topk_sae import TopKTrainingSAE

    lean: dict[str, tuple[type, Callable[..., Any]]] = {
        "calculate_topk_aux_loss": (TopKTrainingSAE, topk_aux_loss),
        "calculate_matryoshka_aux_loss": (MatryoshkaBatchTopKTrainingSAE, matryoshka_aux_loss),
        "calculate_aux_loss": (StandardTrainingSAE, standard_l1_loss),
    }
    patched = [
        name
        for name, (cls, _) in lean.items()
        if isinstance(sae, cls) and getattr(type(sae), name) is getattr(cls, name) and name not in vars(sae)
    ]
    sparse = _SparseTopKStep(sae) if _sparse_topk_applies(sae) else None
    aux = {"relu": auxk_relu}
    for name in patched:
        setattr(
            sae, name, functools.partial(lean[name][1], sae, **(aux if name != "calculate_aux_loss" else {}))
        )
    if sparse is not None:
        sae.encode_with_hidden_pre, sae.decode = sparse.encode_with_hidden_pre, sparse.decode
        if "calculate_topk_aux_loss" in patched:
            sae.calculate_topk_aux_loss = functools.partial(topk_aux_loss, sae, sparse_step=sparse, **aux)
    # The standard SAE's ReLU: same values and gradients, its backward masks the incoming gradient in place
    relu = sae.activation_fn if "calculate_aux_loss" in patched else None
    if type(relu) is torch.nn.ReLU and not relu.inplace:
        sae.activation_fn = _InPlaceBackwardReLU()
    try:
        yield
    finally:
        for name in patched:
            delattr(sae, name)
        if relu is not None:
            sae.activation_fn = relu
        if sparse is not None:
            del sae.encode_with_hidden_pre, sae.decode


def standard_l1_loss(sae, step_input, feature_acts, hidden_pre, sae_out) -> dict[str, torch.Tensor]:
    """SAELens' ``StandardTrainingSAE.calculate_aux_loss``: ``l1 * ||feature_acts * ||W_dec rows|| ||_p``,
    batch mean. For p = 1 on ReLU activations (never negative) the norm is the matrix-vector product
    ``feature_acts @ ||W_dec rows||``, whose backward needs no (batch, d_sae) matrix (the activations'
    gradient is one row for every sample); same gradients (where an activation is 0 the ReLU passes none
    either way)."""
    if sae.cfg.lp_norm != 1 or not isinstance(sae.activation_fn, torch.nn.ReLU | _InPlaceBackwardReLU):
        from sae_lens.saes.standard_sae import StandardTrainingSAE

        return StandardTrainingSAE.calculate_aux_loss(sae, step_input, feature_acts, hidden_pre, sae_out)
    relu = sae.activation_fn
    # Where the activations are exactly this ReLU's output, their L1 gradient (one row, the same for every
    # sample) is handed to the ReLU's backward, which adds it into the decoder's gradient in place; otherwise
    # it is returned as a broadcast view.
    sink = relu.gradient_rows_for(feature_acts) if isinstance(relu, _InPlaceBackwardReLU) else None
    sparsity = _RowMeanOfProduct.apply(feature_acts, sae.W_dec.norm(dim=1), sink)
    return {"l1_loss": step_input.coefficients["l1"] * sparsity}


class _RowMeanOfProduct(torch.autograd.Function):
    """``(acts @ weights).mean()`` for a (batch, d) ``acts``, keeping only the column sums of ``acts`` for the
    backward. The gradient for ``acts`` is one row repeated for every sample: it goes to ``sink`` (a list the
    producing :class:`_InPlaceBackwardReLU` adds from) when one is given, else out as a broadcast view of the
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
        # The gradient reaching a training SAE's activations is the fresh matrix the decoder's backward made;
        # adding the L1 rows and zeroing it in place saves the two (batch, d_sae) matrices that autograd's
        # sum and ReLU's own backward would allocate. A view (a broadcast) is copied first.
        if not grad.is_contiguous() or grad._base is not None:
            grad = grad.clone()
        for row in ctx.rows:
            grad.add_(row)
        ctx.rows.clear()
        return grad.masked_fill_(out <= 0, 0), None


class _InPlaceBackwardReLU(torch.nn.Module):
    """``torch.nn.ReLU`` whose backward works in the incoming gradient's memory (see ``_ReLUFunction``) and
    adds there the L1 gradient rows :func:`standard_l1_loss` hands it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._rows: list = []
        out = _ReLUFunction.apply(x, self._rows)
        self._out = weakref.ref(out)
        return out

    def gradient_rows_for(self, acts: torch.Tensor) -> list | None:
        """The list whose rows this ReLU's backward adds to its gradient, if ``acts`` is its last output."""
        return self._rows if getattr(self, "_out", lambda: None)() is acts else None


def topk_aux_loss(
    sae,
    sae_in,
    sae_out,
    hidden_pre,
    dead_neuron_mask,
    *,
    sparse_step: _SparseTopKStep | None = None,
    relu: bool = False,
) -> torch.Tensor:
    """SAELens' ``TopKTrainingSAE.calculate_topk_aux_loss(sae_in, sae_out, hidden_pre, dead_neuron_mask)``
    for ``sae``, decoding the top-k_aux dead latents without a dense (batch, d_sae) activation matrix. With
    the ``sparse_step`` that produced ``hidden_pre`` (without gradients), the chosen values come from it.
    ``relu=True`` is that loss on ``hidden_pre.relu()`` (OpenAI's AuxK): a dead latent whose pre-activation
    is negative adds nothing, so the loss cannot teach it to explain the residual with negative values."""
    if dead_neuron_mask is None or (num_dead := int(dead_neuron_mask.sum())) == 0:
        return sae_out.new_tensor(0.0)
    if sae.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
        from sae_lens.saes.topk_sae import TopKTrainingSAE

        # SAELens refuses these (the residual is in another space): its own method raises its own error
        return TopKTrainingSAE.calculate_topk_aux_loss(sae, sae_in, sae_out, hidden_pre, dead_neuron_mask)
    residual = (sae_in - sae_out).detach()
    k_aux = sae_in.shape[-1] // 2  # the TopK paper's heuristic, as SAELens
    scale = min(num_dead / k_aux, 1.0)
    k_aux = min(k_aux, num_dead)
    inv_norm_s = 1 / sae.W_dec.norm(dim=-1) if sae.cfg.rescale_acts_by_decoder_norm else None
    values_at = (
        sparse_step.values_at if sparse_step is not None and sparse_step.produced(hidden_pre) else None
    )
    recons = _decode_top_dead(
        hidden_pre, dead_neuron_mask, k_aux, sae.W_dec, inv_norm_s, num_dead, values_at, relu=relu
    )
    recons = sae.reshape_fn_out(recons, sae.d_head)
    auxk_loss = (recons - residual).pow(2).sum(dim=-1).mean()
    return sae.cfg.aux_loss_coefficient * scale * auxk_loss


def matryoshka_aux_loss(
    sae, sae_in, sae_out, feature_acts, hidden_pre, dead_neuron_mask, *, relu: bool = False
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
    for width, partial_sae_out in sae._iterable_decode(feature_acts, include_outer_loss=True):
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
    hidden_pre,
    dead_s,
    k_aux: int,
    W_dec_sd,
    inv_norm_s,
    num_dead: int,
    values_at: Callable | None = None,
    *,
    relu: bool = False,
) -> torch.Tensor:
    """sum over the k_aux largest dead pre-activations of each row of value * inv_norm * W_dec row (the
    value ReLU'd with ``relu``); where ``hidden_pre`` carries no gradient, ``values_at(indices)`` gives the
    selected values with theirs."""
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


# ------------------------------------------------------------------------------- sparse TopK step (CPU)
# A TopK / BatchTopK training step in SAELens multiplies dense (batch, d_sae) matrices six times (encoder and
# decoder, forward and both backward products), though all but k entries per row of the activations are 0.
# On a CPU the step below does one dense product (the encoder's forward, needed to choose the top k) and
# touches only the chosen entries after it, as EleutherAI's sparsify does: the decoder is an
# ``embedding_bag`` over the active latents, the encoder's backward sums over them. The choice itself is
# SAELens' own activation module run on the same pre-activations, so the same latents fire; values and
# gradients equal SAELens' up to float summation order. The training loop ran 2.6-3.8x faster than SAELens'
# bare step on 2 cores (`scripts/bench/train.py --only step`, d_in 768, 8 and 32 latents per dimension).


def _sparse_topk_applies(sae) -> bool:
    """True for a plain TopK / BatchTopK training SAE in float32 on a CPU with no hooks attached (the shapes,
    layout and device this step is written and tested for); anything else keeps SAELens' dense step."""
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE
    from sae_lens.saes.topk_sae import TopKTrainingSAE

    cfg = sae.cfg
    return (
        type(sae) in (TopKTrainingSAE, BatchTopKTrainingSAE)
        and sae.W_enc.device.type == "cpu"
        and sae.W_enc.dtype == torch.float32
        and cfg.reshape_activations == "none"
        and not cfg.use_sparse_activations
        and not {"encode_with_hidden_pre", "decode"} & set(vars(sae))  # the caller's own override stays
        and not any(hook._forward_hooks or hook._backward_hooks for hook in sae.hook_dict.values())
    )


class _SparseTopKStep:
    """``encode_with_hidden_pre`` / ``decode`` for one TopK-family training SAE, shadowing SAELens' inside
    :func:`lean_training_forward`. ``encode_with_hidden_pre`` returns SAELens' dense activations and pre-activations
    without gradients (for the firing statistics, BatchTopK's threshold, logging, the AuxK choice) and keeps
    the active entries' values with gradients, which ``decode`` and the AuxK loss use instead."""

    def __init__(self, sae) -> None:
        self.sae = sae
        self._acts: Callable[[], torch.Tensor | None] = lambda: None
        self._hidden_pre: Callable[[], torch.Tensor | None] = lambda: None

    def produced(self, hidden_pre: torch.Tensor) -> bool:
        """Whether ``hidden_pre`` is the pre-activation matrix of this step's last forward."""
        return self._hidden_pre() is hidden_pre

    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SAELens' ``TopKTrainingSAE.encode_with_hidden_pre``, the active values kept sparse for the rest."""
        sae = self.sae
        sae_in = sae.process_sae_in(x)
        if sae_in.ndim != 2 or torch.is_autocast_enabled(sae_in.device.type):
            return type(sae).encode_with_hidden_pre(sae, x)
        norms = sae.W_dec.norm(dim=-1) if sae.cfg.rescale_acts_by_decoder_norm else None
        with torch.no_grad():
            pre = torch.addmm(sae.b_enc, sae_in, sae.W_enc)
            hidden_pre = pre if norms is None else pre * norms
            acts = _activation(sae, hidden_pre)  # SAELens' TopK / BatchTopK choice
        rows, cols = acts.nonzero(as_tuple=True)  # row-major: each row's entries together
        self.sae_in, self.pre, self.norms, self.cols = sae_in, pre, norms, cols
        self.offsets = _segment_starts(rows, acts.shape[0])
        self.values = self.values_at_flat(rows, self.offsets, cols)
        self._acts, self._hidden_pre = weakref.ref(acts), weakref.ref(hidden_pre)
        return acts, hidden_pre

    def values_at_flat(self, rows: torch.Tensor, offsets: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Pre-activations (times the decoder norms when SAELens rescales) at the given entries, with their
        gradients, read from the last forward's product (``offsets``: where each row starts in ``rows``)."""
        sae = self.sae
        values = _SparseLinear.apply(self.sae_in, sae.W_enc, sae.b_enc, rows, offsets, cols, self.pre)
        return values if self.norms is None else values * self.norms[cols]

    def values_at(self, indices: torch.Tensor) -> torch.Tensor:
        """:meth:`values_at_flat` for a (batch, k) matrix of latent indices, one row per sample."""
        n, k = indices.shape
        rows = torch.arange(n, device=indices.device)
        return self.values_at_flat(rows.repeat_interleave(k), rows * k, indices.reshape(-1)).view(n, k)

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """SAELens' ``TopKTrainingSAE.decode``; for this step's activations, a sum of the active latents'
        decoder rows instead of a dense matrix product."""
        sae = self.sae
        if feature_acts is not self._acts():
            return type(sae).decode(sae, feature_acts)
        weights = self.values if self.norms is None else self.values * (1 / self.norms)[self.cols]
        recons = torch.nn.functional.embedding_bag(
            self.cols, sae.W_dec, self.offsets, per_sample_weights=weights, mode="sum"
        )
        sae_out_pre = sae.hook_sae_recons(recons + sae.b_dec)
        sae_out_pre = sae.run_time_activation_norm_fn_out(sae_out_pre)
        return sae.reshape_fn_out(sae_out_pre, sae.d_head)


def _activation(sae, hidden_pre: torch.Tensor) -> torch.Tensor:
    """``sae.activation_fn(hidden_pre)``; SAELens' BatchTopK through :func:`batch_topk` (the same entries)."""
    from sae_lens.saes.batchtopk_sae import BatchTopK

    fn = sae.activation_fn
    return batch_topk(hidden_pre, fn.k) if type(fn) is BatchTopK else fn(hidden_pre)


FAST_BATCH_TOPK_MIN_ENTRIES = 2**20
"""Batches of fewer (rows x d_sae) entries go to SAELens' own ``BatchTopK``, already fast at that size."""
_SAMPLE_STRIDE = 64


def batch_topk(x: torch.Tensor, k: float) -> torch.Tensor:
    """SAELens' ``BatchTopK(k)(x)``: of ``relu(x)``, the ``int(k * rows)`` largest entries of the whole batch
    are kept, every other entry is 0. Same result, chosen without sorting the batch.

    SAELens calls ``torch.topk`` on the flattened batch, which runs on one core and costs about 0.2 s at
    4096 x 2048 on a CPU. Here a random sample gives a floor that the wanted entries lie above (with a
    margin of 5 standard deviations), a parallel comparison finds the few more entries above it, and
    ``topk`` drops the smallest of those: about 4x faster. Where this cannot give SAELens' exact result
    (the floor catches fewer entries than wanted, or is not positive; two entries tie at the cut, where
    ``torch.topk`` decides which is kept; a NaN) SAELens' ``BatchTopK`` runs instead.
    """
    from sae_lens.saes.batchtopk_sae import BatchTopK

    acts = x.relu()
    flat = acts.flatten()
    wanted = int(k * acts.shape[:-1].numel())
    keep = _largest_entries(flat, wanted) if flat.numel() >= FAST_BATCH_TOPK_MIN_ENTRIES else None
    if keep is None:
        return BatchTopK(k)(x)
    return torch.where(keep, flat, 0.0).view(acts.shape)


def _largest_entries(flat: torch.Tensor, wanted: int) -> torch.Tensor | None:
    """Mask of the ``wanted`` largest entries of ``flat``, or None where :func:`batch_topk` defers to SAELens."""
    if not 0 < wanted < flat.numel() or bool(flat.isnan().any()):
        return None
    # A seeded random sample (latents differ in scale, so no strided one) of 1/64 of the entries holds about
    # wanted/64 of the wanted ones; a floor at 5 standard deviations (a relative error of 1/sqrt(count)) more
    # sampled entries than that lets every wanted entry through unless the draw is off by more than that.
    expected = wanted / _SAMPLE_STRIDE
    margin = 5 / expected**0.5
    if margin > 0.5:  # too few sampled for a tight floor: not worth it at this size
        return None
    n = flat.numel()
    g = torch.Generator(device=flat.device).manual_seed(0)
    sample = flat[torch.randint(n, (n // _SAMPLE_STRIDE,), generator=g, device=flat.device)]
    floor = torch.topk(sample, min(int(expected * (1 + margin)), sample.numel()), sorted=False).values.min()
    if not floor > 0:  # fewer positive entries than that: a floor of 0 takes in the whole batch
        return None
    keep = flat >= floor
    candidates = keep.nonzero().squeeze(1)
    extra = candidates.numel() - wanted
    if extra < 0:
        return None
    if extra:
        lowest = torch.topk(flat[candidates], extra + 1, largest=False)  # ascending
        if lowest.values[-1] == lowest.values[-2]:  # the last dropped ties the first kept
            return None
        keep[candidates[lowest.indices[:-1]]] = False
    return keep


def _segment_starts(sorted_ids: torch.Tensor, n: int) -> torch.Tensor:
    """Where each of ``n`` ids starts in ``sorted_ids`` (ascending): ``embedding_bag`` offsets."""
    counts = torch.bincount(sorted_ids, minlength=n)
    return torch.cumsum(counts, 0) - counts


class _SparseLinear(torch.autograd.Function):
    """``(x @ W + b)[rows, cols]``, read from ``pre`` (that product, computed without gradients). The backward
    sums over the given entries only: ``embedding_bag`` over the columns of W for x's gradient and over the
    rows of x for W's. ``rows`` must be ascending, ``row_offsets`` where each row starts in them."""

    @staticmethod
    def forward(ctx, x, W, b, rows, row_offsets, cols, pre):
        ctx.save_for_backward(x, W, rows, row_offsets, cols)
        return pre[rows, cols]

    @staticmethod
    def backward(ctx, grad):
        x, W, rows, row_offsets, cols = ctx.saved_tensors
        embedding_bag = torch.nn.functional.embedding_bag
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = embedding_bag(cols, W.t().contiguous(), row_offsets, per_sample_weights=grad, mode="sum")
        if ctx.needs_input_grad[1]:
            order = torch.argsort(cols, stable=True)
            offsets = _segment_starts(cols[order], W.shape[1])
            grad_Wt = embedding_bag(rows[order], x, offsets, per_sample_weights=grad[order], mode="sum")
            grad_W = grad_Wt.t().contiguous()
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros_like(W[0]).index_add_(0, cols, grad)
        return grad_x, grad_W, grad_b, None, None, None, None


def _probe_sparse_topk_step() -> None:
    seam = "sae_lens TopK encode/decode"
    from sae_lens.saes.batchtopk_sae import BatchTopK, BatchTopKTrainingSAE
    from sae_lens.saes.topk_sae import TopKTrainingSAE

    needles: dict[Callable, tuple[str, ...]] = {
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
    }
    needles[BatchTopK.forward] = (
        "acts = x.relu()",
        "flat_acts = acts.flatten()",
        "num_samples = acts.shape[:-1].numel()",
        "torch.topk(flat_acts, int(self.k * num_samples), dim=-1)",
        "torch.zeros_like(flat_acts)",
        ".scatter(-1, acts_topk_flat.indices, acts_topk_flat.values)",
    )
    _require_sources(seam, needles)
    big = torch.randn(1024, FAST_BATCH_TOPK_MIN_ENTRIES // 1024, generator=torch.Generator().manual_seed(0))
    _require(
        torch.equal(batch_topk(big, 8), BatchTopK(8)(big)),
        seam,
        "batch_topk no longer keeps the entries SAELens' BatchTopK keeps",
    )
    for name in ("encode_with_hidden_pre", "decode"):
        _require(
            getattr(BatchTopKTrainingSAE, name) is getattr(TopKTrainingSAE, name),
            seam,
            f"BatchTopKTrainingSAE now overrides {name}",
        )
    from sae_lens.saes.sae import TrainStepInput

    torch.manual_seed(0)
    sae = TopKTrainingSAE(_topk_cfg())
    x = torch.randn(6, 8)
    step_input = TrainStepInput(
        sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False
    )

    def loss_of(sparse: bool) -> torch.Tensor:
        with lean_training_forward(sae) if sparse else nullcontext():
            return sae.training_forward_pass(step_input).loss

    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    ref, ours = loss_of(False), loss_of(True)
    _require(
        torch.allclose(ref, ours, rtol=1e-5)
        and all(
            torch.allclose(a, b, rtol=1e-4, atol=1e-6)
            for a, b in zip(torch.autograd.grad(ref, params), torch.autograd.grad(ours, params), strict=True)
        ),
        seam,
        "the sparse TopK step no longer equals SAELens' training forward",
    )


def _topk_cfg():
    from sae_lens import TopKTrainingSAEConfig

    return TopKTrainingSAEConfig(d_in=8, d_sae=32, k=2)


def _standard_cfg():
    from sae_lens import StandardTrainingSAEConfig

    return StandardTrainingSAEConfig(d_in=8, d_sae=32)


def _probe_aux_loss() -> None:
    seam = "sae_lens TopK aux loss and standard L1"
    from sae_lens.saes import topk_sae
    from sae_lens.saes.matryoshka_batchtopk_sae import MatryoshkaBatchTopKTrainingSAE

    needles = {
        topk_sae.TopKTrainingSAE.calculate_topk_aux_loss: (
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
        topk_sae.calculate_topk_aux_acts: (
            "torch.where(dead_neuron_mask[None], hidden_pre, -torch.inf)",
            ".topk(k_aux, sorted=False)",
            "scatter_(-1, auxk_topk.indices, auxk_topk.values)",
        ),
        topk_sae.act_times_W_dec: ("feature_acts * (1 / W_dec.norm(dim=-1))", "feature_acts @ W_dec"),
        MatryoshkaBatchTopKTrainingSAE.calculate_matryoshka_aux_loss: (
            "self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)",
            "self._iterable_decode(",
            "feature_acts, include_outer_loss=True",
            "partial_hidden_pre = hidden_pre[:, prev_width:width]",
            "residual = (sae_in - partial_sae_out).detach()",
            "rescale_acts_by_decoder_norm=False",
            "aux_losses.append(scale * auxk_loss)",
            "self.cfg.aux_loss_coefficient * stacked_losses.sum()",
        ),
    }
    from sae_lens.saes.standard_sae import StandardTrainingSAE

    needles[StandardTrainingSAE.calculate_aux_loss] = (
        "weighted_feature_acts = feature_acts * self.W_dec.norm(dim=1)",
        "weighted_feature_acts.norm(p=self.cfg.lp_norm, dim=-1)",
        '(step_input.coefficients["l1"] * sparsity).mean()',
        'return {"l1_loss": l1_loss}',
    )
    _require_sources(seam, needles)
    _require(
        isinstance(StandardTrainingSAE(_standard_cfg()).activation_fn, torch.nn.ReLU),
        seam,
        "StandardTrainingSAE's activation is no longer a ReLU",
    )
    _require(
        "self.calculate_topk_aux_loss(" in inspect.getsource(topk_sae.TopKTrainingSAE.calculate_aux_loss)
        and "self.calculate_matryoshka_aux_loss("
        in inspect.getsource(MatryoshkaBatchTopKTrainingSAE.calculate_aux_loss),
        seam,
        "calculate_aux_loss no longer calls the method lean_training_forward shadows",
    )
    # and the numbers: loss and gradients equal SAELens' own on a tiny SAE with dead latents
    torch.manual_seed(0)
    sae = topk_sae.TopKTrainingSAE(topk_sae.TopKTrainingSAEConfig(d_in=8, d_sae=32, k=2))
    x = torch.randn(6, 8)
    _, hidden_pre = sae.encode_with_hidden_pre(x)
    sae_out = sae.decode(sae.encode(x))
    dead = torch.arange(32) % 3 != 0
    _require(
        _same_loss_and_grads(
            lambda fn: fn(sae, x, sae_out, hidden_pre, dead),
            (type(sae).calculate_topk_aux_loss, topk_aux_loss),
            [sae.W_dec, sae.W_enc],
        ),
        seam,
        "topk_aux_loss no longer equals calculate_topk_aux_loss",
    )
    from sae_lens.saes.sae import TrainStepInput

    std = StandardTrainingSAE(_standard_cfg())
    step_input = TrainStepInput(
        sae_in=x, coefficients={"l1": 2.0}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False
    )
    feature_acts, hidden_pre = std.encode_with_hidden_pre(x)
    _require(
        _same_loss_and_grads(
            lambda fn: fn(std, step_input, feature_acts, hidden_pre, x)["l1_loss"],
            (StandardTrainingSAE.calculate_aux_loss, standard_l1_loss),
            [std.W_dec, std.W_enc],
        ),
        seam,
        "standard_l1_loss no longer equals StandardTrainingSAE.calculate_aux_loss",
    )


def _same_loss_and_grads(loss_of: Callable, fns: tuple[Callable, Callable], params: list) -> bool:
    """``loss_of(fn)`` for SAELens' ``fns[0]`` and ours ``fns[1]``: positive, equal, with equal gradients."""
    (ref, ref_grads), (ours, our_grads) = (
        (loss, torch.autograd.grad(loss, params, retain_graph=True)) for loss in map(loss_of, fns)
    )
    return (
        bool(ref > 0)
        and torch.allclose(ref, ours, rtol=1e-5)
        and all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(ref_grads, our_grads, strict=True))
    )


@contextmanager
def quiet_norm_estimate(progress: bool) -> Iterator[None]:
    """Hide the bars of SAELens' ``ActivationScaler.estimate_*`` inside the block unless ``progress``.

    That bar takes no ``disable`` argument; with ``progress=False`` every bar must stay hidden, so the
    module's ``tqdm`` name is swapped for a disabled one while the estimate runs, and restored after.
    """
    from sae_lens.training import activation_scaler

    if progress:
        yield
        return
    original = activation_scaler.tqdm
    activation_scaler.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        activation_scaler.tqdm = original


def _probe_norm_estimate_bar() -> None:
    seam = "sae_lens activation_scaler.tqdm"
    from sae_lens.training import activation_scaler

    _require(hasattr(activation_scaler, "tqdm"), seam, "the module no longer names tqdm")
    src = inspect.getsource(activation_scaler)
    _require("tqdm(" in src, seam, "the norm estimate no longer calls the module's tqdm")


SEAMS: dict[str, Callable[[], None]] = {
    "sae_lens _SAEWrapper": _probe_wrapper_contract,
    "sae_lens _SAEWrapper error term": _probe_wrapper_error_is_constant,
    "sae_lens HookedSAETransformer methods": _probe_borrowed_methods,
    "sae_lens get_deep_attr/set_deep_attr": _probe_deep_attr,
    "sae_lens _disable_hooks": _probe_disable_hooks,
    "transformer_lens HookedRootModule": _probe_root_module,
    "open_clip _build_vision_tower": _probe_open_clip_visual,
    "sae_lens SAETrainer._train_step": _probe_trainer_step,
    "sae_lens activation_scaler.tqdm": _probe_norm_estimate_bar,
    "sae_lens TopK aux loss and standard L1": _probe_aux_loss,
    "sae_lens TopK encode/decode": _probe_sparse_topk_step,
}
"""Seam name -> probe that raises :class:`CompatError` naming the seam when an upgrade changed it."""

BORROWED_METHODS = (
    "add_sae",
    "acts_to_saes",
    "_reset_sae",
    "reset_saes",
    "saes",
    "run_with_saes",
    "run_with_cache_with_saes",
    "run_with_hooks_with_saes",
)
"""``HookedSAETransformer`` members ``HookedSAEViT`` uses unchanged."""


def borrowed(name: str):
    """A ``HookedSAETransformer`` member to reuse unchanged on a host that keeps its bookkeeping dicts."""
    return getattr(HookedSAETransformer, name)


__all__ = [
    "ActivationCache",
    "BORROWED_METHODS",
    "CompatError",
    "HookPoint",
    "HookedRootModule",
    "HookedSAETransformer",
    "SAE",
    "SAEWrapper",
    "SEAMS",
    "borrowed",
    "build_open_clip_visual",
    "disable_sae_hooks",
    "get_deep_attr",
    "lean_training_forward",
    "matryoshka_aux_loss",
    "set_deep_attr",
    "standard_l1_loss",
    "topk_aux_loss",
    "trainer_step",
    "use_fused_adam",
]
