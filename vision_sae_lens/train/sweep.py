"""Sweeps: several SAE configs that train together, each batch read once for all of them.

Configs share a data pass when they read the same batch stream: same store, site, batch size,
data seed, held-out slice, device and checkpoint schedule. Anything else (architecture, d_sae, k,
coefficients, lr and schedule, init seed, training length) may differ. ``group_configs`` splits a
list into such groups and tells the user why a config went into a group of its own.

A sweep file (TOML)::

    out_dir = "saes/"                 # optional; --out-dir overrides it
    [defaults]                        # TrainConfig fields shared by every [[sae]]
    store = "acts/"
    site = "blocks.10.hook_resid_post"
    training_tokens = 50_000_000
    [[sae]]                           # SAE config fields + any TrainConfig field to override
    architecture = "topk"
    d_sae = 24576
    k = 64
    [[sae]]
    architecture = "standard"
    d_sae = 24576
    l1_coefficient = 5.0
    lr = 1e-4

``d_in`` may be left out: it is read from the store.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from pathlib import Path
from typing import Any

from vision_sae_lens.errors import ConfigError, DataFileNotFoundError
from vision_sae_lens.fsutil import check_name, read_capped
from vision_sae_lens.train.config import TrainConfig, build_sae_config
from vision_sae_lens.train.feed import open_store, site_width, store_key

logger = logging.getLogger(__name__)

SHARED_FIELDS = (
    "site",
    "batch_size",
    "data_seed",
    "eval_fraction",
    "split_seed",
    "max_eval_rows",
    "device",
    "checkpoint_every_tokens",
    "tokens",
    "subtract_mean",
    "scale_norm",
)
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"sae"}


def group_configs(configs: list[TrainConfig], names: list[str]) -> list[list[int]]:
    """Indices of ``configs`` grouped by shared data pass, in first-seen order; logs each split."""
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(configs):
        key = (store_key(cfg.store), *(getattr(cfg, f) for f in SHARED_FIELDS))
        if groups and key not in groups:
            first = configs[next(iter(groups.values()))[0]]
            why = _difference(first, cfg)
            logger.warning(
                "%r cannot share the data pass of %r (%s); it trains in a separate pass over the data.",
                names[i],
                names[next(iter(groups.values()))[0]],
                why,
            )
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def training_cost(cfg: TrainConfig) -> float:
    """What training ``cfg`` costs, for balancing SAEs over ranks: d_sae x batch x steps (the step's dense
    products scale with each; d_in is the store's, shared by a sweep)."""
    return float(cfg.sae.d_sae) * cfg.rows_per_step * cfg.n_steps


def _difference(a: TrainConfig, b: TrainConfig) -> str:
    if store_key(a.store) != store_key(b.store):
        return f"store {a.store} vs {b.store}"
    diffs = [
        f"{f} {getattr(a, f)!r} vs {getattr(b, f)!r}" for f in SHARED_FIELDS if getattr(a, f) != getattr(b, f)
    ]
    return ", ".join(diffs)


def unique_names(configs: list[TrainConfig]) -> list[str]:
    """Folder names: each config's ``name`` or default name, suffixed ``-2``, ``-3`` when repeated."""
    seen: dict[str, int] = {}
    names = []
    for cfg in configs:
        base = check_name(cfg.default_name, what="run name")
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    if len(set(names)) != len(names):
        raise ConfigError(f"run names collide: {names}; give each config a distinct name=")
    return names


def load_sweep(path: str | Path, **overrides: object) -> tuple[list[TrainConfig], str | None]:
    """Read a TOML sweep file into TrainConfigs (and its ``out_dir``, if it names one).

    ``overrides`` are TrainConfig fields applied to every run (e.g. ``device="cpu"``). Relative
    store paths are resolved against the sweep file's folder.
    """
    path = Path(path)
    try:
        # A regular file of bounded size: a FIFO or /dev/zero behind the name is refused before reading.
        doc = tomllib.loads(read_capped(path).decode())
    except FileNotFoundError:
        raise DataFileNotFoundError(f"sweep file not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file; pass a TOML sweep file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    unknown_top = sorted(set(doc) - {"out_dir", "defaults", "sae"})
    if unknown_top:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {unknown_top}; use out_dir, [defaults] and [[sae]] tables"
        )
    runs = doc.get("sae") or []
    if not runs:
        raise ConfigError(
            f"{path} lists no [[sae]] table; add at least one with architecture = ... and d_sae = ..."
        )
    defaults = dict(doc.get("defaults") or {})
    configs = []
    for i, run in enumerate(runs):
        merged = {**defaults, **run, **{k: v for k, v in overrides.items() if v is not None}}
        configs.append(config_from_dict(merged, base_dir=path.parent, where=f"{path} [[sae]] #{i + 1}"))
    return configs, doc.get("out_dir")


def config_from_dict(
    d: dict[str, Any], *, base_dir: Path | None = None, where: str = "config"
) -> TrainConfig:
    """One flat dict (TrainConfig fields + ``architecture`` + SAE config fields) -> TrainConfig."""
    d = dict(d)
    if "architecture" not in d:
        raise ConfigError(f"{where}: missing architecture (e.g. architecture = 'topk')")
    for required in ("store", "site", "training_tokens"):
        if required not in d:
            raise ConfigError(f"{where}: missing {required}")
    arch = d.pop("architecture")
    train = {k: d.pop(k) for k in list(d) if k in _TRAIN_FIELDS}
    store = train["store"]
    if isinstance(store, str) and base_dir is not None and not Path(store).is_absolute():
        train["store"] = str(base_dir / store)
    eval_store = train.get("eval_store")
    if isinstance(eval_store, str) and base_dir is not None and not Path(eval_store).is_absolute():
        train["eval_store"] = str(base_dir / eval_store)
    if "d_in" not in d:
        d["d_in"] = site_width(open_store(train["store"]), train["site"])
    try:
        sae = build_sae_config(arch, **d)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return TrainConfig(sae=sae, **train)
