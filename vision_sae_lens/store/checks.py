"""Checks a reader runs when it opens a store, before any row is trusted (normative: docs/shard_format.md).

The metadata is the root of trust: its ``fingerprint`` covers it, its ``manifest_sha256`` covers the
manifest, and the manifest's per-file sha256 cover the shards. On top of the hashes, every path the
manifest names must be the one the format fixes (so nothing points outside the store), and every size
must be what ``n_rows``, ``site_dims`` and ``dtype`` imply (so a mis-shaped store fails at open, not
halfway through training).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from vision_sae_lens import fsutil
from vision_sae_lens.errors import StoreCorruptError
from vision_sae_lens.store import format as fmt


def read_manifest(root: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """The manifest, checked against the metadata's ``manifest_sha256`` and for paths inside the store."""
    path = root / fmt.MANIFEST_FILE
    try:
        raw = fsutil.read_capped(path)  # a regular file of bounded size, as every JSON read
    except OSError as exc:
        raise StoreCorruptError(f"cannot read {path}: {exc}") from exc
    expected = metadata.get("manifest_sha256")
    if expected is None or hashlib.sha256(raw).hexdigest() != expected:
        raise StoreCorruptError(
            f"{path} does not match the manifest_sha256 in {fmt.METADATA_FILE} (edited or corrupted): its shard "
            "list and checksums cannot be trusted. Re-record the store."
        )
    if fmt.fingerprint_of(metadata) != metadata.get("fingerprint"):
        raise StoreCorruptError(
            f"{root / fmt.METADATA_FILE}: its fingerprint does not match its content (edited); re-record the store."
        )
    manifest = fmt.read_json(path)
    sites = set(metadata["site_dims"])
    for shard in manifest["shards"]:
        k = shard["index"]
        expected_paths = {site: fmt.site_file(site, k) for site in sites}
        if set(shard["files"]) != sites:
            raise StoreCorruptError(
                f"{path}: shard {k} lists sites {sorted(shard['files'])}, the metadata {sorted(sites)}"
            )
        for site, entry in shard["files"].items():
            _check_entry_path(root, entry["path"], expected_paths[site])
        _check_entry_path(root, shard["provenance"]["path"], fmt.provenance_file(k))
    if "labels" in manifest:
        _check_entry_path(root, manifest["labels"]["path"], fmt.LABELS_FILE)
    return manifest


def _check_entry_path(root: Path, rel: str, expected: str) -> None:
    # Paths are fixed by the format; anything else (absolute, '..', another file) is refused.
    if rel != expected:
        raise StoreCorruptError(
            f"{root / fmt.MANIFEST_FILE} names {rel!r} where the format puts {expected!r}; "
            "manifest paths must stay inside the store. Refusing to open it."
        )
    fsutil.check_inside(root, rel, what="manifest path")


def check_shapes(root: Path, metadata: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Sizes the manifest lists must be what ``n_rows``, ``site_dims`` and ``dtype`` imply."""
    meta, itemsize = metadata, fmt.NUMPY_STORAGE[fmt.check_dtype(metadata["dtype"])].itemsize
    row = 0
    for shard in manifest["shards"]:
        n = int(shard["n_rows"])
        if shard["row_start"] != row:
            raise StoreCorruptError(
                f"store {root}: shard {shard['index']} starts at row {shard['row_start']}, expected {row}"
            )
        for site, entry in shard["files"].items():
            want = n * int(meta["site_dims"][site]) * itemsize
            if entry["bytes"] != want:
                raise StoreCorruptError(
                    f"store {root}: {entry['path']} is listed with {entry['bytes']} bytes, but {n} rows of "
                    f"{meta['site_dims'][site]} {meta['dtype']} values take {want}; the store is mis-shaped."
                )
        if shard["provenance"]["bytes"] != n * 2 * fmt.PROVENANCE_DTYPE.itemsize:
            raise StoreCorruptError(f"store {root}: {shard['provenance']['path']} does not hold {n} rows")
        row += n
    if row != int(meta["n_rows"]) or row != int(manifest["n_rows"]):
        raise StoreCorruptError(
            f"store {root}: its shards hold {row} rows, the metadata says {meta['n_rows']}; mis-shaped."
        )
    if "labels" in manifest and manifest["labels"]["bytes"] != 4 * int(meta["n_images"]):
        raise StoreCorruptError(f"store {root}: {fmt.LABELS_FILE} is not one int32 per image")
