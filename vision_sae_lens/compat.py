"""The fence: every private or deep SAELens / TransformerLens name the package uses, and nothing else.

A *seam* is a name from inside those libraries (a private one such as ``_SAEWrapper``, a module path below
the top level such as ``sae_lens.training.sae_trainer``, or code of theirs the package mirrors). Each is
imported or wrapped here, once, and :data:`SEAMS` holds one probe per seam: a check that the library still
offers what the package relies on, which raises :class:`~vision_sae_lens.errors.CompatError` naming the
seam. ``tests/backbones/test_compat_seams.py`` runs every probe, so an upgrade that moves or changes a
seam fails loudly with its name instead of silently changing behaviour; ``tests/test_compat_fence.py``
fails on any deep or private import of the two libraries elsewhere in the package.

The seams, by the stage that uses them:

- splicing (``HookedSAEViT``): ``HookedSAETransformer``'s methods, ``_SAEWrapper``, ``_disable_hooks``,
  ``get_deep_attr`` / ``set_deep_attr``; TransformerLens' ``HookedRootModule``, ``HookPoint``,
  ``ActivationCache``; open_clip's image tower alone.
- training (``train/``): the trainer config, step input / output, training-class registry, prefetcher,
  lr scheduler, BatchTopK activation, explained-variance calculator, file names; the SAELens code the
  package's CPU training step mirrors (``SAETrainer._train_step``, the AuxK helpers, Matryoshka's nested
  decodes); the norm-estimate progress bar; the trainer-state loader (``SAETrainer.load_trainer_state``
  with ``torch.load(weights_only=True)``).
- Hub (``hub/wiring.py``): the pretrained-SAE directory and the named-loader tables.

The fast training path itself is the package's own code, in ``train/`` (SAELens-style subclasses); its
numeric equivalence to SAELens is checked by ``vision_sae_lens.train.mirrors``. This module is longer than
the house's ~400 lines on purpose: it is the whole fence, each seam beside its probe, so an upgrade of
SAELens or TransformerLens is reviewed in this one file.
"""

from __future__ import annotations

import functools
import inspect
import pickle
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

# SynthSAEBench (generator and metrics): public, but below SAELens' top level; the benchmark uses it as ``synthetic.X``
from sae_lens import SAE, MatryoshkaBatchTopKTrainingSAE, SAETrainer, synthetic
from sae_lens.analysis.hooked_sae_transformer import (
    HookedSAETransformer,
    _SAEWrapper,
    get_deep_attr,
    set_deep_attr,
)
from sae_lens.config import SAETrainerConfig
from sae_lens.constants import ACTIVATION_SCALER_CFG_FILENAME, SPARSITY_FILENAME, TRAINER_STATE_FILENAME
from sae_lens.evals import ExplainedVarianceCalculator
from sae_lens.loading import pretrained_sae_loaders, pretrained_saes_directory
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, get_sae_training_class
from sae_lens.saes import topk_sae
from sae_lens.saes.batchtopk_sae import BatchTopK
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput, _disable_hooks
from sae_lens.training import activation_scaler
from sae_lens.training.optim import get_lr_scheduler
from sae_lens.training.prefetch import PrefetchingIterator

# TransformerLens 3 moved HookedRootModule out of hook_points (importing it from there warns and is
# gone in 4.0); the dedicated module is the supported path.
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule
from transformer_lens.utils import Slice  # what run_with_cache's pos_slice accepts

from vision_sae_lens.errors import CheckpointCorruptError, CompatError, UnsafeCheckpointError


def require(ok: bool, seam: str, what: str) -> None:
    """Raise :class:`CompatError` naming ``seam`` and ``what`` changed unless ``ok`` (the probes' check)."""
    if not ok:
        raise CompatError(
            f"compatibility seam {seam!r} changed: {what}. This vision_sae_lens release supports "
            "sae-lens 6.54 and transformer-lens 3.x; pin those or update vision_sae_lens/compat.py."
        )


def require_sources(seam: str, needles: dict[Callable, tuple[str, ...]]) -> None:
    """Each function's source still contains each of its needles (the lines the package mirrors)."""
    for fn, parts in needles.items():
        src = inspect.getsource(fn)
        for needle in parts:
            require(needle in src, seam, f"{fn.__qualname__} no longer does {needle!r} (update the mirror)")


def _params(fn: Callable) -> list[str]:
    return list(inspect.signature(fn).parameters)


