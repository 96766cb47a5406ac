"""Import ViT-Prisma SAEs (``{"cfg": VisionModelSAERunnerConfig, "state_dict": ...}`` pickles).

ViT-Prisma saves its SAEs with ``torch.save`` of a dict holding its config *object*, so a plain
``torch.load`` would have to unpickle arbitrary classes, and unpickling can execute code. By
default the file is read with ``torch.load(weights_only=True)``, torch's restricted unpickler,
extended by exactly two inert stand-ins registered under Prisma's config class paths
(``vit_prisma.sae.config.VisionModelSAERunnerConfig`` and ``vit_prisma.configs.HookedViTConfig``):
they only receive attribute dicts. Any other global in the file (``os.system``, ``builtins.eval``,
...) is refused with :class:`UnsafeCheckpointError`. ``trust_remote_pickle=True`` is the explicit
opt-in to a full unpickle for files you trust.

Config mapping (Prisma ``vit_prisma/sae/config.py``): ``hook_point_layer`` + ``layer_subtype`` ->
``hook_name``; ``d_in``, ``d_sae`` (or ``d_in * expansion_factor``); ``activation_fn_str`` relu ->
standard, topk (``activation_fn_kwargs.k``) -> topk; ``architecture`` gated -> gated;
``normalize_activations`` (layer_norm / constant_norm_rescale / none) maps to SAELens' option of the
same name; Prisma's encoder subtracts ``b_dec`` (``apply_b_dec_to_input=True``).
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeGuard

import sae_lens
import torch
from sae_lens import SAE, GatedSAE, GatedSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

from vision_sae_lens.errors import ConversionError, UnsafeCheckpointError
from vision_sae_lens.fsutil import building_folder, check_output_folder, read_json, seal_sae_folder
from vision_sae_lens.layout import TokenLayout
from vision_sae_lens.metadata import VisionFacts

logger = logging.getLogger(__name__)

PRISMA_CONFIG_CLASSES = (
    "vit_prisma.sae.config.VisionModelSAERunnerConfig",
    "vit_prisma.sae.config.RunnerConfig",
    "vit_prisma.configs.HookedViTConfig.HookedViTConfig",
)


class PrismaConfigStandIn:
    """Inert stand-in for Prisma's config dataclasses: it only stores the pickled attributes."""

    def __init__(self, **kwargs: object) -> None:
        self.__dict__.update(kwargs)


def import_prisma(
    path_or_repo: str | Path,
    *,
    out_dir: str | Path | None = None,
    filename: str | None = None,
    trust_remote_pickle: bool = False,
    overwrite: bool = False,
) -> SAE:
    """Load a ViT-Prisma SAE (local ``.pt`` / folder, or a Hub repo id) as a SAELens SAE.

    With ``out_dir`` the SAE is also saved there as a SAELens folder, written beside it and renamed
    into place; an existing ``out_dir`` is refused (before the file is read) unless ``overwrite`` and
    it is an SAE folder of this package. Hub repos are fetched with ``snapshot_download`` (``*.pt``
    and ``*.json`` only), so a warm cache works offline.
    """
    if out_dir is not None:
        check_output_folder(Path(out_dir).absolute(), overwrite=overwrite, kinds=("sae",), what="SAE folder")
    weights, config_json = _locate(Path(path_or_repo), str(path_or_repo), filename)
    payload = load_prisma_pickle(weights, trust_remote_pickle=trust_remote_pickle)
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise ConversionError(
            f"{weights}: expected a dict with 'cfg' and 'state_dict', got {type(payload).__name__}"
        )
    cfg = _config_dict(payload.get("cfg"), config_json)
    sae = convert_prisma(cfg, payload["state_dict"])
    if out_dir is not None:
        with building_folder(out_dir, kind="sae", overwrite=overwrite, what="SAE folder") as tmp:
            sae.save_model(str(tmp))
            seal_sae_folder(tmp)  # checksums.json: the folder is complete (publish requires it)
    return sae


