"""``vision-sae-lens explain``: name every latent of an SAE and write ``names.json`` beside its ``eval.json``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``explain`` sub-command."""
    parser = subparsers.add_parser(
        "explain",
        help="name every latent of an SAE (image-text model or labels), with a detection AUROC per name",
        description=(
            "Name every latent of an SAE over an activation store: with --namer (an image-text model such as "
            "open_clip:ViT-B-16/openai, hf:openai/clip-vit-base-patch16 or demo:shapes-clip) the concept of "
            "--concepts whose image-text similarity best matches the latent's top images (CLIP-Dissect style); "
            "without it the dataset label it fires on with the best F1. Each name comes with runner-ups and its "
            "detection AUROC on held-out images. Writes SAE/names.json (or --out)."
        ),
    )
    parser.add_argument("sae", metavar="SAE", help="SAELens checkpoint folder (cfg.json + weights)")
    parser.add_argument(
        "--store", required=True, metavar="DIR", help="activation store holding the SAE's site"
    )
    parser.add_argument(
        "--namer", metavar="ID", help="image-text model id (default: none, name by the store's labels)"
    )
    parser.add_argument(
        "--concepts",
        default="builtin:general",
        metavar="FILE|labels|builtin:NAME",
        help="vocabulary: a text file (one concept per line), 'labels' (the dataset's class names), "
        "builtin:general or builtin:shapes (default builtin:general)",
    )
    parser.add_argument(
        "--template",
        action="append",
        metavar="TEXT",
        help="prompt template with one '{}' (repeatable; several are averaged; default: the concept as is)",
    )
    parser.add_argument("--weights", metavar="FILE", help="local weights file of an open_clip:ARCH namer")
    parser.add_argument(
        "--images", metavar="SPEC", help="the store's images (default: re-open from the store)"
    )
    parser.add_argument("--out", metavar="FILE", help="where to write names.json (default: SAE/names.json)")
    parser.add_argument(
        "--similarity", choices=("contrast", "soft_wpmi"), default="contrast", help="similarity"
    )
    parser.add_argument(
        "--rerank",
        type=int,
        default=3,
        help="re-order this many best names by detection on the naming images (1: similarity alone)",
    )
    parser.add_argument("--by", choices=("max", "mean"), default="max", help="rank images by max or mean")
    parser.add_argument("--top-k", type=int, default=50, help="top images per latent that name it")
    parser.add_argument("--runner-ups", type=int, default=5, help="names kept after the best one")
    parser.add_argument("--max-images", type=int, default=5000, help="probe images drawn from the store")
    parser.add_argument("--heldout", type=float, default=0.2, help="share of the probe images held out")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probe images and their split")
    parser.add_argument("--batch-size", type=int, default=4096, help="store rows per batch")
    parser.add_argument("--device", default="cpu", help="device for the SAE and the namer (default cpu)")
    parser.set_defaults(func=run_explain)


def run_explain(args: argparse.Namespace) -> int:
    """Load the SAE and the store, name the latents, write names.json, print the summary."""
    from vision_sae_lens.analysis.concepts import load_concepts
    from vision_sae_lens.analysis.naming import check_sae_matches_store, name_latents, write_names
    from vision_sae_lens.store import ActivationStore
    from vision_sae_lens.train.checkpoint import open_sae_folder

    sae = open_sae_folder(args.sae, device=args.device or "cpu")
    store = ActivationStore(args.store)
    # Cheap checks first: a wrong store or a bad vocabulary fails before a namer is loaded.
    check_sae_matches_store(sae, store)
    namer = None
    if args.namer:
        load_concepts(args.concepts, label_names=store.label_names)
        from vision_sae_lens.analysis.namer import DEFAULT_TEMPLATES, ImageTextNamer

        namer = ImageTextNamer(
            args.namer,
            templates=tuple(args.template or DEFAULT_TEMPLATES),
            device=args.device,
            weights=args.weights,
        )
    names = name_latents(
        sae, store, namer=namer, concepts=args.concepts if namer is not None else None, images=args.images,
        similarity=args.similarity, rerank=args.rerank, by=args.by, top_k=args.top_k, runner_ups=args.runner_ups,
        max_images=args.max_images, heldout_fraction=args.heldout, seed=args.seed, batch_size=args.batch_size,
    )  # fmt: skip
    path = write_names(names, Path(args.out) if args.out else Path(args.sae))
    print(json.dumps(names.summary(), indent=2))
    print(f"latent names: {path}")
    return 0