# =============================================================================== splicing (backbones/)
SAEWrapper = _SAEWrapper
"""SAELens' per-site SAE wrapper (private ``_SAEWrapper``): hooks copied from the SAE, ``hook_sae_error``,
``hook_sae_output``, ``use_error_term``, ``exclude_special_tokens`` and a per-position bypass mask."""

disable_sae_hooks = _disable_hooks
"""Context manager that runs an SAE with its HookPoints bypassed (SAELens' ``_disable_hooks``)."""

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


def _probe_wrapper_contract() -> None:
    seam = "sae_lens _SAEWrapper"
    require(
        _params(_SAEWrapper.__init__)[:4] == ["self", "sae", "use_error_term", "exclude_special_tokens"],
        seam,
        "constructor is no longer (sae, use_error_term, exclude_special_tokens)",
    )
    for attr in ("set_token_mask", "capture_input", "sae", "forward"):
        require(hasattr(_SAEWrapper, attr), seam, f"has no {attr}")
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=4, d_sae=8))
    wrapper = _SAEWrapper(sae, use_error_term=True, exclude_special_tokens=[0])
    for name in ("hook_sae_error", "hook_sae_output", "hook_sae_acts_post", "hook_sae_input"):
        require(isinstance(getattr(wrapper, name, None), HookPoint), seam, f"wrapper has no HookPoint {name}")
    require(wrapper.sae is sae and wrapper.use_error_term is True, seam, "sae / use_error_term not kept")
    require(wrapper.exclude_special_tokens == [0], seam, "exclude_special_tokens not kept")
    require(getattr(wrapper, "_token_mask", "missing") is None, seam, "no _token_mask attribute")
    mask = torch.tensor([[True, False]])
    wrapper.set_token_mask(mask)
    require(wrapper._token_mask is mask, seam, "set_token_mask does not set _token_mask")
    x = torch.randn(1, 2, 4)
    out = wrapper(x)
    require(torch.equal(out[:, 0], x[:, 0]), seam, "a masked position no longer bypasses the SAE")


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
    require(
        torch.allclose(grad_x, expected, atol=1e-6),
        seam,
        "gradients no longer reach the input only through the reconstruction (error term not constant)",
    )


def _probe_borrowed_methods() -> None:
    seam = "sae_lens HookedSAETransformer methods"
    for name in BORROWED_METHODS:
        require(hasattr(HookedSAETransformer, name), seam, f"HookedSAETransformer has no {name}")
    src = inspect.getsource(HookedSAETransformer.saes)
    require(
        "self.add_sae(" in src and "self._reset_sae(" in src,
        seam,
        "saes() no longer calls add_sae/_reset_sae",
    )
    require(
        "exclude_special_tokens" in _params(HookedSAETransformer.add_sae),
        seam,
        "add_sae lost exclude_special_tokens",
    )
    src = inspect.getsource(HookedSAETransformer._reset_sae)
    require(
        "_transcoder_output_hooks" in src and "_acts_to_saes" in src, seam, "_reset_sae bookkeeping changed"
    )


def _probe_deep_attr() -> None:
    seam = "sae_lens get_deep_attr/set_deep_attr"
    root = torch.nn.Module()
    root.blocks = torch.nn.ModuleList([torch.nn.Module()])
    root.blocks[0].hook = HookPoint()
    new = HookPoint()
    set_deep_attr(root, "blocks.0.hook", new)
    require(get_deep_attr(root, "blocks.0.hook") is new, seam, "dotted paths with indices no longer resolve")


def _probe_disable_hooks() -> None:
    seam = "sae_lens _disable_hooks"
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=4, d_sae=8))
    calls: list[int] = []
    sae.hook_sae_acts_post.add_hook(lambda t, hook: calls.append(1))
    with _disable_hooks(sae):
        sae(torch.randn(2, 4))
    sae.reset_hooks()
    require(not calls, seam, "hooks still fire inside _disable_hooks")


