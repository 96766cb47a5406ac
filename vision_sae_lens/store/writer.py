"""Writing shards: one shard at a time (:class:`ShardBuilder`), and whole stores from arrays you
already have (:class:`StoreWriter`, e.g. to convert another tool's activation dumps).

A shard's files are written under ``.tmp`` names and hashed while they are written; ``commit()``
fsyncs, renames them and then writes the shard's commit record, so a record on disk always describes
complete files. :func:`finalize_store` turns the records into ``manifest.json`` and writes
``metadata.json`` last: the store exists, for readers, only once every shard is in.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from vision_sae_lens import fsutil
from vision_sae_lens.data.files import ImageFolder, PathList, image_files
from vision_sae_lens.data.subsets import Subset
from vision_sae_lens.errors import ConfigError, NonFiniteError, StoreError, StoreMismatchError
from vision_sae_lens.layout import Layout, check_token_selection
from vision_sae_lens.store import checks, integrity
from vision_sae_lens.store import format as fmt

if TYPE_CHECKING:
    from vision_sae_lens.contracts import ImageSource
    from vision_sae_lens.store.reader import ActivationStore


class ShardBuilder:
    """The files of one shard being written: one per site plus provenance, hashed block by block on the fly."""

    def __init__(self, root: Path, index: int, site_dims: Mapping[str, int], dtype: str) -> None:
        self.root, self.index, self.dtype = Path(root), int(index), dtype
        self.site_dims = dict(site_dims)
        self.n_rows = 0
        self.committed = False
        paths = {site: fmt.site_file(site, index) for site in site_dims} | {
            fmt.PROVENANCE: fmt.provenance_file(index)
        }
        self._files: dict[str, tuple[str, Path, Any, Any]] = {}
        for key, rel in paths.items():
            # A unique temp name: two writers (or a writer and a killed one's leftovers) never share a file.
            tmp = fsutil.temp_name(self.root / rel)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            f = open(tmp, "wb")  # noqa: SIM115 - closed in commit/abort
            self._files[key] = (rel, tmp, f, integrity.BlockHasher(integrity.BLOCK_BYTES))

    def add(self, site_rows: Mapping[str, np.ndarray], provenance_n2: np.ndarray) -> None:
        """Append rows (storage dtype, (n, d) per site) and their (n, 2) int32 [image_idx, token_idx]."""
        n = len(provenance_n2)
        for key, arr in (*site_rows.items(), (fmt.PROVENANCE, provenance_n2)):
            if len(arr) != n:
                raise ConfigError(f"{key}: {len(arr)} rows but {n} provenance rows")
            _, _, f, digest = self._files[key]
            view = np.ascontiguousarray(arr).data.cast("B")
            f.write(view)
            digest.update(view)
        self.n_rows += n

    def commit(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Make the shard visible (fsync + rename every file, then write its record); returns the record."""
        files = {}
        for key, (rel, tmp, f, digest) in self._files.items():
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
            f.close()
            os.replace(tmp, self.root / rel)
            files[key] = {"path": rel, "bytes": size, "block_sha256": digest.hexdigests()}
        provenance = files.pop(fmt.PROVENANCE)
        record = {"index": self.index, "n_rows": self.n_rows, "files": files, "provenance": provenance}
        record.update(extra or {})
        fmt.write_json_atomic(self.root / fmt.record_file(self.index), record)
        self.committed = True
        return record

    def abort(self) -> None:
        """Close and delete the partial files (nothing of this shard stays visible)."""
        if self.committed:
            return
        for _, tmp, f, _ in self._files.values():
            f.close()
            tmp.unlink(missing_ok=True)


