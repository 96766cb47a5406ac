"""``vision-sae-lens backbones``: list the supported backbone families, or the sites of one backbone."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``backbones`` sub-command."""
    parser = subparsers.add_parser(
        "backbones",
        help="list supported backbone families (or the sites of one backbone)",
        description="List the supported backbone id syntaxes, or with --sites ID the hook sites of one backbone.",
    )
    parser.add_argument("--sites", metavar="ID", help="backbone id whose sites to list (e.g. demo:mnist-vit)")
    parser.add_argument(
        "--random-init", action="store_true", help="build --sites ID with random weights (no download)"
    )
    parser.set_defaults(func=run_backbones)


def run_backbones(args: argparse.Namespace) -> int:
    """Print the table of families, or the sites and token layout of ``args.sites``."""
    if args.sites:
        from vision_sae_lens.backbones import HookedSAEViT

        model = HookedSAEViT.from_pretrained(args.sites, pretrained=not args.random_init)
        print(model)
        print(f"layout: {model.layout.to_dict()}")
        for site in model.site_names():
            print(f"  {site}")
        return 0
    from vision_sae_lens.backbones import list_backbones

    for row in list_backbones():
        print(f"{row['family']:<13} {row['id']}")
        print(f"{'':<13} e.g. {row['examples']}")
        print(f"{'':<13} sites: {row['sites']}")
    return 0
