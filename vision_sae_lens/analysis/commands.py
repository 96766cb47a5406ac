"""``vision-sae-lens analyze``: write the static HTML feature browser of an SAE over an activation store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``analyze`` sub-command."""
    parser = subparsers.add_parser(
        "analyze",
        help="build a static HTML feature browser for an SAE over an activation store",
        description=(
            "Scan a store with an SAE (statistics and top-k images of every latent) and write a static site: "
            "OUT/index.html (searchable table of latents) and a page per latent with its top images, heatmaps "
            "and activation histogram. Open index.html in a browser; no server needed."
        ),
    )
    parser.add_argument(
        "--sae", required=True, metavar="DIR", help="SAELens checkpoint folder (cfg.json + weights)"
    )
    parser.add_argument(
        "--store", required=True, metavar="DIR", help="activation store holding the SAE's site"
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder for the browser: new or empty (built beside it, then renamed into place)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing browser of this package in --out (never another folder)",
    )
    parser.add_argument(
        "--images",
        metavar="SPEC",
        help="the store's images (imagefolder:DIR, hf:NAME[:SPLIT], ...); default: re-open from the store's description",
    )
    parser.add_argument("-k", "--k", type=int, default=16, help="top images per latent (default 16)")
    parser.add_argument(
        "--by", choices=("max", "mean"), default="max", help="rank images by max or mean activation"
    )
    parser.add_argument(
        "--latents",
        metavar="IDS",
        help="comma-separated latents to give pages (default: the highest interest scores; see docs/analysis.md)",
    )
    parser.add_argument("--max-pages", type=int, default=200, help="latent pages when --latents is not given")
    parser.add_argument(
        "--max-rows",
        type=int,
        metavar="N",
        help="scan a seeded random, label-stratified sample of whole images holding at most N rows (default: "
        "evaluate's density budget, 10,000,000 rows, so both count dead/dense latents on the same rows); 0 scans "
        "every row",
    )
    parser.add_argument("--batch-size", type=int, default=4096, help="store rows per batch")
    parser.add_argument("--device", default="cpu", help="device for the SAE (default cpu)")
    parser.add_argument("--title", help="page title")
    parser.add_argument(
        "--model",
        help="backbone id ('store' = the store's backbone) to show each page's ablation effect",
    )
    parser.add_argument(
        "--weights",
        help="local weights file of --model (needed to rebuild a store's non-pretrained backbone)",
    )
    parser.add_argument(
        "--names",
        metavar="FILE",
        help="names.json of this SAE on this store to show (default: the SAE folder's own, when it matches)",
    )
    parser.add_argument("--namer", metavar="ID", help="name the latents while building (see `explain`)")
    parser.add_argument(
        "--concepts",
        default="builtin:general",
        metavar="FILE|labels|builtin:NAME",
        help="vocabulary of --namer",
    )
    parser.set_defaults(func=run_analyze)


def run_analyze(args: argparse.Namespace) -> int:
    """Load the SAE and store, build the browser, print where it is and the SAE summary."""
    from vision_sae_lens.analysis.browser import build_browser
    from vision_sae_lens.analysis.browser_names import names_beside
    from vision_sae_lens.fsutil import check_output_folder
    from vision_sae_lens.store import ActivationStore
    from vision_sae_lens.train.checkpoint import open_sae_folder

    # The output folder, checksums.json (when the SAE folder has one) and cfg.json are checked before any work.
    check_output_folder(
        Path(args.out).absolute(), overwrite=args.overwrite, kinds=("browser",), what="feature browser"
    )
    sae = open_sae_folder(args.sae, device=args.device or "cpu")
    store = ActivationStore(args.store)
    latents = [int(x) for x in args.latents.split(",") if x.strip()] if args.latents else None
    names = args.names or (None if args.namer else names_beside(args.sae, sae, store))
    model = None
    if args.model:
        from vision_sae_lens.backbones.recorded import backbone_for

        # checked against the store's recorded weights before the scan
        model = backbone_for(args.model, store.metadata, weights=args.weights, what=f"store {args.store}")
    # no --max-rows: build_browser's default budget; 0: every row
    budget: dict[str, Any] = {} if args.max_rows is None else {"max_rows": args.max_rows or None}
    site = build_browser(
        sae,
        store,
        out_dir=args.out,
        images=args.images,
        k=args.k,
        by=args.by,
        latents=latents,
        max_pages=args.max_pages,
        batch_size=args.batch_size,
        **budget,
        title=args.title,
        model=model,
        overwrite=args.overwrite,
        names=names,
        namer=args.namer,
        concepts=args.concepts if args.namer else None,
    )
    print(json.dumps(site.summary, indent=2))
    print(f"feature browser: {site.index.resolve().as_uri()}")
    return 0