def finalize_store(
    root: Path,
    settings: dict[str, Any],
    records: Sequence[dict[str, Any]],
    *,
    n_images: int,
    labels_n: np.ndarray | None,
    skipped: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Write labels.bin, manifest.json and, last, metadata.json (with its fingerprint); returns metadata."""
    root = Path(root)
    records = sorted(records, key=lambda r: r["index"])
    if [r["index"] for r in records] != list(range(len(records))):
        raise StoreError(f"cannot finish the store in {root}: shard records are not 0..{len(records) - 1}")
    shards, row = [], 0
    for rec in records:
        entry = {k: rec[k] for k in ("index", "n_rows", "files", "provenance")}
        entry.update(row_start=row, **{k: rec[k] for k in ("image_start", "image_stop") if k in rec})
        shards.append(entry)
        row += rec["n_rows"]
    manifest: dict[str, Any] = {
        "format": fmt.FORMAT_NAME,
        "format_version": fmt.FORMAT_VERSION,
        "block_bytes": integrity.BLOCK_BYTES,
        "n_rows": row,
        "shards": shards,
    }
    if labels_n is not None:
        labels = np.ascontiguousarray(labels_n, dtype=fmt.PROVENANCE_DTYPE)
        fmt.write_atomic(root / fmt.LABELS_FILE, labels.tobytes())
        manifest["labels"] = {
            "path": fmt.LABELS_FILE,
            "bytes": labels.nbytes,
            "sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
        }
    manifest_text = fmt.canonical_json(manifest)
    fmt.write_atomic(root / fmt.MANIFEST_FILE, manifest_text.encode())
    skipped = sorted(skipped, key=lambda s: s["image_idx"])
    recorded = n_images - len(skipped)
    metadata = {
        **settings,
        "format": fmt.FORMAT_NAME,
        "format_version": fmt.FORMAT_VERSION,
        "n_images": int(n_images),
        "n_recorded_images": int(recorded),
        "n_rows": row,
        "n_shards": len(shards),
        "has_labels": labels_n is not None,
        "skipped": list(skipped),
        "n_skipped": len(skipped),
        "manifest_sha256": hashlib.sha256(manifest_text.encode()).hexdigest(),
    }
    metadata["fingerprint"] = fmt.fingerprint_of(metadata)
    fmt.write_json_atomic(root / fmt.METADATA_FILE, metadata)
    return metadata


def check_or_claim_directory(
    root: Path, settings: dict[str, Any], *, source_state: str | None = None
) -> bool:
    """Refuse a directory recorded with other settings or from changed images; claim an empty one.

    ``source_state`` identifies the image files' current contents (names, sizes, mtimes); it is kept in
    ``recording.json`` (not in the portable metadata) and must match on every re-run. Call under the
    directory's :class:`~vision_sae_lens.fsutil.DirLock`. Returns True if the store is already complete.
    """
    root = Path(root)
    rec_path = root / fmt.RECORDING_FILE
    if rec_path.exists():
        previous = fmt.read_json(rec_path)
        previous_state = previous.pop(SOURCE_STATE_KEY, None)
        if previous != settings:
            diff = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            shown = "; ".join(
                f"{k}: stored {_short(previous.get(k))} vs now {_short(settings.get(k))}" for k in diff[:6]
            )
            raise StoreMismatchError(
                f"{root} holds a store recorded with different settings ({shown}). Re-run with the same "
                "settings to resume or reuse it, or choose another output directory (or delete this one)."
            )
        if previous_state != source_state:
            raise StoreMismatchError(
                f"the images changed since {root} was recorded (same settings, but files were edited, added, "
                "removed or touched: their names, sizes or modification times differ). Old and new rows must "
                f"not be mixed: record into a new output directory, or delete {root} to start over."
            )
        return (root / fmt.METADATA_FILE).exists()
    check_claimable(root)
    root.mkdir(parents=True, exist_ok=True)
    record = dict(settings) if source_state is None else {**settings, SOURCE_STATE_KEY: source_state}
    fmt.write_json_atomic(rec_path, record)
    return False


SOURCE_STATE_KEY = "source_state"


def source_state(source: ImageSource) -> str | None:
    """Hash of (name, size, mtime) of every image file that decides the rows (None: not file-based)."""
    files = source_files(source)
    if files is None:
        return None
    digest = hashlib.sha256()
    for name, path in files:
        try:
            st = os.stat(path)
            digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{name}\0missing\n".encode())
    return digest.hexdigest()


def source_files(source: ImageSource) -> list[tuple[str, Path]] | None:
    """``(name, path)`` of the image files behind ``source``, in source order (None: not file-based)."""
    if isinstance(source, Subset):  # --limit
        files = source_files(source.source)
        return None if files is None else [files[i] for i in source.indices]
    if isinstance(source, (ImageFolder, PathList)):
        return image_files(source)
    return None


def check_claimable(root: Path) -> None:
    """Refuse (before anything is written) a non-empty directory that is not a store being recorded."""
    if (root / fmt.RECORDING_FILE).exists() or not root.exists():
        return
    if not root.is_dir():
        raise StoreMismatchError(f"{root} exists and is not a directory; choose another output directory.")
    # Our lock file and a killed claim's temp file do not make a directory foreign.
    if any(not _ours_transient(p.name) for p in root.iterdir()):
        raise StoreMismatchError(
            f"{root} is not empty and is not an activation store being recorded (no {fmt.RECORDING_FILE}); "
            "choose an empty or new output directory."
        )


def _ours_transient(name: str) -> bool:
    return name == fsutil.LOCK_FILE or fsutil.is_own_temp(name)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class StoreWriter:
    """Build a store from activation rows you already have (single process, not resumable).

    ``append`` takes rows in (image, token) order, ``finish`` writes the manifest and metadata and
    returns the :class:`~vision_sae_lens.store.ActivationStore`. Shards hold ``shard_rows`` rows each
    (the last one the rest).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        backbone_id: str,
        sites: Sequence[str] | Mapping[str, int],
        d_model: int,
        layout: Layout,
        tokens: str,
        dtype: str = "float16",
        dataset: Mapping[str, Any] | None = None,
        preprocessing: Mapping[str, Any] | None = None,
        label_names: Sequence[str] | None = None,
        shard_rows: int = 65536,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        check_token_selection(tokens)
        fmt.check_dtype(dtype)
        if shard_rows < 1:
            raise ConfigError(f"shard_rows must be >= 1, got {shard_rows}")
        self.root = Path(out_dir)
        site_dims = dict(sites) if isinstance(sites, Mapping) else {s: int(d_model) for s in sites}
        if not site_dims:
            raise ConfigError("sites must name at least one site")
        for site in site_dims:  # each site becomes the folder shards/<site>/
            fsutil.check_name(site, what="site name")
            if site.startswith("_"):
                raise ConfigError(
                    f"site name {site!r} must not start with '_' (reserved for {fmt.PROVENANCE})"
                )
        self.site_dims, self.dtype, self.shard_rows = site_dims, dtype, int(shard_rows)
        self.settings = {
            "backbone_id": backbone_id,
            "preprocessing": dict(preprocessing or {}),
            "layout": layout.to_dict(),
            "tokens": tokens,
            "token_indices": layout.token_indices(tokens).tolist(),
            "sites": list(site_dims),
            "site_dims": site_dims,
            "d_model": int(d_model),
            "dtype": dtype,
            "dataset": dict(dataset or {}),
            "label_names": list(label_names) if label_names is not None else None,
            "recording": {"writer": "StoreWriter", "shard_rows": self.shard_rows},
            **dict(extra or {}),
        }
        if (self.root / fmt.RECORDING_FILE).exists() or (self.root / fmt.METADATA_FILE).exists():
            raise StoreMismatchError(f"{self.root} already holds a store; write into a new directory")
        check_claimable(self.root)
        self._lock = fsutil.DirLock(self.root, what="store writer").acquire()  # released by finish/abort
        check_or_claim_directory(self.root, self.settings)
        self._tokens = np.asarray(self.settings["token_indices"], dtype=np.int64)
        self._records: list[dict[str, Any]] = []
        self._builder: ShardBuilder | None = None
        self._last: tuple[int, int] = (-1, -1)
        self._max_image = -1

    def append(
        self,
        site_arrays: Mapping[str, npt.ArrayLike | torch.Tensor],
        image_idx: npt.ArrayLike,
        token_idx: npt.ArrayLike,
    ) -> None:
        """Add rows: ``site_arrays[site]`` (n, d) floats for every site, ``image_idx``/``token_idx`` (n,)."""
        if set(site_arrays) != set(self.site_dims):
            raise ConfigError(
                f"append needs rows for exactly the sites {list(self.site_dims)}, got {list(site_arrays)}"
            )
        image_n = np.asarray(image_idx, dtype=np.int64).reshape(-1)
        token_n = np.asarray(token_idx, dtype=np.int64).reshape(-1)
        n = len(image_n)
        if len(token_n) != n:
            raise ConfigError(f"image_idx has {n} entries but token_idx {len(token_n)}")
        rows = {}
        for site, arr in site_arrays.items():
            t = torch.as_tensor(np.asarray(arr) if not isinstance(arr, torch.Tensor) else arr)
            if t.shape != (n, self.site_dims[site]):
                raise ConfigError(
                    f"{site}: expected shape ({n}, {self.site_dims[site]}), got {tuple(t.shape)}"
                )
            rows[site] = fmt.to_storage(t, self.dtype)
            bad_n = checks.nonfinite_rows(rows[site], self.dtype)
            if bad_n.any():  # in the storage dtype: float16 overflow to Inf counts
                images = np.unique(image_n[bad_n]).tolist()
                raise NonFiniteError(
                    f"{site}: {int(bad_n.sum())} rows (images {images[:5]}{' ...' if len(images) > 5 else ''}) "
                    f"hold NaN or Inf in {self.dtype}; a store holds finite rows only (for values beyond "
                    "float16's range use dtype='float32' or 'bfloat16')."
                )
        if n == 0:
            return
        if image_n.min() < 0 or image_n.max() > checks.MAX_IMAGES or not np.isin(token_n, self._tokens).all():
            raise ConfigError(
                f"image_idx must lie in [0, {checks.MAX_IMAGES}] and token_idx among the {self.settings['tokens']!r} "
                f"tokens of the layout ({self._tokens.tolist()[:8]}...)"
            )
        key = image_n * (1 << 32) + token_n
        prev = self._last[0] * (1 << 32) + self._last[1]
        if (np.diff(key) <= 0).any() or key[0] <= prev:
            raise ConfigError("rows must come in strictly increasing (image_idx, token_idx) order")
        self._last = (int(image_n[-1]), int(token_n[-1]))
        self._max_image = int(image_n[-1])
        prov = np.stack([image_n, token_n], axis=1).astype(fmt.PROVENANCE_DTYPE)
        start = 0
        while start < n:
            if self._builder is None:
                self._builder = ShardBuilder(self.root, len(self._records), self.site_dims, self.dtype)
            take = min(n - start, self.shard_rows - self._builder.n_rows)
            self._builder.add(
                {s: a[start : start + take] for s, a in rows.items()}, prov[start : start + take]
            )
            start += take
            if self._builder.n_rows == self.shard_rows:
                self._records.append(self._builder.commit())
                self._builder = None

    def finish(
        self,
        *,
        n_images: int | None = None,
        labels: Sequence[int] | None = None,
        skipped: Sequence[dict[str, Any]] = (),
    ) -> ActivationStore:
        """Write the last shard, the manifest and the metadata; returns the opened ActivationStore.

        ``n_images`` defaults to the largest image index + 1; ``labels`` holds one int per image
        (-1 for none); ``skipped`` lists ``{"image_idx", "error", "name"}`` of images left out.
        """
        from vision_sae_lens.store.reader import ActivationStore

        if self._builder is not None:
            self._records.append(self._builder.commit())
            self._builder = None
        n_images = self._max_image + 1 if n_images is None else int(n_images)
        labels_n = None if labels is None else np.asarray(labels, dtype=np.int64)
        if labels_n is not None and len(labels_n) != n_images:
            raise ConfigError(f"labels has {len(labels_n)} entries for {n_images} images")
        finalize_store(
            self.root, self.settings, self._records, n_images=n_images, labels_n=labels_n, skipped=skipped
        )
        self._lock.release()
        return ActivationStore(self.root)

    def abort(self) -> None:
        """Drop everything written (the directory is removed)."""
        if self._builder is not None:
            self._builder.abort()
        self._lock.release()
        shutil.rmtree(self.root, ignore_errors=True)
