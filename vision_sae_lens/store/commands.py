"""``vision-sae-lens cache`` (record a store; works under ``torchrun -m vision_sae_lens cache``) and
``vision-sae-lens store DIR [--verify]`` (describe / verify a store)."""

from __future__ import annotations

import argparse
import json
import os

from vision_sae_lens.errors import escape_control


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``cache`` and ``store`` sub-commands."""
    parser = subparsers.add_parser(
        "cache",
        help="record activations of a backbone on images into a store (resumable, torchrun-aware)",
        description="Record sites of a backbone on an image source into a checksummed activation store. "
        "Re-running the same command resumes an interrupted run. On N processes: "
        "torchrun --nproc_per_node N -m vision_sae_lens cache ...",
    )
    add_cache_arguments(parser)
    parser.set_defaults(func=run_cache)
    info = subparsers.add_parser(
        "store", help="describe an activation store, optionally verify its checksums"
    )
    info.add_argument("path", help="store directory")
    info.add_argument("--verify", action="store_true", help="check every shard's size and sha256")
    info.set_defaults(func=run_store)


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``cache`` options (shared with scripts that wrap the command)."""
    parser.add_argument(
        "--model", required=True, help="backbone id, e.g. timm:vit_base_patch16_clip_224.openai"
    )
    parser.add_argument(
        "--images",
        required=True,
        help="imagefolder:DIR | DIR | hf:NAME[:SPLIT] | hf-disk:DIR[:SPLIT] | demo:mnist[:SPLIT]",
    )
    parser.add_argument(
        "--sites", nargs="+", required=True, help="hook names, e.g. blocks.10.hook_resid_post"
    )
    parser.add_argument("--out", required=True, help="output store directory")
    parser.add_argument("--tokens", default="patches", choices=["patches", "cls", "registers", "all"])
    parser.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument(
        "--autocast",
        choices=["bfloat16", "float16"],
        help="run the backbone under torch.autocast in this precision (faster on a GPU; default: the model's own)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-images", type=int, default=None, help="images per shard (default ~65k rows)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda:LOCAL_RANK if available)")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="record a seeded random subset of N images (label-stratified; a stream takes its first N)",
    )
    parser.add_argument("--streaming", action="store_true", help="stream an hf: dataset (needs --limit)")
    parser.add_argument(
        "--loader-threads",
        type=int,
        default=None,
        help="image decoding threads (default: half the cores, <= 8)",
    )
    parser.add_argument(
        "--random-init", action="store_true", help="random weights instead of pretrained ones"
    )
    parser.add_argument(
        "--model-kwargs", default=None, help="JSON keyword arguments for the model constructor"
    )
    parser.add_argument("--seed", type=int, default=0, help="torch seed set before building the model")
    parser.add_argument(
        "--weights",
        help="local weights file for a timm: or open_clip: architecture id (metadata keeps its name and sha256)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_cache(args: argparse.Namespace) -> int:
    """Handler of ``cache``: record, then print a one-line summary."""
    import torch

    from vision_sae_lens.store.recorder import cache_activations

    torch.manual_seed(args.seed)
    store = cache_activations(
        args.model,
        args.images,
        sites=args.sites,
        out_dir=args.out,
        tokens=args.tokens,
        dtype=args.dtype,
        batch_size=args.batch_size,
        shard_images=args.shard_images,
        device=args.device,
        pretrained=not args.random_init,
        model_kwargs=_model_kwargs(args),
        limit=args.limit,
        streaming=args.streaming,
        loader_threads=args.loader_threads,
        autocast=args.autocast,
        progress=not args.no_progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"store {escape_control(store.path)}: {store.n_rows} rows x {len(store.sites)} sites, "
            f"fingerprint {store.fingerprint}"
        )
    return 0


def run_store(args: argparse.Namespace) -> int:
    """Handler of ``store``: print the metadata summary; with --verify, check every file."""
    from vision_sae_lens.store.reader import ActivationStore

    store = ActivationStore(args.path)
    print(store)
    meta = store.metadata
    print(f"images: {meta['n_images']} ({meta['n_skipped']} skipped), dataset: {json.dumps(meta['dataset'])}")
    if args.verify:
        stats = store.verify(progress=True)
        print(f"verify: ok (hashed {stats['bytes'] / 1e6:,.0f} MB at {stats['mb_per_s']:,.0f} MB/s)")
    return 0


def _model_kwargs(args: argparse.Namespace) -> dict[str, object] | None:
    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    if args.weights:
        kwargs["weights"] = args.weights
    return kwargs or None
