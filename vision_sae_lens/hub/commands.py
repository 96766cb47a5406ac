"""``vision-sae-lens publish | releases | import-saev | import-prisma``."""

from __future__ import annotations

import argparse
import json

from vision_sae_lens.errors import escape_control


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the Hub sub-commands."""
    p = subparsers.add_parser(
        "publish",
        help="validate SAELens checkpoint folders and publish them (with a model card) to the Hub",
        description="Upload checkpoint folders in SAELens' <sae_id>/ layout plus a README model card, in one "
        "commit. Auth: --token, HF_TOKEN or `huggingface-cli login`.",
    )
    p.add_argument("dirs", nargs="+", help="SAELens checkpoint folders (cfg.json + sae_weights.safetensors)")
    p.add_argument("--repo-id", required=True, help="target repo, e.g. my-org/my-vision-saes")
    p.add_argument("--sae-ids", nargs="+", help="ids inside the repo (default: each SAE's hook_name)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument(
        "--dry-run", action="store_true", help="validate and list what would be uploaded; send nothing"
    )
    p.add_argument("--token", help="Hub token (default: huggingface_hub's usual lookup)")
    p.set_defaults(func=run_publish)

    r = subparsers.add_parser("releases", help="list the vision SAE releases registered with SAELens")
    r.add_argument("--json", action="store_true", help="one JSON object per SAE instead of the table")
    r.set_defaults(func=run_releases)

    s = subparsers.add_parser(
        "import-saev",
        help="convert saev sae.pt checkpoints (file, folder, release or repo) or a saev shard folder",
        description="Convert saev checkpoints to SAELens folders with the same latents; with --shards, "
        "convert a saev activation shard directory instead.",
    )
    s.add_argument("source", metavar="PATH_OR_REPO")
    s.add_argument("--out", required=True, help="output directory (one SAELens folder per checkpoint inside)")
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing SAE folders of this package with the same names (never other folders; not with --shards)",
    )
    s.add_argument("--sae-ids", nargs="+", help="only these ids of a registered release")
    s.add_argument(
        "--input-mean", help="file (.pt/.npy) with the activation mean saev subtracted before the SAE"
    )
    s.add_argument("--input-scalar", type=float, help="scalar saev multiplied centred activations by")
    s.add_argument(
        "--shards", action="store_true", help="PATH is a saev shard directory: convert the activations"
    )
    s.add_argument("--layer", type=int, help="with --shards: the saev layer to convert (default: all)")
    s.set_defaults(func=run_import_saev)

    m = subparsers.add_parser(
        "import-prisma", help="convert a ViT-Prisma SAE (.pt pickle) to a SAELens folder"
    )
    m.add_argument("source", metavar="PATH_OR_REPO")
    m.add_argument("--out", required=True, help="output SAELens folder (new or empty)")
    m.add_argument(
        "--overwrite", action="store_true", help="replace --out if it is an SAE folder of this package"
    )
    m.add_argument("--filename", help="the .pt file inside a folder or repo holding several")
    m.add_argument(
        "--trust-remote-pickle",
        action="store_true",
        help="fully unpickle the file (can execute code from it); default is a restricted unpickler",
    )
    m.set_defaults(func=run_import_prisma)


def run_publish(args: argparse.Namespace) -> int:
    """Handler of ``publish``: validate the folders, upload (or list, with --dry-run) them."""
    from vision_sae_lens.hub.publish import push_to_hub

    plan = push_to_hub(
        args.dirs,
        repo_id=args.repo_id,
        sae_ids=args.sae_ids,
        private=args.private,
        dry_run=args.dry_run,
        token=args.token,
    )
    print(plan.describe())
    print("dry run: nothing uploaded" if args.dry_run else f"published: {escape_control(plan.commit_url)}")
    return 0


def run_releases(args: argparse.Namespace) -> int:
    """Handler of ``releases``: the registered vision releases as a table (or JSON lines)."""
    from vision_sae_lens.hub.registry import format_release_table, list_vision_releases

    rows = list_vision_releases()
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(format_release_table(rows))
    return 0


def run_import_saev(args: argparse.Namespace) -> int:
    """Handler of ``import-saev``: convert saev checkpoints (or, with --shards, activation shards)."""
    if args.shards:
        from vision_sae_lens.hub.saev_shards import convert_saev_shards

        out = convert_saev_shards(args.source, out_dir=args.out, layer=args.layer)
        print(f"wrote {escape_control(out)}")
        return 0
    from vision_sae_lens.hub.saev_hub import import_saev

    for path in import_saev(
        args.source,
        out_dir=args.out,
        sae_ids=args.sae_ids,
        input_mean=args.input_mean,
        input_scalar=args.input_scalar,
        overwrite=args.overwrite,
    ):
        print(escape_control(path))
    return 0


def run_import_prisma(args: argparse.Namespace) -> int:
    """Handler of ``import-prisma``: convert one ViT-Prisma SAE to a SAELens folder."""
    from vision_sae_lens.hub.prisma import import_prisma

    sae = import_prisma(
        args.source,
        out_dir=args.out,
        filename=args.filename,
        trust_remote_pickle=args.trust_remote_pickle,
        overwrite=args.overwrite,
    )
    print(
        f"{escape_control(args.out)}: {sae.cfg.architecture()} d_in={sae.cfg.d_in} d_sae={sae.cfg.d_sae} "
        f"hook={escape_control(sae.cfg.metadata.hook_name)}"
    )
    return 0
