"""``vision-sae-lens train`` and ``vision-sae-lens evaluate``."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vision_sae_lens._lazy import add_arguments_on_use
from vision_sae_lens.errors import ConfigError, escape_control

if TYPE_CHECKING:
    from vision_sae_lens.backbones import HookedSAEViT
    from vision_sae_lens.contracts import ImageSource

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``evaluate`` sub-commands."""
    p = subparsers.add_parser(
        "train",
        help="train SAELens SAEs from an activation store (one, or a sweep sharing one data pass)",
        description=(
            "Train from a TOML sweep file (--config; see docs/training.md) or one SAE given by flags. "
            "Writes SAELens folders (cfg.json, sae_weights.safetensors, sparsity.safetensors) plus eval.json."
        ),
    )
    p.add_argument("--config", help="TOML sweep file with [defaults] and [[sae]] tables")
    p.add_argument(
        "--out",
        "--out-dir",
        dest="out_dir",
        help="output folder (default: the sweep file's out_dir, else ./saes)",
    )
    p.add_argument("--store", help="activation store directory (single-SAE mode)")
    p.add_argument("--site", help="site to train on, e.g. blocks.10.hook_resid_post (single-SAE mode)")
    p.add_argument("--architecture", default="topk", help="SAELens training architecture (default: topk)")
    p.add_argument(
        "--resume", action="store_true", help="continue unfinished runs from their newest checkpoint"
    )
    p.add_argument("--overwrite", action="store_true", help="delete earlier output of these runs first")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--concurrent-steps",
        type=int,
        help="SAEs of a sweep stepping at the same time, each adding its step's memory (default: 2 on a CPU "
        "of up to 4 threads, else 1)",
    )
    p.add_argument(
        "--distributed",
        choices=["auto", "sweep", "ddp"],
        default="auto",
        help="under torchrun: 'sweep' deals the SAEs to the ranks, 'ddp' trains each SAE on all ranks (its batch "
        "split between them); 'auto' is ddp for one SAE, sweep for several (see docs/distributed.md)",
    )
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=1800.0,
        help="under torchrun: seconds a rank waits for the others before it stops with an error",
    )
    _add_downstream_args(p, n_images=False)
    # Every TrainConfig and SAELens SAE-config field, generated from the dataclasses: that imports
    # SAELens, so it happens only when `train` itself is parsed (or its --help shown).
    add_arguments_on_use(p, _add_config_fields)
    p.set_defaults(func=run_train)

    e = subparsers.add_parser(
        "evaluate",
        help="evaluate an SAE folder on store rows (and spliced into the backbone)",
        description="MSE, NMSE, explained variance, L0, dead/dense latents; with --model/--images the downstream metric.",
    )
    e.add_argument("sae", help="SAELens SAE folder")
    e.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    e.add_argument("--store", required=True, help="activation store directory")
    e.add_argument("--site", help="store site (default: the SAE's hook_name)")
    e.add_argument("--start-row", type=int, help="first row (default: the training run's held-out slice)")
    e.add_argument("--stop-row", type=int, help="end row (exclusive)")
    e.add_argument("--max-rows", type=int, default=65536)
    e.add_argument("--device", help="cpu, cuda, ...")
    e.add_argument("--out", help="folder for eval.json and density.png (default: print only)")
    _add_downstream_args(e)
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(func=run_evaluate)


def _add_config_fields(p: argparse.ArgumentParser) -> None:
    from vision_sae_lens.train.cli_args import add_sae_config_arguments, add_train_config_arguments

    p.set_defaults(_train_fields=add_train_config_arguments(p), _sae_fields=add_sae_config_arguments(p))
    p.add_argument(
        "--warm-up",
        type=int,
        dest="lr_warm_up_steps",
        help="alias of --lr-warm-up-steps (saev's n_lr_warmup)",
    )


def _add_downstream_args(p: argparse.ArgumentParser, *, n_images: bool = True) -> None:
    p.add_argument(
        "--model", help="backbone id for the spliced downstream metric ('store' = the store's backbone)"
    )
    p.add_argument(
        "--images", help="image source for the downstream metric (e.g. demo:mnist:test, imagefolder:DIR)"
    )
    if n_images:
        p.add_argument("--n-images", type=int, help="images for the downstream metric (default 64)")
    p.add_argument("--weights", help="local weights file of --model (a timm: or open_clip: architecture id)")