def _probe_root_module() -> None:
    seam = "transformer_lens HookedRootModule"
    for name in ("run_with_cache", "run_with_hooks", "hooks", "add_hook", "add_caching_hooks", "setup"):
        require(hasattr(HookedRootModule, name), seam, f"has no {name}")
    require(
        "remove_batch_dim" in _params(HookedRootModule.run_with_cache),
        seam,
        "run_with_cache lost remove_batch_dim",
    )
    require("has_batch_dim" in _params(ActivationCache.__init__), seam, "ActivationCache lost has_batch_dim")
    root = type("_Probe", (HookedRootModule,), {})()  # a subclass, as HookedSAEViT is (the bare class warns)
    root.hook_x = HookPoint()
    root.setup()
    require(
        getattr(root, "hook_dict", {}).get("hook_x") is root.hook_x, seam, "setup() no longer fills hook_dict"
    )
    require(hasattr(root, "mod_dict"), seam, "setup() no longer fills mod_dict")


# ====================================================================================== open_clip
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
    require(callable(fn), seam, "open_clip.model has no _build_vision_tower")
    assert fn is not None
    require(
        _params(fn)[:4] == ["embed_dim", "vision_cfg", "quick_gelu", "cast_dtype"],
        seam,
        "signature is no longer (embed_dim, vision_cfg, quick_gelu, cast_dtype)",
    )
    src = inspect.getsource(oc_model.CLIP.__init__)
    first = src.find("_build_vision_tower(")
    require(
        0 <= first < src.find("_build_text_tower("),
        seam,
        "CLIP no longer builds its image tower before its text tower (random init would differ)",
    )


# ================================================================================= training (train/)
# Deep names of SAELens' training API (imported at the top: not exported at SAELens' top level), each with
# its probe: SAETrainerConfig, TrainStepInput / TrainStepOutput, SAE_TRAINING_CLASS_REGISTRY and
# get_sae_training_class, PrefetchingIterator, get_lr_scheduler, BatchTopK, ExplainedVarianceCalculator.


def _probe_trainer_config() -> None:
    seam = "sae_lens SAETrainerConfig"
    names = {f.name for f in fields(SAETrainerConfig)}
    used = {
        "total_training_samples", "train_batch_size_samples", "lr", "lr_end", "lr_scheduler_name",
        "lr_warm_up_steps", "lr_decay_steps", "n_restart_cycles", "adam_beta1", "adam_beta2", "device",
        "autocast", "dead_feature_window", "feature_sampling_window", "n_checkpoints", "checkpoint_path",
        "save_final_checkpoint", "logger", "n_batches_for_norm_estimate",
    }  # fmt: skip
    require(used <= names, seam, f"has no field {sorted(used - names)}")
    require(hasattr(SAETrainerConfig, "total_training_steps"), seam, "has no total_training_steps")


def _probe_step_io() -> None:
    seam = "sae_lens TrainStepInput/TrainStepOutput"
    step_in = {"sae_in", "coefficients", "dead_neuron_mask", "n_training_steps", "is_logging_step"}
    step_out = {"sae_in", "sae_out", "feature_acts", "hidden_pre", "loss", "losses", "metrics"}
    for cls, used in ((TrainStepInput, step_in), (TrainStepOutput, step_out)):
        names = {f.name for f in fields(cls)}
        require(used <= names, seam, f"{cls.__name__} has no field {sorted(used - names)}")


def _probe_training_registry() -> None:
    seam = "sae_lens training-class registry"
    from sae_lens import TrainingSAE, TrainingSAEConfig

    for arch in ("standard", "topk", "batchtopk", "matryoshka_batchtopk", "jumprelu", "gated"):
        entry = SAE_TRAINING_CLASS_REGISTRY.get(arch)
        require(entry is not None, seam, f"no training class registered as {arch!r}")
        sae_cls, cfg_cls = entry
        require(
            issubclass(sae_cls, TrainingSAE) and issubclass(cfg_cls, TrainingSAEConfig),
            seam,
            f"{arch!r} no longer maps to a (TrainingSAE, TrainingSAEConfig) pair",
        )
        require(cfg_cls.architecture() == arch, seam, f"{cfg_cls.__name__}.architecture() is not {arch!r}")
        require(get_sae_training_class(arch)[0] is sae_cls, seam, "get_sae_training_class disagrees")


def _probe_prefetch() -> None:
    seam = "sae_lens PrefetchingIterator"
    require(list(PrefetchingIterator(iter(range(10)), prefetch=3)) == list(range(10)), seam, "order changed")

    class SourceFailed(Exception):
        pass

    def failing() -> Iterator[int]:
        yield 1
        raise SourceFailed

    try:
        list(PrefetchingIterator(failing(), prefetch=2))
        raised = False
    except SourceFailed:
        raised = True
    require(raised, seam, "a source's exception is no longer re-raised to the consumer")
    ahead = PrefetchingIterator(iter(range(100)), prefetch=2)
    next(ahead)
    ahead.close()
    ahead._thread.join(timeout=5)
    require(not ahead._thread.is_alive(), seam, "close() no longer stops the producer thread")


