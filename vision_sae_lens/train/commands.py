"""``vision-sae-lens train`` and ``vision-sae-lens evaluate``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

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
    p.add_argument("--out-dir", help="output folder (default: the sweep file's out_dir, else ./saes)")
    p.add_argument("--store", help="activation store directory (single-SAE mode)")
    p.add_argument("--site", help="site to train on, e.g. blocks.10.hook_resid_post (single-SAE mode)")
    p.add_argument("--architecture", default="topk", help="SAELens training architecture (default topk)")
    p.add_argument("--d-sae", type=int, help="number of latents (single-SAE mode)")
    p.add_argument("--k", type=float, help="k of topk / batchtopk / matryoshka SAEs")
    p.add_argument("--l1-coefficient", type=float, help="L1 coefficient of standard / gated SAEs")
    p.add_argument("--training-tokens", type=int, help="rows to train on (single-SAE mode)")
    p.add_argument("--batch-size", type=int, help="rows per step")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--checkpoint-every-tokens", type=int, help="resumable checkpoint interval in rows")
    p.add_argument("--wandb-project", help="log to this Weights & Biases project")
    p.add_argument(
        "--wandb-mode", choices=("online", "offline", "disabled"), help="W&B mode (offline needs no network)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue unfinished runs from their newest checkpoint"
    )
    p.add_argument("--overwrite", action="store_true", help="delete earlier output of these runs first")
    _add_downstream_args(p)
    _add_run_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)

    e = subparsers.add_parser(
        "evaluate",
        help="evaluate an SAE folder on store rows (and spliced into the backbone)",
        description="MSE, NMSE, explained variance, L0, dead/dense latents; with --model/--images the downstream metric.",
    )
    e.add_argument("sae", help="SAELens SAE folder")
    e.add_argument("--store", required=True, help="activation store directory")
    e.add_argument("--site", help="store site (default: the SAE's hook_name)")
    e.add_argument("--start-row", type=int, help="first row (default: the training run's held-out slice)")
    e.add_argument("--stop-row", type=int, help="end row (exclusive)")
    e.add_argument("--max-rows", type=int, default=65536)
    e.add_argument("--device", help="cpu, cuda, ...")
    e.add_argument("--out", help="folder for eval.json and density.png (default: print only)")
    _add_downstream_args(e)
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(func=_evaluate)


def _add_downstream_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", help="backbone id for the spliced downstream metric ('store' = the store's backbone)"
    )
    p.add_argument(
        "--images", help="image source for the downstream metric (e.g. demo:mnist:test, imagefolder:DIR)"
    )
    p.add_argument("--n-images", type=int, help="images for the downstream metric (default 64)")
    p.add_argument("--weights", help="local weights file of --model (a timm: or open_clip: architecture id)")


NORMALIZE_MODES = (
    "none",
    "expected_average_only_in",
    "layer_norm",
    "constant_norm_rescale",
    "covariance_whitening",
)


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """Input selection, normalisation, schedule, seeds, evaluation split and init (saev's options too).

    Each flag overrides the same-named TrainConfig / SAE config field of every run (also of a --config
    sweep); left out, the file's value or the default stays.
    """
    g = p.add_argument_group(
        "inputs, normalisation, schedule, seeds, evaluation and init (see docs/coming_from_saev.md)"
    )
    g.add_argument(
        "--tokens",
        choices=("patches", "cls", "registers", "all"),
        help="token selection to train on (default: the store's)",
    )
    g.add_argument(
        "--subtract-mean",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="remove the training rows' mean (saev scale_mean)",
    )
    g.add_argument(
        "--scale-norm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="scale rows to mean norm sqrt(d) (saev scale_norm)",
    )
    g.add_argument(
        "--normalize-activations", choices=NORMALIZE_MODES, help="SAELens' normalize_activations mode"
    )
    g.add_argument(
        "--lr-warm-up-steps",
        "--warm-up",
        type=int,
        dest="lr_warm_up_steps",
        help="linear lr warm-up steps (saev n_lr_warmup)",
    )
    g.add_argument("--lr-decay-steps", type=int, help="linear lr decay steps at the end")
    g.add_argument("--lr-scheduler", choices=("constant", "cosineannealing", "cosineannealingwarmrestarts"))
    g.add_argument(
        "--l1-warm-up-steps", type=int, help="L1 coefficient warm-up steps (saev n_sparsity_warmup)"
    )
    g.add_argument("--seed", type=int, help="seed of the SAE's initial weights")
    g.add_argument("--data-seed", type=int, help="seed of the shuffled batch order")
    g.add_argument("--eval-fraction", type=float, help="share of the store's last rows held out (0: none)")
    g.add_argument("--eval-store", help="store to evaluate on instead of a held-out slice")
    g.add_argument("--decoder-init-norm", type=float, help="decoder row norm at init (SAELens default 0.1)")
    g.add_argument(
        "--apply-b-dec-to-input",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="subtract b_dec before encoding",
    )


_RUN_FIELDS = (
    "tokens",
    "subtract_mean",
    "scale_norm",
    "normalize_activations",
    "lr_warm_up_steps",
    "lr_decay_steps",
    "lr_scheduler",
    "l1_warm_up_steps",
    "seed",
    "data_seed",
    "eval_fraction",
    "eval_store",
    "apply_b_dec_to_input",
    "decoder_init_norm",
)


def _run_overrides(args: argparse.Namespace) -> dict:
    """The fields the flags of :func:`_add_run_args` set (None values are left out by the caller)."""
    return {name: getattr(args, name) for name in _RUN_FIELDS}


def _downstream(args: argparse.Namespace, store_path: str | None):
    if not args.model:
        return None, None
    from vision_sae_lens.backbones import HookedSAEViT

    model_id = args.model
    if model_id == "store":
        from vision_sae_lens.train.feed import open_store

        model_id = open_store(store_path).backbone_id
    model = HookedSAEViT.from_pretrained(model_id, **({"weights": args.weights} if args.weights else {}))
    if not args.images:
        raise ValueError("--model needs --images (the images to measure the downstream metric on)")
    from vision_sae_lens.data import open_images

    return model, open_images(args.images)


def _train(args: argparse.Namespace) -> int:
    from vision_sae_lens.train.sweep import config_from_dict, load_sweep
    from vision_sae_lens.train.trainer import train_sae

    overrides = {
        "batch_size": args.batch_size,
        "lr": args.lr,
        "device": args.device,
        "checkpoint_every_tokens": args.checkpoint_every_tokens,
        "wandb_project": args.wandb_project,
        "wandb_mode": args.wandb_mode,
        **_run_overrides(args),
    }
    if args.config:
        configs, file_out = load_sweep(args.config, **overrides)
        out_dir = args.out_dir or (str(Path(args.config).parent / file_out) if file_out else "saes")
        store_path = str(configs[0].store)
    else:
        missing = [f for f in ("store", "site", "d_sae", "training_tokens") if getattr(args, f) is None]
        if missing:
            raise ValueError(f"without --config, pass --{' --'.join(m.replace('_', '-') for m in missing)}")
        d = {"architecture": args.architecture, "store": args.store, "site": args.site, "d_sae": args.d_sae}
        d["training_tokens"] = args.training_tokens
        if args.k is not None:
            d["k"] = int(args.k) if args.architecture in ("topk", "abstopk") else args.k
        if args.l1_coefficient is not None:
            d["l1_coefficient"] = args.l1_coefficient
        d.update({k: v for k, v in overrides.items() if v is not None})
        configs, out_dir, store_path = [config_from_dict(d)], args.out_dir or "saes", args.store
    if args.n_images:
        configs = [_with(c, downstream_images=args.n_images) for c in configs]
    model, images = _downstream(args, store_path)
    runs = train_sae(
        configs,
        out_dir=out_dir,
        resume=args.resume,
        overwrite=args.overwrite,
        model=model,
        images=images,
        progress=not args.no_progress,
    )
    for run in runs:
        r = run.report
        fr = (r.get("downstream") or {}).get("fraction_recovered")
        if r.get("evaluated") is False:
            print(f"{run.path}: not evaluated on rows ({r['note']})")
            continue
        print(
            f"{run.path}: L0 {r['l0']:.2f}  NMSE {r['nmse']:.4f}  explained variance {r['explained_variance']:.4f}"
            f"  dead {r['dead_fraction']:.3f}"
            + (f"  downstream recovered {fr:.3f}" if fr is not None else "")
        )
    return 0


def _with(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def _evaluate(args: argparse.Namespace) -> int:
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