def _downstream(args: argparse.Namespace, store_path: str) -> tuple[HookedSAEViT | None, ImageSource | None]:
    """The backbone and images of the downstream metric (None, None without --model)."""
    if not args.model:
        return None, None
    if not args.images:
        raise ConfigError("--model needs --images (the images to measure the downstream metric on)")
    from vision_sae_lens.backbones.recorded import backbone_for
    from vision_sae_lens.data import open_images
    from vision_sae_lens.store import ActivationStore

    # 'store' rebuilds the store's backbone; the store's own id is checked against its recorded weights
    recorded = ActivationStore(store_path).metadata
    model = backbone_for(args.model, recorded, weights=args.weights, what=f"store {store_path}")
    return model, open_images(args.images)


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``train``: a sweep file or one SAE from flags; prints one line per trained SAE."""
    from vision_sae_lens.train.sweep import config_from_dict, load_sweep
    from vision_sae_lens.train.trainer import train_sae

    given = {
        k: getattr(args, k) for k in args._train_fields + args._sae_fields if getattr(args, k) is not None
    }
    if args.config:
        configs, file_out = load_sweep(args.config, **given)
        out_dir = args.out_dir or (str(Path(args.config).parent / file_out) if file_out else "saes")
        store_path = str(configs[0].store)
    else:
        d = {"architecture": args.architecture, "store": args.store, "site": args.site, **given}
        missing = [f for f in ("store", "site", "d_sae", "training_tokens") if d.get(f) is None]
        if missing:
            raise ConfigError(f"without --config, pass --{' --'.join(m.replace('_', '-') for m in missing)}")
        d = _coerce_sae_fields(args.architecture, d)
        configs, out_dir, store_path = [config_from_dict(d)], args.out_dir or "saes", args.store
    model, images = _downstream(args, store_path)
    from vision_sae_lens.cpu_memory import return_freed_memory

    return_freed_memory()  # this process is the command's own: lower peak RSS (see cpu_memory)
    runs = train_sae(
        configs,
        out_dir=out_dir,
        resume=args.resume,
        overwrite=args.overwrite,
        model=model,
        images=images,
        progress=not args.no_progress,
        concurrent_steps=args.concurrent_steps,
        distributed=args.distributed,
        dist_timeout=args.dist_timeout,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun every rank returns every run: rank 0 prints them
    for run in runs if isinstance(runs, list) else [runs]:
        print(format_run(run.path, run.report))
    return 0


def format_run(path: str | os.PathLike[str], r: dict[str, Any]) -> str:
    """One line per trained SAE: held-out NMSE / L0, dead by the one definition, downstream recovery."""
    shown = escape_control(path)
    if r.get("evaluated") is False:
        return f"{shown}: not evaluated on rows ({r['note']})"
    down = r.get("downstream") or {}
    fr = down.get("fraction_recovered")
    text = (
        f"{shown}: L0 {r['l0']:.2f}  NMSE {r['nmse']:.4f}  explained variance {r['explained_variance']:.4f}"
        f"  dead {r['dead_fraction']:.3f} (over {r.get('density_rows', 0):,} rows)"
    )
    if fr is not None:
        text += f"  downstream recovered {fr:.3f}" + (" (above 1: noise, not a gain)" if fr > 1 else "")
    return text


def _coerce_sae_fields(architecture: str, d: dict[str, Any]) -> dict[str, Any]:
    """Flag values typed for another architecture (k is float for batchtopk, int for topk) fit this one."""
    import dataclasses
    import typing

    from vision_sae_lens.compat import SAE_TRAINING_CLASS_REGISTRY
    from vision_sae_lens.train.config import ARCHITECTURE_ALIASES

    arch = ARCHITECTURE_ALIASES.get(architecture, architecture)
    if arch not in SAE_TRAINING_CLASS_REGISTRY:
        return d
    cls = SAE_TRAINING_CLASS_REGISTRY[arch][1]
    hints = typing.get_type_hints(cls)
    out = dict(d)
    for f in dataclasses.fields(cls):
        if hints.get(f.name) is int and isinstance(out.get(f.name), float) and out[f.name].is_integer():
            out[f.name] = int(out[f.name])
    return out


def run_evaluate(args: argparse.Namespace) -> int:
    """Handler of ``evaluate``: the evaluation report of an SAE folder, printed as JSON."""
    from vision_sae_lens.train.evaluate import evaluate_sae

    model, images = _downstream(args, args.store)
    report = evaluate_sae(
        args.sae,
        args.store,
        model=model,
        images=images,
        site=args.site,
        start_row=args.start_row,
        stop_row=args.stop_row,
        max_rows=args.max_rows,
        n_images=args.n_images or 64,
        device=args.device,
        out_dir=args.out,
        progress=not args.no_progress,
    )
    shown = {k: v for k, v in report.items() if k != "density_histogram"}
    print(json.dumps(shown, indent=1))
    return 0