def _probe_lr_scheduler() -> None:
    seam = "sae_lens get_lr_scheduler"
    require(
        _params(get_lr_scheduler)[:1] == ["scheduler_name"]
        and {"lr", "optimizer", "warm_up_steps", "decay_steps", "training_steps", "lr_end", "num_cycles"}
        <= set(_params(get_lr_scheduler)),
        seam,
        "its arguments changed",
    )
    require_sources(
        seam,
        {
            SAETrainer.__init__: (
                "Adam(",
                "get_lr_scheduler(",
                "num_cycles=cfg.n_restart_cycles",
                "lr_end=cfg.lr_end",
            )
        },
    )


def _probe_batch_topk() -> None:
    seam = "sae_lens BatchTopK"
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

    sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=4, d_sae=8, k=2))
    require(type(sae.activation_fn) is BatchTopK, seam, "BatchTopKTrainingSAE's activation is no longer it")
    require(sae.activation_fn.k == 2, seam, "it no longer keeps k")
    require_sources(
        seam,
        {
            BatchTopK.forward: (
                "acts = x.relu()",
                "flat_acts = acts.flatten()",
                "num_samples = acts.shape[:-1].numel()",
                "torch.topk(flat_acts, int(self.k * num_samples), dim=-1)",
                "torch.zeros_like(flat_acts)",
                ".scatter(-1, acts_topk_flat.indices, acts_topk_flat.values)",
            )
        },
    )


def _probe_explained_variance() -> None:
    seam = "sae_lens ExplainedVarianceCalculator"
    g = torch.Generator().manual_seed(0)
    x, x_hat = torch.randn(50, 6, generator=g) + 3, torch.randn(50, 6, generator=g)
    ev = ExplainedVarianceCalculator()
    ev.add_batch(x_hat[:20], x[:20])
    ev.add_batch(x_hat[20:], x[20:])
    expected = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    require(abs(ev.compute() - float(expected)) < 1e-4, seam, "compute() is no longer 1 - SSE / SST")
    require(
        torch.allclose(ev.sum_x.float(), x.sum(0), atol=1e-4)
        and abs(ev.sum_squared_norm - float(x.pow(2).sum())) < 1e-2,
        seam,
        "sum_x / sum_squared_norm no longer hold the column sums and the sum of squares",
    )


# ---- the SAELens code FastSAETrainer.step (train/fast_trainer.py) mirrors
def is_logging_step(trainer: SAETrainer) -> bool:
    """Whether ``trainer``'s next step logs to W&B (SAELens' private ``SAETrainer._is_logging_step``)."""
    return trainer._is_logging_step()


def _probe_trainer_step() -> None:
    seam = "sae_lens SAETrainer._train_step"
    require_sources(
        seam,
        {
            SAETrainer._train_step: (
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
            ),
            SAETrainer.step: ("self.activation_scaler(batch)", "self.n_training_samples += batch.shape[0]"),
            SAETrainer._is_logging_step: ("self.cfg.logger.log_to_wandb",),
        },
    )


# ---- the SAELens code the lean losses (train/lean_losses.py) mirror, below its public methods
def matryoshka_partial_decodes(
    sae: MatryoshkaBatchTopKTrainingSAE, feature_acts: torch.Tensor, *, include_outer_loss: bool
) -> Iterator[tuple[int, torch.Tensor]]:
    """(width, reconstruction from the first ``width`` latents) for each nested level of a Matryoshka SAE
    (SAELens' private ``MatryoshkaBatchTopKTrainingSAE._iterable_decode``)."""
    return sae._iterable_decode(feature_acts, include_outer_loss=include_outer_loss)