def load_prisma_pickle(path: str | Path, *, trust_remote_pickle: bool = False) -> Any:
    """Unpickle a Prisma ``.pt`` safely (restricted unpickler), or fully when explicitly trusted."""
    if trust_remote_pickle:
        logger.warning(
            "trust_remote_pickle=True: fully unpickling %s (this can execute code from the file).", path
        )
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_TRUSTING_PICKLE)
    stand_ins: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
        (PrismaConfigStandIn, name) for name in PRISMA_CONFIG_CLASSES
    ]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        offending = _offending_global(str(exc))
        raise UnsafeCheckpointError(
            f"{path}: refused to unpickle {offending or 'an object'}: only tensors, plain containers and "
            "Prisma's config classes are allowed, because unpickling other objects can run code from the "
            "file. If you trust the file, pass trust_remote_pickle=True (CLI: --trust-remote-pickle)."
        ) from None
    except Exception as exc:
        raise ConversionError(f"{path}: cannot read the checkpoint: {exc}") from exc


def convert_prisma(cfg: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> SAE:
    """A SAELens SAE from a Prisma config dict and state dict (same latents as Prisma's encoder).

    The config's shapes are checked against the tensors before anything sized by the config is
    allocated (an SAE built on the ``meta`` device gives the shapes SAELens expects), so a config
    that claims millions of latents over small tensors fails at once.
    """
    d_in = cfg.get("d_in")
    if not _is_count(d_in):
        raise ConversionError(f"Prisma config field d_in must be a positive integer, got {d_in!r}")
    factor = cfg.get("expansion_factor")
    d_sae = cfg.get("d_sae") or (d_in * factor if _is_count(factor) else None)
    if not _is_count(d_sae):
        raise ConversionError(
            f"Prisma config needs d_sae or expansion_factor as a positive integer (d_sae={cfg.get('d_sae')!r}, "
            f"expansion_factor={factor!r})"
        )
    norm = cfg.get("normalize_activations") or "none"
    if norm not in ("none", "layer_norm", "constant_norm_rescale"):
        raise ConversionError(f"Prisma config field normalize_activations={norm!r} is not supported")
    common = {"d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": True, "normalize_activations": norm}
    sae_class, cfg_class, extra = _architecture(cfg)
    expected = sae_class(cfg_class(**common, **extra, device="meta")).state_dict()
    _check_state(expected, state_dict)
    sae = sae_class(cfg_class(**common, **extra))
    sae.load_state_dict({k: state_dict[k].detach().float().contiguous() for k in expected})
    _write_metadata(sae, cfg)
    return sae


# --- helpers -------------------------------------------------------------------------------------


def _architecture(cfg: dict[str, Any]) -> tuple[type[SAE], type, dict[str, Any]]:
    """(SAELens SAE class, its config class, extra config fields) for a Prisma config."""
    arch = cfg.get("architecture") or "standard"
    act = cfg.get("activation_fn_str") or "relu"
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if arch == "gated":
        return GatedSAE, GatedSAEConfig, {}
    if arch == "standard" and act == "relu":
        return StandardSAE, StandardSAEConfig, {}
    if arch == "standard" and act == "topk":
        if not _is_count(kwargs.get("k")):
            raise ConversionError(
                f"Prisma config field activation_fn_kwargs.k must be a positive integer, got {kwargs!r}"
            )
        return TopKSAE, TopKSAEConfig, {"k": kwargs["k"]}
    raise ConversionError(
        f"Prisma config fields architecture={arch!r}, activation_fn_str={act!r} have no SAELens equivalent "
        "(supported: standard+relu, standard+topk, gated)."
    )


def _check_state(expected: dict[str, torch.Tensor], state_dict: object) -> None:
    if not isinstance(state_dict, dict):
        raise ConversionError(
            f"the Prisma state_dict is a {type(state_dict).__name__}, expected a dict of tensors"
        )
    missing = set(expected) - set(state_dict)
    if missing:
        raise ConversionError(f"Prisma state dict lacks {sorted(missing)} (has {sorted(state_dict)})")
    wrong = [
        f"{k} is {_shape(state_dict[k])}, the config implies {tuple(v.shape)}"
        for k, v in expected.items()
        if not isinstance(state_dict[k], torch.Tensor) or tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise ConversionError(f"the Prisma config does not match its tensors: {'; '.join(wrong)}")


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _locate(local: Path, spec: str, filename: str | None) -> tuple[Path, Path | None]:
    if local.is_file():
        cfg = local.parent / "config.json"
        return local, cfg if cfg.exists() else None
    if not local.exists():
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(spec, allow_patterns=["*.pt", "*.json"]))
    candidates = [local / filename] if filename else sorted(local.rglob("*.pt"))
    if not candidates or not candidates[0].exists():
        raise ConversionError(f"no .pt checkpoint found in {spec}")
    if len(candidates) > 1:
        raise ConversionError(
            f"{spec} holds several .pt files {[c.name for c in candidates]}; pass filename="
        )
    cfg = candidates[0].parent / "config.json"
    return candidates[0], cfg if cfg.exists() else None


def _config_dict(cfg_obj: object, config_json: Path | None) -> dict[str, Any]:
    if config_json is not None:
        data = read_json(config_json)
        if not isinstance(data, dict):
            raise ConversionError(f"{config_json} holds a {type(data).__name__}, expected a JSON object")
    elif isinstance(cfg_obj, dict):
        data = dict(cfg_obj)
    else:
        try:  # a config object (Prisma's dataclass, or its stand-in): its attributes
            data = dict(vars(cfg_obj))
        except TypeError:  # None, or an object without attributes
            raise ConversionError(
                "the checkpoint has no 'cfg' and there is no config.json beside it"
            ) from None
    return {k: _plain(v) for k, v in data.items()}


def _shape(value: object) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"


def _plain(value: object) -> object:
    if isinstance(value, dict) and "__type__" in value:
        return value.get("value")
    if isinstance(value, torch.device | torch.dtype):
        return str(value)
    if isinstance(value, PrismaConfigStandIn):
        return {k: _plain(v) for k, v in vars(value).items()}
    return value


def _write_metadata(sae: SAE, cfg: dict[str, Any]) -> None:
    md = sae.cfg.metadata
    md.sae_lens_version = sae_lens.__version__
    md.converted_from = "vit_prisma"
    layer = cfg.get("hook_point_layer")
    layer = layer[0] if isinstance(layer, list) and len(layer) == 1 else layer
    hook = cfg.get("hook_point") or (
        f"blocks.{layer}.{cfg.get('layer_subtype', 'hook_resid_post')}" if layer is not None else None
    )
    md.hook_name = hook
    md.prisma_model_name = cfg.get("model_name")
    md.context_size = cfg.get("context_size")
    facts = _facts(cfg, hook)
    if facts is None:
        logger.warning(
            "could not derive the patch size of %r; vision facts left incomplete", cfg.get("model_name")
        )
        return
    for key, value in facts.to_metadata().items():
        setattr(md, key, value)


def _facts(cfg: dict[str, Any], hook: str | None) -> VisionFacts | None:
    name = str(cfg.get("model_name") or "")
    vit_cfg: dict[str, Any] = cfg["vit_model_cfg"] if isinstance(cfg.get("vit_model_cfg"), dict) else {}
    patch = vit_cfg.get("patch_size")
    if patch is None:
        m = re.search(r"(?:ViT-[A-Za-z]+-|patch)(\d+)", name)
        patch = int(m.group(1)) if m else None
    size = int(cfg.get("image_size") or vit_cfg.get("image_size") or 224)
    if patch is None or hook is None or size % int(patch):
        return None
    if cfg.get("cls_token_only"):
        tokens = "cls"
    elif cfg.get("use_patches_only"):
        tokens = "patches"
    else:
        tokens = "all"
    if name.startswith("open-clip:"):
        backbone = "open_clip:hf-hub:" + name[len("open-clip:") :]
    elif name.startswith("timm/"):
        backbone = "timm:" + name[len("timm/") :]
    else:
        backbone = "hf:" + name
    layout = TokenLayout(image_size=(size, size), patch_size=(int(patch), int(patch)), has_cls=True)
    return VisionFacts(
        backbone=backbone,
        hook_name=hook,
        tokens=tokens,
        layout=layout,
        dataset={"name": cfg.get("dataset_name"), "source": "vit_prisma"},
    )


class _TrustingUnpickler(pickle.Unpickler):
    # Full unpickling (opt-in), but Prisma's config classes fall back to the stand-in when
    # vit_prisma is not installed.
    def find_class(self, module: str, name: str) -> Any:
        if f"{module}.{name}" in PRISMA_CONFIG_CLASSES:
            try:
                return super().find_class(module, name)
            except ImportError:
                return PrismaConfigStandIn
        return super().find_class(module, name)


_TRUSTING_PICKLE = SimpleNamespace(
    __name__="vision_sae_lens_trusting_pickle",
    Unpickler=_TrustingUnpickler,
    load=lambda f, **kw: _TrustingUnpickler(f, **kw).load(),
)


def _offending_global(message: str) -> str | None:
    m = re.search(r"(?:GLOBAL|global|function|get_global)\s+([\w.]+)", message)
    return m.group(1) if m else None
