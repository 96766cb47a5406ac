"""Checks a reader runs when it opens a store, before any row is trusted (normative: docs/shard_format.md).

The metadata is the root of trust: its ``fingerprint`` covers it, its ``manifest_sha256`` covers the
manifest, and the manifest's per-file sha256 cover the shards. Hashes prove only that nothing changed
since they were computed, and anyone can recompute them, so the metadata must also *mean* something
(:func:`check_metadata`: counts, widths and layout of the right types and within bounds, consistent with
each other); every path the manifest names must be the one the format fixes (so nothing points outside
the store), and every size must be what ``n_rows``, ``site_dims`` and ``dtype`` imply (so a mis-shaped
store fails at open, not halfway through training). ``verify`` also reads every row: no NaN or Inf, and
provenance within the store's images and tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vision_sae_lens import fsutil
from vision_sae_lens.errors import StoreCorruptError, UnsafePathError
from vision_sae_lens.layout import TOKEN_SELECTIONS, Layout, RowLayout, TokenLayout
from vision_sae_lens.store import format as fmt

MAX_TOKENS = 2**20
"""Most tokens per image a layout may describe (a ViT-H at 1024 px has ~5,000)."""
MAX_WIDTH = 2**20
"""Largest ``d_model`` / site width accepted."""
MAX_IMAGES = 2**31 - 1
"""Most images a store may index (provenance holds int32 image indices)."""
MAX_IMAGE_EDGE = 2**16
"""Largest image or patch edge (pixels) a layout may name."""
_FROM_META = object()


def check_metadata(root: Path, metadata: dict[str, Any]) -> None:
    """Refuse metadata whose values cannot describe a store, whatever its hashes say (StoreCorruptError).

    Types (integers are not bools or strings), ranges (:data:`MAX_TOKENS`, :data:`MAX_WIDTH`,
    :data:`MAX_IMAGES`), the layout's arithmetic, and the counts' consistency: ``n_recorded_images`` =
    ``n_images`` - ``n_skipped``, and ``n_rows`` = recorded images x selected tokens for recorded stores
    (at most that for ``StoreWriter`` stores).
    """
    problems: list[str] = []
    meta = metadata

    def integer(key: str, lo: int, hi: int, value: Any = _FROM_META) -> int | None:
        value = meta.get(key) if value is _FROM_META else value
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            problems.append(f"{key} is {value!r}, not an integer in [{lo}, {hi}]")
            return None
        return value

    if meta.get("dtype") not in fmt.DTYPES:
        problems.append(f"dtype is {meta.get('dtype')!r}, not one of {', '.join(fmt.DTYPES)}")
    integer("d_model", 1, MAX_WIDTH)
    sites, site_dims = meta.get("sites"), meta.get("site_dims")
    if (
        not isinstance(sites, list)
        or not sites
        or len(set(map(str, sites))) != len(sites)
        or not isinstance(site_dims, dict)
        or sorted(site_dims) != sorted(map(str, sites))
    ):
        problems.append(f"sites {sites!r} must be distinct names, the same as the keys of site_dims")
    else:
        for site, width in site_dims.items():
            try:
                fsutil.check_name(site, what="site name")
            except UnsafePathError as exc:
                problems.append(str(exc))
            if site.startswith("_"):
                problems.append(f"site name {site!r} starts with '_' (reserved for {fmt.PROVENANCE})")
            integer(f"site_dims[{site!r}]", 1, MAX_WIDTH, width)
    layout = _layout(meta.get("layout"), problems)
    version = meta.get("format_version")
    if isinstance(layout, RowLayout) and not (isinstance(version, int) and version >= fmt.MIN_ROWS_VERSION):
        problems.append(
            f"format_version {version!r} cannot hold plain rows (they came with version {fmt.MIN_ROWS_VERSION})"
        )
    n_tokens = _token_count(meta, layout, problems)
    n_images = integer("n_images", 0, MAX_IMAGES)
    recorded = integer("n_recorded_images", 0, MAX_IMAGES)
    n_rows = integer("n_rows", 0, MAX_IMAGES * MAX_TOKENS)
    skipped = meta.get("skipped")
    if not isinstance(skipped, list) or integer("n_skipped", 0, MAX_IMAGES) != len(skipped):
        problems.append("skipped must be a list of n_skipped entries")
    elif n_images is not None and recorded is not None and recorded != n_images - len(skipped):
        problems.append(f"n_recorded_images {recorded} is not n_images {n_images} - n_skipped {len(skipped)}")
    elif n_images is not None:
        for entry in skipped:
            image = entry.get("image_idx") if isinstance(entry, dict) else None
            integer("skipped image_idx", 0, max(n_images - 1, 0), image)
    if None not in (recorded, n_rows, n_tokens):
        assert recorded is not None and n_rows is not None and n_tokens is not None  # for mypy
        exact = (meta.get("recording") or {}).get("writer") == "cache_activations"
        if n_rows > recorded * n_tokens or (exact and n_rows != recorded * n_tokens):
            problems.append(
                f"n_rows {n_rows} does not fit {recorded} recorded images of {n_tokens} tokens "
                f"({'exactly ' if exact else 'at most '}{recorded * n_tokens} rows)"
            )
    if not isinstance(meta.get("has_labels"), bool):
        problems.append(f"has_labels is {meta.get('has_labels')!r}, not true or false")
    names = meta.get("label_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        problems.append("label_names must be null or a list of strings")
    if problems:
        raise StoreCorruptError(
            f"{root / fmt.METADATA_FILE} does not describe a valid store: {'; '.join(problems)}. It was edited "
            "or written by something else; re-record the store."
        )


def _layout(value: Any, problems: list[str]) -> Layout | None:
    if not isinstance(value, dict):
        problems.append(f"layout is {value!r}, not an object")
        return None
    if "kind" in value:  # plain rows (format version 2): exactly the one row layout there is
        if value != RowLayout().to_dict():
            problems.append(
                f"layout {value} is not an image layout nor the plain-row layout {RowLayout().to_dict()}"
            )
            return None
        return RowLayout()
    edges = [value.get("image_size"), value.get("patch_size")]
    if not all(
        isinstance(pair, list)
        and len(pair) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_IMAGE_EDGE for v in pair)
        for pair in edges
    ):
        problems.append(
            f"layout image_size / patch_size {edges} must be pairs of integers in [1, {MAX_IMAGE_EDGE}]"
        )
        return None
    registers = value.get("n_registers", 0)
    if (
        not isinstance(value.get("has_cls"), bool)
        or isinstance(registers, bool)
        or not isinstance(registers, int)
    ):
        problems.append("layout has_cls must be true or false and n_registers an integer")
        return None
    if not 0 <= registers <= MAX_TOKENS or any(i % p for i, p in zip(*edges, strict=True)):
        problems.append(
            f"layout {value} is impossible (image size not a multiple of the patch size, or registers)"
        )
        return None
    layout = TokenLayout.from_dict(value)
    if layout.n_tokens > MAX_TOKENS:
        problems.append(f"layout has {layout.n_tokens} tokens per image, more than {MAX_TOKENS}")
        return None
    derived = {k: v for k, v in layout.to_dict().items() if k in value}
    if any(value[k] != v for k, v in derived.items()):
        problems.append(f"layout {value} disagrees with its own arithmetic ({layout.to_dict()})")
        return None
    return layout


def _token_count(meta: dict[str, Any], layout: Layout | None, problems: list[str]) -> int | None:
    """Tokens recorded per image (the selection's size), checked against ``token_indices``."""
    tokens = meta.get("tokens")
    if tokens not in TOKEN_SELECTIONS:
        problems.append(f"tokens is {tokens!r}, not one of {', '.join(TOKEN_SELECTIONS)}")
        return None
    if layout is None:
        return None
    try:
        expected = layout.token_indices(tokens).tolist()
    except ValueError as exc:
        problems.append(str(exc))
        return None
    if meta.get("token_indices") != expected:
        problems.append(f"token_indices do not match the {tokens!r} tokens of the layout")
        return None
    return len(expected)


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
    with _malformed(path):
        sites = set(metadata["site_dims"])
        for position, shard in enumerate(manifest["shards"]):
            expected_paths = {site: fmt.site_file(site, position) for site in sites}
            if set(shard["files"]) != sites:
                raise StoreCorruptError(
                    f"{path}: shard {position} lists sites {sorted(shard['files'])}, the metadata {sorted(sites)}"
                )
            for site, entry in shard["files"].items():
                _check_entry_path(root, entry["path"], expected_paths[site])
            _check_entry_path(root, shard["provenance"]["path"], fmt.provenance_file(position))
        if "labels" in manifest:
            _check_entry_path(root, manifest["labels"]["path"], fmt.LABELS_FILE)
    return manifest


@contextlib.contextmanager
def _malformed(path: Path) -> Iterator[None]:
    """A manifest of the wrong shape (a missing key, a string where a number belongs) is a corrupt store."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StoreCorruptError(
            f"{path} is malformed ({type(exc).__name__}: {exc}); re-record the store"
        ) from exc


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
    with _malformed(root / fmt.MANIFEST_FILE):
        _check_shapes(root, metadata, manifest)


def _check_shapes(root: Path, metadata: dict[str, Any], manifest: dict[str, Any]) -> None:
    meta, itemsize = metadata, fmt.NUMPY_STORAGE[fmt.check_dtype(metadata["dtype"])].itemsize
    _check_shard_list(root, metadata, manifest)
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


def _check_shard_list(root: Path, metadata: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Shards numbered 0..n-1 as ``n_shards`` says, with integer counts, sizes and image ranges in order."""
    shards = manifest.get("shards")
    if not isinstance(shards, list) or len(shards) != metadata.get("n_shards"):
        raise StoreCorruptError(f"store {root}: the manifest's shard list does not hold n_shards entries")
    image = 0
    for position, shard in enumerate(shards):
        numbers = [shard.get("index"), shard.get("n_rows"), shard.get("row_start")]
        numbers += [e.get("bytes") for e in (*shard["files"].values(), shard["provenance"])]
        if shard.get("index") != position or not all(_is_count(v) for v in numbers):
            raise StoreCorruptError(
                f"store {root}: manifest shard {position} has an index, row count or size that is not a "
                "non-negative integer in order"
            )
        if "image_start" in shard or "image_stop" in shard:
            start, stop = shard.get("image_start"), shard.get("image_stop")
            if not (_is_count(start) and _is_count(stop) and start == image and stop >= start):
                raise StoreCorruptError(f"store {root}: shard {position} has image range [{start}, {stop})")
            image = stop
    if image and image != metadata.get("n_images"):
        raise StoreCorruptError(
            f"store {root}: its shards cover {image} images, the metadata says {metadata.get('n_images')}"
        )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def scan_contents(
    root: Path, metadata: dict[str, Any], manifest: dict[str, Any], *, progress: bool = False
) -> list[str]:
    """Read every shard file the manifest lists and return what is wrong with its content (empty: nothing):
    no row holds NaN or Inf (a diverging backbone, or float16 overflow), and provenance names images
    ``0..n_images-1`` and the recorded tokens in strictly increasing (image, token) order, across shards too.

    Checksums are :class:`~vision_sae_lens.store.integrity.Verifier`'s job; files that are missing or of the
    wrong size are skipped here (the caller reports them). Files are scanned side by side on the hash threads
    (numpy releases the GIL).
    """
    from tqdm.auto import tqdm

    from vision_sae_lens.store.integrity import hash_pool

    dtype, n_images = metadata["dtype"], int(metadata["n_images"])
    tokens = np.asarray(metadata["token_indices"], dtype=np.int64)
    files = [(shard, site, entry) for shard in manifest["shards"] for site, entry in shard["files"].items()]
    files += [(shard, None, shard["provenance"]) for shard in manifest["shards"]]

    def scan(
        item: tuple[dict[str, Any], str | None, dict[str, Any]],
    ) -> tuple[list[str], int | None, int | None]:
        shard, site, entry = item
        path = root / entry["path"]
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            return [], None, None
        if site is None:
            width, storage = 2, fmt.PROVENANCE_DTYPE
        else:
            width, storage = int(metadata["site_dims"][site]), fmt.NUMPY_STORAGE[dtype]
        problems: list[str] = []
        bad_rows, first_bad, first_key, last_key = 0, -1, None, -1
        for first, rows in _row_blocks(path, width, storage):
            if site is not None:
                bad = np.flatnonzero(nonfinite_rows(rows, dtype))
                first_bad = int(first + bad[0]) if len(bad) and first_bad < 0 else first_bad
                bad_rows += len(bad)
                continue
            if first_key is None and len(rows):
                first_key = int(rows[0, 0]) * (1 << 32) + int(rows[0, 1])
            last_key, problem = _check_provenance(rows, n_images, tokens, last_key)
            if problem:
                problems.append(f"{entry['path']}: {problem}")
                break
        if bad_rows:
            problems.append(
                f"{entry['path']}: {bad_rows} of {shard['n_rows']} rows hold NaN or Inf (first: row "
                f"{shard['row_start'] + first_bad} of the store); the backbone diverged or float16 overflowed"
            )
        return problems, first_key, (last_key if site is None and last_key >= 0 else None)

    problems: list[str] = []
    previous_last = -1
    results = hash_pool().map(scan, files)
    for (_, site, entry), (found, first_key, last_key) in tqdm(
        zip(files, results, strict=True),
        total=len(files),
        desc="verify rows",
        unit="file",
        disable=not progress,
    ):
        problems += found
        if site is None and first_key is not None:  # provenance files come in shard order
            if first_key <= previous_last:
                problems.append(f"{entry['path']}: rows not in strictly increasing (image, token) order")
            previous_last = last_key if last_key is not None else previous_last
    return problems


def nonfinite_rows(rows: np.ndarray, dtype: str) -> np.ndarray:
    """(n,) bool: which rows of ``rows`` (storage dtype, (n, d)) hold a NaN or an infinity."""
    unsigned, magnitude, infinity = _BITS[dtype]
    return (rows.view(unsigned) & magnitude).max(axis=1) >= infinity


_BITS = {
    "float32": (np.uint32, 0x7FFFFFFF, 0x7F800000),
    "float16": (np.uint16, 0x7FFF, 0x7C00),
    "bfloat16": (np.uint16, 0x7FFF, 0x7F80),
}
"""Per storage dtype: its bits as an unsigned integer, the mask that drops the sign, and +Inf's pattern. A
value is Inf or NaN exactly when its unsigned magnitude is at least +Inf's: one mask and one max over the
integers, several times faster than ``np.isfinite`` (numpy has no native float16 arithmetic)."""


def _row_blocks(
    path: Path, width: int, storage: np.dtype, block_bytes: int = 2**20
) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, rows (n, width))`` of a raw file, read in blocks of about ``block_bytes`` into one
    reused buffer (each block is valid until the next is read)."""
    row_bytes = width * storage.itemsize
    block = bytearray(max(1, block_bytes // row_bytes) * row_bytes)
    first = 0
    with open(path, "rb") as f:
        while n := f.readinto(block):
            # whole rows only: the file's size was checked, a short read can only come from a change under us
            rows = np.frombuffer(block, dtype=storage, count=n // row_bytes * width).reshape(-1, width)
            yield first, rows
            first += len(rows)


def _check_provenance(
    rows: np.ndarray, n_images: int, tokens: np.ndarray, last_key: int
) -> tuple[int, str | None]:
    """Provenance rows ``[image, token]`` inside the store and after ``last_key``; (new last key, problem)."""
    image_n, token_n = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64)
    if len(image_n) and (image_n.min() < 0 or image_n.max() >= n_images):
        return last_key, f"image indices outside 0..{n_images - 1}"
    if not np.isin(token_n, tokens).all():
        return last_key, "token indices that are not among the recorded tokens"
    key = image_n * (1 << 32) + token_n
    if len(key) and (key[0] <= last_key or (np.diff(key) <= 0).any()):
        return last_key, "rows not in strictly increasing (image, token) order"
    return (int(key[-1]) if len(key) else last_key), None