def _probe_matryoshka_decodes() -> None:
    seam = "sae_lens MatryoshkaBatchTopKTrainingSAE._iterable_decode"
    from sae_lens import MatryoshkaBatchTopKTrainingSAEConfig

    cfg = MatryoshkaBatchTopKTrainingSAEConfig(d_in=4, d_sae=8, k=2, matryoshka_widths=[2, 8])
    sae = MatryoshkaBatchTopKTrainingSAE(cfg)
    acts = torch.rand(3, 8)
    levels = list(matryoshka_partial_decodes(sae, acts, include_outer_loss=True))
    require([w for w, _ in levels] == [2, 8], seam, "no longer yields each level's width")
    scaled = acts / sae.W_dec.norm(dim=-1) if cfg.rescale_acts_by_decoder_norm else acts
    inner = scaled[:, :2] @ sae.W_dec[:2] + sae.b_dec
    require(torch.allclose(levels[0][1], inner, atol=1e-5), seam, "a level is no longer its latents' decode")
    require(
        len(list(matryoshka_partial_decodes(sae, acts, include_outer_loss=False))) == 1,
        seam,
        "include_outer_loss=False no longer drops the outer level",
    )
    require_sources(
        seam, {MatryoshkaBatchTopKTrainingSAE.calculate_matryoshka_aux_loss: ("self._iterable_decode(",)}
    )


def _probe_topk_aux_helpers() -> None:
    seam = "sae_lens topk_sae AuxK helpers"
    require_sources(
        seam,
        {
            topk_sae.calculate_topk_aux_acts: (
                "torch.where(dead_neuron_mask[None], hidden_pre, -torch.inf)",
                ".topk(k_aux, sorted=False)",
                "scatter_(-1, auxk_topk.indices, auxk_topk.values)",
            ),
            topk_sae.act_times_W_dec: ("feature_acts * (1 / W_dec.norm(dim=-1))", "feature_acts @ W_dec"),
        },
    )


# ---- the norm estimate's progress bar
@contextmanager
def quiet_norm_estimate(progress: bool) -> Iterator[None]:
    """Hide the bars of SAELens' ``ActivationScaler.estimate_*`` inside the block unless ``progress``.

    That bar takes no ``disable`` argument; with ``progress=False`` every bar must stay hidden, so the
    module's ``tqdm`` name is swapped for a disabled one while the estimate runs, and restored after.
    """
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
    require(hasattr(activation_scaler, "tqdm"), seam, "the module no longer names tqdm")
    src = inspect.getsource(activation_scaler)
    require("tqdm(" in src, seam, "the norm estimate no longer calls the module's tqdm")


# ---- the trainer-state loader
TRAINER_COUNTERS = (
    "n_training_samples",
    "n_training_steps",
    "act_freq_scores",
    "n_forward_passes_since_fired",
    "n_frac_active_samples",
    "started_fine_tuning",
)
"""The ``SAETrainer`` attributes its trainer state holds besides the optimizer and the schedulers."""


