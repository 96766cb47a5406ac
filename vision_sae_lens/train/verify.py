"""``vision-sae-lens verify DIR...``: check a store, an SAE folder or a training checkpoint.

It lives with training because it knows all three kinds of folder (the store below it, and the
checkpoint and SAE folders that training writes).
"""

from __future__ import annotations

import argparse
import os

from vision_sae_lens.errors import escape_control


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``verify`` sub-command."""
    ver = subparsers.add_parser(
        "verify",
        help="check an activation store, an SAE folder or a training checkpoint against its checksums",
        description="Stores: manifest vs metadata, sizes vs n_rows/site_dims/dtype, every file's sha256. SAE "
        "folders: checksums.json (--seal writes it for a folder you saved yourself). Checkpoints: "
        "checkpoint.json. Exits 1 naming every bad file.",
    )
    ver.add_argument("paths", nargs="+", metavar="DIR", help="store, SAE folder or checkpoint folder")
    ver.add_argument(
        "--seal", action="store_true", help="write checksums.json into SAE folders instead of checking them"
    )
    ver.set_defaults(func=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    """Handler of ``verify``: check (or, with --seal, seal) each folder; raises on the first bad one."""
    for path in args.paths:
        print(f"{escape_control(path)}: {verify_path(path, seal=args.seal)}")
    return 0


def verify_path(path: str | os.PathLike, *, seal: bool = False) -> str:
    """Verify a store, an SAE folder or a training checkpoint (kind told by its files); returns a summary."""
    from pathlib import Path

    from vision_sae_lens import fsutil
    from vision_sae_lens.errors import SAEFolderError
    from vision_sae_lens.store import format as fmt
    from vision_sae_lens.store.reader import ActivationStore
    from vision_sae_lens.train import checkpoint as ckpt

    folder = Path(path)
    if (folder / fmt.METADATA_FILE).is_file() or (folder / fmt.RECORDING_FILE).is_file():
        store = ActivationStore(folder)
        stats = store.verify(progress=True)
        return (
            f"store ok ({store.n_rows} rows, {len(store.manifest['shards'])} shards, fingerprint {store.fingerprint}; "
            f"hashed {stats['bytes'] / 1e6:,.0f} MB at {stats['mb_per_s']:,.0f} MB/s)"
        )
    if (folder / ckpt.CHECKPOINT_MANIFEST).is_file():
        ckpt.verify_checkpoint(folder)
        return "training checkpoint ok"
    if (folder / "cfg.json").is_file():
        if seal:
            doc = fsutil.seal_sae_folder(folder)
            return f"sealed ({len(doc['files'])} files in {fsutil.SAE_CHECKSUMS_FILE})"
        ckpt.open_sae_folder(folder, require_checksums=True)
        return "SAE folder ok"
    raise SAEFolderError(
        f"{folder} is neither an activation store ({fmt.METADATA_FILE}), an SAE folder (cfg.json) nor a training "
        f"checkpoint ({ckpt.CHECKPOINT_MANIFEST})"
    )
