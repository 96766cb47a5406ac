"""What one SAE training run needs: :class:`TrainConfig`, plus SAELens architecture look-ups.

A ``TrainConfig`` names the data (a store and a site), the SAE (one of SAELens' own
``*TrainingSAEConfig`` objects, any registered training architecture) and every field of
SAELens' ``SAETrainerConfig`` explicitly. Several configs over the same store, site and
batch stream train together in one data pass (see :mod:`vision_sae_lens.train.sweep`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens import TrainingSAEConfig

from vision_sae_lens.compat import SAE_TRAINING_CLASS_REGISTRY
from vision_sae_lens.errors import ConfigError, close_matches
from vision_sae_lens.layout import check_token_selection

LR_SCHEDULERS = ("constant", "cosineannealing", "cosineannealingwarmrestarts")
RUNTIME_NORMALISATIONS = ("layer_norm", "constant_norm_rescale")
"""SAELens normalisations applied per row inside the SAE at run time (not folded into the weights)."""
ARCHITECTURE_ALIASES = {"l1": "standard", "relu": "standard", "matryoshka": "matryoshka_batchtopk"}


@dataclass(frozen=True)
class TrainConfig:
    """One SAE to train on one site of an activation store, through ``sae_lens.SAETrainer``."""

    store: Any
    """Activation store directory (or an opened ``ActivationStore``)."""
    site: str
    """Hook name to train on, e.g. ``blocks.10.hook_resid_post``; must be one of the store's sites."""
    sae: TrainingSAEConfig
    """SAELens training config, e.g. ``TopKTrainingSAEConfig(d_in=768, d_sae=24576, k=64)``."""
    training_tokens: int
    """Activation rows to train on (rounded down to whole batches); the store is re-read in new
    shuffled epochs when it holds fewer rows."""
    batch_size: int | None = None
    """Rows per optimizer step (SAELens ``train_batch_size_samples``); None: ``training_tokens / 1000``
    rounded down to a power of two, within 256..4096, so short runs still take ~1000 steps."""
    lr: float | None = None
    """Adam learning rate; None: ``2e-4 / sqrt(d_sae / 2**14)`` (the d_sae scaling of OpenAI's TopK
    paper, as in dictionary_learning and sparsify)."""
    lr_end: float | None = None
    """Final learning rate of the cosine schedules; None means ``lr / 10`` (SAELens' runner default)."""
    lr_scheduler: str = "constant"
    """One of ``constant`` (after the warm-up; measured better than cosine at short budgets, as
    dictionary_learning), ``cosineannealing``, ``cosineannealingwarmrestarts``."""
    lr_warm_up_steps: int | None = None
    """Linear learning-rate warm-up steps; None: 5% of the steps, at most 1000."""
    lr_decay_steps: int = 0
    """Linear decay-to-zero steps at the end of training."""
    n_restart_cycles: int = 1
    """Cycles of ``cosineannealingwarmrestarts``."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.999
    """Adam beta2."""
    dead_feature_window: int | None = None
    """Steps without firing after which a latent counts as dead for training (TopK's AuxK loss
    revives those); None: 1% of the steps, at most 1000 (measured: fewer dead latents, same NMSE,
    than a tenth of the steps; see docs/training.md)."""
    auxk_relu: bool = True
    """TopK-family AuxK loss on the dead latents' ReLU'd pre-activations, as OpenAI's reference (Gao et
    al. 2024), dictionary_learning and sparsify compute it. False: SAELens' raw pre-activations, whose
    negative values teach dead latents to explain the residual with negative activations, so they stay
    dead (with a short ``dead_feature_window`` most latents die)."""
    feature_sampling_window: int = 2000
    """Steps per window of SAELens' training-time feature-density log."""
    b_dec_init: str = "zeros"
    """Decoder bias at the start: ``zeros`` (SAELens' default; measured better for TopK and BatchTopK SAEs,
    see docs/training.md) or ``mean`` (the mean of the first training batch, as sparsify does)."""
    n_batches_for_norm_estimate: int = 100
    """Batches read to estimate the activation normalisation (``normalize_activations`` =
    ``expected_average_only_in`` or ``covariance_whitening``); folded into the saved weights."""
    seed: int = 0
    """Seed of the SAE's initial weights."""
    data_seed: int = 0
    """Seed of the shuffled batch order (runs sharing a data pass must share it)."""
    device: str = "auto"
    """``auto`` (cuda when present, else cpu), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    autocast: bool = False
    """bfloat16 autocast of the training step (useful on GPU)."""
    checkpoint_every_tokens: int | None = None
    """Write a resumable checkpoint every this many rows (None: only the final one)."""
    keep_checkpoints: int = 2
    """Newest periodic checkpoints kept on disk (older ones are deleted)."""
    eval_fraction: float = 0.05
    """Share of the store's images held out of training (a seeded random draw, stratified by label
    when the store has labels; every row of a held-out image) and used for evaluation."""
    split_seed: int = 0
    """Seed of the held-out image draw (recorded in ``split.json`` and the checkpoint metadata)."""
    max_eval_rows: int = 65536
    """Upper bound on the held-out rows."""
    downstream_images: int = 64
    """Images used for the spliced downstream metric at the end of training (when a model is given)."""
    name: str | None = None
    """Folder name of this SAE under ``out_dir``; default ``<architecture>_<d_sae>_<site>``."""
    wandb_project: str | None = None
    """Weights & Biases project to log to; None disables W&B."""
    wandb_mode: str = "online"
    """``online``, ``offline`` (no network needed) or ``disabled``."""
    log_every: int = 20
    """Steps between progress-bar / W&B updates of loss, L0 and NMSE."""

    # Input selection and saev-style normalisation (see vision_sae_lens.normalization).
    tokens: str | None = None
    """Token selection to train on: ``patches``, ``cls``, ``registers`` or ``all``; None trains on every
    token the store recorded. It must be part of what the store recorded, and becomes the SAE's
    ``metadata.tokens``, so splicing applies the SAE to those positions only."""
    subtract_mean: bool = False
    """Subtract the mean activation of the training rows (of the selected tokens) before the SAE
    (saev's ``scale_mean``). Folded into the saved weights, which therefore take raw activations."""
    scale_norm: bool = False
    """Scale rows (after ``subtract_mean``) so that their mean L2 norm is ``sqrt(d_in)`` (saev's
    ``scale_norm``; one factor for the whole run, from the training rows). Folded into the saved weights.
    SAELens' own per-run option is ``sae.normalize_activations``."""
    eval_store: Any = None
    """Activation store to evaluate on instead of the held-out slice of ``store`` (its rows up to
    ``max_eval_rows``); with ``eval_fraction=0`` and no ``eval_store`` nothing is evaluated on rows."""

    def __post_init__(self) -> None:
        check_sizes_and_name(self)
        if not isinstance(self.sae, TrainingSAEConfig):
            raise ConfigError(
                f"sae must be a SAELens training config (e.g. TopKTrainingSAEConfig), got {type(self.sae).__name__}; "
                "use vision_sae_lens.train.build_sae_config(architecture, **fields) to build one by name."
            )
        if not self.site:
            raise ConfigError("site must name a hook of the store, e.g. 'blocks.10.hook_resid_post'")
        # The None defaults are resolved here; locals carry the resolved (non-None) values below.
        batch_size = default_batch_size(self.training_tokens) if self.batch_size is None else self.batch_size
        object.__setattr__(self, "batch_size", batch_size)
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be > 0, got {batch_size}")
        if self.training_tokens < batch_size:
            raise ConfigError(
                f"training_tokens ({self.training_tokens}) is smaller than one batch ({batch_size}); "
                "raise training_tokens or lower batch_size."
            )
        lr = default_lr(self.sae.d_sae) if self.lr is None else self.lr
        object.__setattr__(self, "lr", lr)
        if lr <= 0:
            raise ConfigError(f"lr must be > 0, got {lr}")
        warm_up = min(1000, self.n_steps // 20) if self.lr_warm_up_steps is None else self.lr_warm_up_steps
        object.__setattr__(self, "lr_warm_up_steps", warm_up)
        if self.dead_feature_window is None:
            object.__setattr__(self, "dead_feature_window", max(1, min(1000, self.n_steps // 100)))
        if self.b_dec_init not in ("mean", "zeros"):
            raise ConfigError(f"b_dec_init must be 'mean' or 'zeros', got {self.b_dec_init!r}")
        if self.lr_end is None:
            object.__setattr__(self, "lr_end", lr / 10)
        if self.lr_scheduler.lower() not in LR_SCHEDULERS:
            raise ConfigError(
                f"unknown lr_scheduler {self.lr_scheduler!r}; choose one of {', '.join(LR_SCHEDULERS)}"
            )
        for name in ("lr_warm_up_steps", "lr_decay_steps", "keep_checkpoints", "downstream_images"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if warm_up + self.lr_decay_steps > self.n_steps:
            raise ConfigError(
                f"lr_warm_up_steps + lr_decay_steps ({warm_up + self.lr_decay_steps}) exceed the "
                f"{self.n_steps} training steps."
            )
        for name in ("n_restart_cycles", "dead_feature_window", "feature_sampling_window", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_batches_for_norm_estimate < 1:
            raise ConfigError("n_batches_for_norm_estimate must be >= 1")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.checkpoint_every_tokens is not None and self.checkpoint_every_tokens < batch_size:
            raise ConfigError("checkpoint_every_tokens must be at least one batch (or None)")
        if self.wandb_mode not in ("online", "offline", "disabled"):
            raise ConfigError(f"wandb_mode must be online, offline or disabled, got {self.wandb_mode!r}")
        resolve_device(self.device)
        self._check_input_options()

    def _check_input_options(self) -> None:
        if self.tokens is not None:
            check_token_selection(self.tokens)
        if not (self.subtract_mean or self.scale_norm):
            return
        runtime = self.sae.normalize_activations
        if runtime in RUNTIME_NORMALISATIONS:
            raise ConfigError(
                f"subtract_mean/scale_norm cannot be combined with normalize_activations={runtime!r}: that mode "
                "normalises each row inside the SAE, before the mean could be removed, so the two cannot be "
                "folded together. Use one of them (saev's settings: subtract_mean=True, scale_norm=True, "
                "normalize_activations='none')."
            )
        if self.subtract_mean and self.architecture.startswith("matching_pursuit"):
            raise ConfigError(
                "subtract_mean cannot be folded into a matching-pursuit SAE (its encoder is tied to the "
                "decoder); use scale_norm alone or another architecture."
            )

    @property
    def n_steps(self) -> int:
        """Optimizer steps: whole batches in ``training_tokens``."""
        batch_size = default_batch_size(self.training_tokens) if self.batch_size is None else self.batch_size
        return self.training_tokens // batch_size

    @property
    def architecture(self) -> str:
        """SAELens training architecture name (``topk``, ``batchtopk``, ...)."""
        return self.sae.architecture()

    @property
    def rows_per_step(self) -> int:
        """``batch_size`` as resolved by ``__post_init__`` (never None once the config exists)."""
        assert self.batch_size is not None  # set in __post_init__
        return self.batch_size

    @property
    def dead_window(self) -> int:
        """``dead_feature_window`` as resolved by ``__post_init__``."""
        assert self.dead_feature_window is not None  # set in __post_init__
        return self.dead_feature_window

    @property
    def default_name(self) -> str:
        """``<architecture>_<d_sae>_<site>`` with the site's dots kept."""
        return self.name or f"{self.architecture}_{self.sae.d_sae}_{self.site}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (written as ``train_config.json`` beside each checkpoint)."""
        d = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("store", "sae", "eval_store")
        }
        d["store"] = str(getattr(self.store, "path", self.store))
        d["eval_store"] = (
            None if self.eval_store is None else str(getattr(self.eval_store, "path", self.eval_store))
        )
        sae = self.sae.to_dict()
        sae.pop("metadata", None)
        d["sae"] = sae
        return d


def default_batch_size(training_tokens: int) -> int:
    """The default batch: ``training_tokens / 1000`` rounded down to a power of two, within 256..4096."""
    target = max(1, training_tokens // 1000)
    return int(min(4096, max(256, 2 ** (target.bit_length() - 1))))


def default_lr(d_sae: int) -> float:
    """The default learning rate for ``d_sae`` latents: ``2e-4 / sqrt(d_sae / 2**14)``."""
    return 2e-4 / (d_sae / 2**14) ** 0.5


ARCHITECTURE_DEFAULTS: dict[str, dict[str, Any]] = {
    "topk": {"decoder_init_norm": 1.0, "aux_loss_coefficient": 4.0},
    "batchtopk": {"decoder_init_norm": 1.0, "aux_loss_coefficient": 4.0},
    "matryoshka_batchtopk": {"decoder_init_norm": 1.0},
}
"""SAE-config defaults that differ from SAELens' (measured in ``scripts/bench/quality.py``): TopK-
family SAEs start from a unit-norm decoder (OpenAI, dictionary_learning, sparsify); SAELens' 0.1
leaves many latents silent from the first steps. L1 SAEs keep SAELens' 0.1, which is better there.
TopK and BatchTopK weigh the AuxK loss 4x (SAELens: 1): with ``TrainConfig.auxk_relu`` and the 1% dead
window it left fewer latents dead at the same NMSE (docs/training.md)."""


def build_sae_config(architecture: str, **fields: Any) -> TrainingSAEConfig:
    """A SAELens ``*TrainingSAEConfig`` from an architecture name and its fields (e.g. from TOML).

    Every training architecture registered with SAELens works (``standard``, ``topk``, ``batchtopk``,
    ``jumprelu``, ``gated``, ``matryoshka_batchtopk``, ...); ``l1`` and ``matryoshka`` are aliases.
    Fields not given take :data:`ARCHITECTURE_DEFAULTS`, then SAELens' defaults.
    """
    arch = ARCHITECTURE_ALIASES.get(architecture, architecture)
    if arch not in SAE_TRAINING_CLASS_REGISTRY:
        known = sorted(SAE_TRAINING_CLASS_REGISTRY)
        raise ConfigError(
            f"unknown SAE architecture {architecture!r}.{close_matches(architecture, known)} "
            f"SAELens training architectures: {', '.join(known)}"
        )
    cfg_cls = SAE_TRAINING_CLASS_REGISTRY[arch][1]
    valid = {f.name for f in dataclasses.fields(cfg_cls)} - {"metadata"}
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise ConfigError(
            f"{cfg_cls.__name__} has no field(s) {', '.join(unknown)}."
            f"{close_matches(unknown[0], valid)} Fields: {', '.join(sorted(valid))}"
        )
    return cfg_cls(**{**ARCHITECTURE_DEFAULTS.get(arch, {}), **fields})


def training_architectures() -> list[str]:
    """Names of every SAELens training architecture."""
    return sorted(SAE_TRAINING_CLASS_REGISTRY)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; other names are checked and passed on."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from exc
    return device


# ------------------------------------------------------------------ validation: sizes and names
def check_sizes_and_name(cfg: TrainConfig) -> None:
    """Refuse SAE sizes that cannot train and run names that would escape ``out_dir`` (before any work)."""
    from vision_sae_lens.fsutil import check_name

    if cfg.name is not None:
        check_name(cfg.name, what="run name")
    sae_fields = cfg.sae.to_dict() if isinstance(cfg.sae, TrainingSAEConfig) else {}
    numbers = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)} | {
        f"sae.{k}": v for k, v in sae_fields.items()
    }
    for name, value in numbers.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value}")
    if (
        isinstance(cfg.training_tokens, bool)
        or not isinstance(cfg.training_tokens, int)
        or cfg.training_tokens < 1
    ):
        raise ConfigError(f"training_tokens must be a positive number of rows, got {cfg.training_tokens!r}")
    sae = cfg.sae
    d_sae, d_in = getattr(sae, "d_sae", None), getattr(sae, "d_in", None)
    if d_sae is not None and d_sae < 1:
        raise ConfigError(f"d_sae (the number of latents) must be >= 1, got {d_sae}")
    if d_in is not None and d_in < 1:
        raise ConfigError(f"d_in must be >= 1, got {d_in}")
    k = getattr(sae, "k", None)
    if k is not None and d_sae is not None:
        if k <= 0:
            raise ConfigError(f"k (latents active per row) must be > 0, got {k}")
        if k > d_sae:
            raise ConfigError(f"k ({k}) cannot exceed d_sae ({d_sae}): at most d_sae latents can be active")