def load_trainer_state(trainer: SAETrainer, state_dir: Path) -> None:
    """``trainer.load_trainer_state(state_dir)`` (SAELens' own, which unpickles without restriction) with
    ``torch.load(..., weights_only=True)``: a file that needs more than tensors and plain containers is
    refused (:class:`UnsafeCheckpointError`), a missing or incomplete one is a :class:`CheckpointCorruptError`."""
    path = state_dir / TRAINER_STATE_FILENAME
    try:
        state = torch.load(path, map_location=trainer.cfg.device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{path} holds objects other than tensors and plain containers; refusing to unpickle it (it could "
            "run code). Only resume from checkpoints this package wrote."
        ) from exc
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointCorruptError(f"cannot read trainer state {path}: {exc}") from exc
    try:
        trainer.activation_scaler.load(state_dir / ACTIVATION_SCALER_CFG_FILENAME)
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.lr_scheduler.load_state_dict(state["lr_scheduler"])
        for name in TRAINER_COUNTERS:
            setattr(trainer, name, state[name])
        for name, sched_state in state["coefficient_schedulers"].items():
            trainer.coefficient_schedulers[name].load_state_dict(sched_state)
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise CheckpointCorruptError(
            f"trainer state in {state_dir} is incomplete or invalid: {exc!r}"
        ) from exc


def _probe_trainer_state() -> None:
    seam = "sae_lens SAETrainer trainer state"
    require_sources(
        seam,
        {
            SAETrainer.load_trainer_state: (
                "ACTIVATION_SCALER_CFG_FILENAME",
                "TRAINER_STATE_FILENAME",
                'self.optimizer.load_state_dict(state_dict["optimizer"])',
                'self.lr_scheduler.load_state_dict(state_dict["lr_scheduler"])',
                'state_dict["coefficient_schedulers"].items()',
                *(f'self.{name} = state_dict["{name}"]' for name in TRAINER_COUNTERS),
            )
        },
    )
    # and what SAELens saves is exactly what load_trainer_state restores: no field is left behind
    saved = inspect.getsource(SAETrainer.save_trainer_state)
    keys = {"optimizer", "lr_scheduler", "coefficient_schedulers", *TRAINER_COUNTERS}
    require(
        all(f'"{key}":' in saved for key in keys) and saved.count('": ') == len(keys),
        seam,
        "save_trainer_state saves other fields than load_trainer_state restores",
    )
    require(SPARSITY_FILENAME == "sparsity.safetensors", seam, "the sparsity file has another name")


# =========================================================================================== Hub (hub/)
_WRAPPED_MARK = "_vision_sae_lens_wrapped"


def add_to_pretrained_directory(add: Callable[[dict[str, Any]], None]) -> None:
    """Make SAELens' ``get_pretrained_saes_directory()`` (release -> repo, ids -> folders, conversion name)
    run ``add(directory)`` on the directory it returns, also after its ``cache_clear()``. The wrapper replaces
    the getter in every loaded ``sae_lens`` module that holds it (they import it by name); idempotent."""
    original = pretrained_saes_directory.get_pretrained_saes_directory
    if getattr(original, _WRAPPED_MARK, False):
        return

    @functools.wraps(original)
    def get_directory_with_additions() -> dict[str, Any]:
        directory = original()
        add(directory)
        return directory

    get_directory_with_additions.cache_clear = original.cache_clear  # type: ignore[attr-defined]
    setattr(get_directory_with_additions, _WRAPPED_MARK, True)
    for name, module in list(sys.modules.items()):
        if name == "sae_lens" or name.startswith("sae_lens."):
            for attr, value in list(vars(module).items()):
                if value is original:
                    setattr(module, attr, get_directory_with_additions)


def named_releases() -> dict[str, Any]:
    """SAELens' directory of named releases, as ``SAE.from_pretrained`` reads it (with any additions)."""
    return pretrained_saes_directory.get_pretrained_saes_directory()


def pretrained_sae_lookup(**fields_: Any) -> Any:
    """One release's entry in that directory (SAELens' ``PretrainedSAELookup``)."""
    return pretrained_saes_directory.PretrainedSAELookup(**fields_)


def register_pretrained_loader(
    name: str, loader: Callable[..., Any], config_getter: Callable[..., Any]
) -> None:
    """Put a conversion (weights ``loader`` and ``config_getter``) into SAELens' named-loader tables under
    ``name``, the ``conversion_func`` a directory entry names; an entry already there is kept."""
    pretrained_sae_loaders.NAMED_PRETRAINED_SAE_LOADERS.setdefault(name, loader)
    pretrained_sae_loaders.NAMED_PRETRAINED_SAE_CONFIG_GETTERS.setdefault(name, config_getter)


def _probe_pretrained_directory() -> None:
    seam = "sae_lens pretrained SAE directory"
    from sae_lens.saes import sae as sae_module

    directory_module, loaders = pretrained_saes_directory, pretrained_sae_loaders
    getter = directory_module.get_pretrained_saes_directory
    require(callable(getattr(getter, "cache_clear", None)), seam, "the getter is no longer a cached function")
    for module in (directory_module, loaders, sae_module):
        require(
            "get_pretrained_saes_directory" in vars(module),
            seam,
            f"{module.__name__} no longer reads the getter through its own module name",
        )
    used = {
        "release", "repo_id", "model", "conversion_func", "saes_map", "expected_var_explained", "expected_l0",
        "neuronpedia_id", "norm_scaling_factor", "config_overrides",
    }  # fmt: skip
    names = {f.name for f in fields(directory_module.PretrainedSAELookup)}
    require(used == names, seam, f"PretrainedSAELookup's fields are now {sorted(names)}")


def _probe_named_loaders() -> None:
    seam = "sae_lens named-loader tables"
    loaders = pretrained_sae_loaders
    for table in ("NAMED_PRETRAINED_SAE_LOADERS", "NAMED_PRETRAINED_SAE_CONFIG_GETTERS"):
        require(isinstance(getattr(loaders, table, None), dict), seam, f"{table} is no longer a dict")
    require_sources(
        seam,
        {
            loaders.get_conversion_loader_name: ("conversion_func",),
            SAE.from_pretrained_with_cfg_and_sparsity: ("NAMED_PRETRAINED_SAE_LOADERS[",),
        },
    )


SYNTHETIC_NAMES = (
    "ClassificationMetricsCalculator",
    "DeadLatentsCalculator",
    "FoldedNormalMagnitudeConfig",
    "HierarchyConfig",
    "L0Calculator",
    "LinearMagnitudeConfig",
    "LowRankCorrelationConfig",
    "OrthogonalizationConfig",
    "ShrinkageCalculator",
    "SyntheticDataEvalResult",
    "SyntheticModel",
    "SyntheticModelConfig",
    "ZipfianFiringProbabilityConfig",
    "eval_sae_on_synthetic_data",
    "feature_uniqueness",
    "mean_correlation_coefficient",
)
"""The names of ``sae_lens.synthetic`` the benchmark uses (its SynthSAEBench metrics equal SAELens' own)."""


def _probe_synthetic() -> None:
    seam = "sae_lens.synthetic (SynthSAEBench)"
    missing = [name for name in SYNTHETIC_NAMES if not hasattr(synthetic, name)]
    require(not missing, seam, f"sae_lens.synthetic no longer has {missing}")
    require(
        {"sae", "feature_dict", "activations_generator"}
        <= set(_params(synthetic.eval_sae_on_synthetic_data)),
        seam,
        "eval_sae_on_synthetic_data changed its parameters",
    )


# ============================================================================================== SEAMS
SEAMS: dict[str, Callable[[], None]] = {
    "sae_lens _SAEWrapper": _probe_wrapper_contract,
    "sae_lens _SAEWrapper error term": _probe_wrapper_error_is_constant,
    "sae_lens HookedSAETransformer methods": _probe_borrowed_methods,
    "sae_lens get_deep_attr/set_deep_attr": _probe_deep_attr,
    "sae_lens _disable_hooks": _probe_disable_hooks,
    "transformer_lens HookedRootModule": _probe_root_module,
    "open_clip _build_vision_tower": _probe_open_clip_visual,
    "sae_lens SAETrainerConfig": _probe_trainer_config,
    "sae_lens TrainStepInput/TrainStepOutput": _probe_step_io,
    "sae_lens training-class registry": _probe_training_registry,
    "sae_lens PrefetchingIterator": _probe_prefetch,
    "sae_lens get_lr_scheduler": _probe_lr_scheduler,
    "sae_lens BatchTopK": _probe_batch_topk,
    "sae_lens ExplainedVarianceCalculator": _probe_explained_variance,
    "sae_lens SAETrainer._train_step": _probe_trainer_step,
    "sae_lens MatryoshkaBatchTopKTrainingSAE._iterable_decode": _probe_matryoshka_decodes,
    "sae_lens topk_sae AuxK helpers": _probe_topk_aux_helpers,
    "sae_lens activation_scaler.tqdm": _probe_norm_estimate_bar,
    "sae_lens SAETrainer trainer state": _probe_trainer_state,
    "sae_lens pretrained SAE directory": _probe_pretrained_directory,
    "sae_lens named-loader tables": _probe_named_loaders,
    "sae_lens.synthetic (SynthSAEBench)": _probe_synthetic,
}
"""Seam name -> probe that raises :class:`CompatError` naming the seam when an upgrade changed it."""

__all__ = [
    "ActivationCache",
    "BORROWED_METHODS",
    "BatchTopK",
    "CompatError",
    "ExplainedVarianceCalculator",
    "HookPoint",
    "HookedRootModule",
    "HookedSAETransformer",
    "PrefetchingIterator",
    "SAE",
    "SAETrainerConfig",
    "SAEWrapper",
    "SAE_TRAINING_CLASS_REGISTRY",
    "SEAMS",
    "Slice",
    "SPARSITY_FILENAME",
    "TRAINER_COUNTERS",
    "TrainStepInput",
    "TrainStepOutput",
    "add_to_pretrained_directory",
    "borrowed",
    "build_open_clip_visual",
    "disable_sae_hooks",
    "get_deep_attr",
    "get_lr_scheduler",
    "get_sae_training_class",
    "is_logging_step",
    "load_trainer_state",
    "matryoshka_partial_decodes",
    "pretrained_sae_lookup",
    "named_releases",
    "quiet_norm_estimate",
    "register_pretrained_loader",
    "require",
    "require_sources",
    "set_deep_attr",
    "synthetic",
]
