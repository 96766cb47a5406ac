"""``vision-sae-lens demo``: the whole pipeline on the embedded MNIST ViT, offline."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` sub-command."""
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline offline on the embedded MNIST ViT (minutes on a CPU)",
        description=(
            "Record patch activations of the shipped MNIST ViT, train a sweep of SAEs with SAELens, evaluate them "
            "(NMSE, L0, dead latents, digit accuracy with the SAE spliced in vs clean vs ablated), and write top "
            "images, heatmaps and an HTML feature browser."
        ),
    )
    parser.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    parser.add_argument("--training-tokens", type=int, default=1_000_000, help="activation rows per SAE")
    parser.add_argument(
        "--train-images", type=int, default=None, help="training digits to record (default: 4000)"
    )
    parser.add_argument(
        "--test-images", type=int, default=None, help="held-out digits to score (default: 1000)"
    )
    parser.add_argument("--site", default="blocks.1.hook_resid_post", help="site to study")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo with the budget from the command line."""
    from vision_sae_lens.demo.pipeline import DemoConfig, run_demo

    config = DemoConfig(
        site=args.site,
        training_tokens=args.training_tokens,
        train_images=args.train_images,
        test_images=args.test_images,
    )
    run_demo(args.out, config=config, progress=not args.no_progress)
    return 0
