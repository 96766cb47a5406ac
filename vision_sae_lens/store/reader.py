"""Reading a store: :class:`ActivationStore` (metadata, random-access rows, ordered iteration, verify).

Rows are numbered globally in (image, token) order across shards (``manifest.json`` gives each shard's
``row_start``); a site's rows in one shard are one memory-mapped file, so any contiguous row range is
one or a few sequential reads. ``shuffled()`` (training) lives in :mod:`vision_sae_lens.store.shuffle`.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from vision_sae_lens.errors import (
    ConfigError,
    StoreCorruptError,
    StoreError,
    StoreNotFoundError,
    UnknownSiteError,
    close_matches,
)
from vision_sae_lens.layout import Layout, layout_from_dict
from vision_sae_lens.store import checks, integrity
from vision_sae_lens.store import format as fmt
from vision_sae_lens.store.shuffle import shuffled_batches, site_statistics

_PROVENANCE_CHUNK = 2**22  # rows of provenance read at a time when counting rows per image


class Rows(NamedTuple):
    """A batch of rows with provenance: ``acts`` (n, d) float32, ``image_idx`` (n,), ``token_idx`` (n,)."""

    acts: torch.Tensor
    image_idx: torch.Tensor
    token_idx: torch.Tensor


class ActivationStore:
    """A complete activation store on disk (see docs/store.md).

    Opening checks the format version and that every shard file exists with the size the manifest
    says. With ``check_checksums=True`` (default) the blocks of shard files a read touches are checked
    against their sha256 before they are used, once per process and, through the verified record, once
    per file until it changes (:mod:`vision_sae_lens.store.integrity`), so a corrupted shard fails with an
    error naming it; :meth:`verify` checks every file at once.
    """

    def __init__(self, path: str | os.PathLike, *, check_checksums: bool = True) -> None:
        self.path = Path(path)
        self.check_checksums = check_checksums
        meta_path = self.path / fmt.METADATA_FILE
        if not meta_path.is_file():
            if (self.path / fmt.RECORDING_FILE).is_file():
                raise StoreError(
                    f"the store in {self.path} is incomplete (recording was interrupted or is still running); "
                    "re-run the same cache command to finish it."
                )
            raise StoreNotFoundError(
                f"{self.path} is not an activation store (no {fmt.METADATA_FILE}); record one with "
                "`vision-sae-lens cache` or cache_activations()"
            )
        self.metadata: dict[str, Any] = fmt.read_json(meta_path)
        version = self.metadata.get("format_version")
        if self.metadata.get("format") != fmt.FORMAT_NAME or version not in fmt.READABLE_VERSIONS:
            raise StoreError(
                f"{meta_path} has format {self.metadata.get('format')!r} version {version!r}; this "
                f"vision_sae_lens reads {fmt.FORMAT_NAME!r} versions {list(fmt.READABLE_VERSIONS)}. "
                "Upgrade the package."
            )
        checks.check_metadata(self.path, self.metadata)  # on meaning: hashes can be recomputed by anyone
        self.manifest: dict[str, Any] = checks.read_manifest(self.path, self.metadata)
        self.shards: list[dict[str, Any]] = [s for s in self.manifest["shards"] if s["n_rows"] > 0]
        self._starts = [s["row_start"] for s in self.shards]
        self._maps: dict[tuple[str, int], np.ndarray] = {}
        self._image_offsets: np.ndarray | None = None
        checks.check_shapes(self.path, self.metadata, self.manifest)
        integrity.check_block_lists(self.path, self.manifest)
        self._check_files_present()
        self._verifier = (
            integrity.Verifier(self.path, self.manifest, self.fingerprint) if check_checksums else None
        )

    # ------------------------------------------------------------------------------- metadata
    @property
    def fingerprint(self) -> str:
        """Identity of this store (hash of its metadata, which includes the manifest's checksums)."""
        return self.metadata["fingerprint"]

    @property
    def sites(self) -> list[str]:
        return list(self.metadata["sites"])

    @property
    def d_model(self) -> int:
        return int(self.metadata["d_model"])

    def site_dim(self, site: str) -> int:
        """Width of one site's rows (``d_model`` except for e.g. ``mlp.hook_post``)."""
        self._check_site(site)
        return int(self.metadata["site_dims"][site])

    @property
    def layout(self) -> Layout:
        """How rows map to image tokens (:class:`~vision_sae_lens.layout.TokenLayout`), or
        :class:`~vision_sae_lens.layout.RowLayout` for plain rows."""
        return layout_from_dict(self.metadata["layout"])

    @property
    def tokens(self) -> str:
        """Token selection recorded: patches, cls, registers or all."""
        return self.metadata["tokens"]

    @property
    def dtype(self) -> str:
        return self.metadata["dtype"]

    @property
    def n_images(self) -> int:
        """Images in the source (image indices run 0..n_images-1; skipped ones have no rows)."""
        return int(self.metadata["n_images"])

    @property
    def n_rows(self) -> int:
        return int(self.metadata["n_rows"])

    @property
    def backbone_id(self) -> str:
        return self.metadata["backbone_id"]

    @property
    def dataset(self) -> dict[str, Any]:
        return dict(self.metadata["dataset"])

    @property
    def label_names(self) -> list[str] | None:
        return self.metadata.get("label_names")

    @property
    def labels(self) -> np.ndarray | None:
        """int32 label of every source image (-1 where none or skipped), or None without labels."""
        if not self.metadata.get("has_labels"):
            return None
        entry = self.manifest.get("labels")
        if entry is None:
            raise StoreCorruptError(
                f"store {self.path} says it has labels but its manifest lists no {fmt.LABELS_FILE}"
            )
        path = self.path / fmt.LABELS_FILE
        data = path.read_bytes() if path.is_file() else b""
        if len(data) != entry["bytes"] or len(data) != 4 * self.n_images:
            raise StoreCorruptError(
                f"{fmt.LABELS_FILE} of store {self.path} has {len(data)} bytes; the manifest says {entry['bytes']} "
                f"({self.n_images} images x 4). Re-record the store."
            )
        if self.check_checksums and hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise StoreCorruptError(
                f"{fmt.LABELS_FILE} of store {self.path} does not match its checksum in the manifest (edited or "
                "corrupted); re-record the store."
            )
        return np.frombuffer(data, dtype=fmt.PROVENANCE_DTYPE).copy()

    def __len__(self) -> int:
        return self.n_rows

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.path)!r}, backbone={self.backbone_id!r}, sites={self.sites}, "
            f"tokens={self.tokens!r}, rows={self.n_rows}, dtype={self.dtype}, fingerprint={self.fingerprint})"
        )

    # ----------------------------------------------------------------------------------- reading
    def row_range(self, start_row: int, stop_row: int | None) -> tuple[int, int]:
        """``(start, stop)`` of a row range (``stop_row=None``: to the end); ConfigError outside the store."""
        stop = self.n_rows if stop_row is None else int(stop_row)
        start = int(start_row)
        if start < 0 or stop > self.n_rows or start > stop:
            raise ConfigError(f"row range [{start}, {stop}) is outside the store's {self.n_rows} rows")
        return start, stop

    def read_rows(self, site: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start..stop-1`` of ``site`` as a float32 (n, d) tensor."""
        self._check_site(site)
        width, storage = self.site_dim(site), fmt.NUMPY_STORAGE[self.dtype]
        start, stop = self.row_range(start, stop)
        out = torch.empty((stop - start, width), dtype=torch.float32)
        # One pass per piece: the memory map's rows are converted while they are copied out.
        for filled, part in self._pieces(site, start, stop, width, storage):
            out[filled : filled + len(part)].copy_(fmt.as_torch(part, self.dtype))
        return out

    def read_raw(self, site: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start..stop-1`` of ``site`` in the storage dtype (bf16 as uint16), a new array."""
        self._check_site(site)
        return self._gather(site, start, stop, self.site_dim(site), fmt.NUMPY_STORAGE[self.dtype])

    def provenance(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image_idx, token_idx)`` int64 arrays of rows ``start..stop-1``."""
        start, stop = self.row_range(start, stop)
        image_n, token_n = np.empty(stop - start, dtype=np.int64), np.empty(stop - start, dtype=np.int64)
        for filled, part in self._pieces(fmt.PROVENANCE, start, stop, 2, fmt.PROVENANCE_DTYPE):
            image_n[filled : filled + len(part)] = part[:, 0]
            token_n[filled : filled + len(part)] = part[:, 1]
        return image_n, token_n

    def image_offsets(self) -> np.ndarray:
        """``(n_images + 1,)`` int64 row offsets: the rows of image ``i`` are ``offsets[i]..offsets[i+1]-1``
        (none for a skipped image). Counted once from the provenance, a chunk at a time: memory is per
        image, never per row."""
        if self._image_offsets is None:
            counts = np.zeros(self.n_images, dtype=np.int64)
            last = -1
            for lo in range(0, self.n_rows, _PROVENANCE_CHUNK):
                image_n, _ = self.provenance(lo, min(lo + _PROVENANCE_CHUNK, self.n_rows))
                if image_n[0] < last or (image_n[1:] < image_n[:-1]).any() or image_n[-1] >= self.n_images:
                    raise StoreCorruptError(
                        f"store {self.path}: the provenance of rows {lo}.. is not in image order within "
                        f"0..{self.n_images - 1}, as the format requires; re-record the store"
                    )
                counts += np.bincount(image_n, minlength=self.n_images)
                last = int(image_n[-1])
            self._image_offsets = np.concatenate([[0], np.cumsum(counts)])
        return self._image_offsets

    def ordered(
        self, site: str, batch_size: int, *, start_row: int = 0, stop_row: int | None = None
    ) -> Iterator[Rows]:
        """Rows in (image, token) order with provenance, ``batch_size`` at a time (the last may be smaller)."""
        self._check_site(site)
        start, stop = self.row_range(start_row, stop_row)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            image_n, token_n = self.provenance(lo, hi)
            yield Rows(self.read_rows(site, lo, hi), torch.from_numpy(image_n), torch.from_numpy(token_n))

    # The training reader and the normalisation statistics live in ``store/shuffle.py``; bound here as methods,
    # so their options are spelled out once, in those functions' signatures.
    shuffled = shuffled_batches
    statistics = site_statistics

    # ------------------------------------------------------------------------------------ checks
    def verify(self, *, progress: bool = False) -> dict[str, Any]:
        """Check the metadata's meaning and every file: size, checksums (hashed on every core, whatever the
        verified record says), rows free of NaN/Inf, provenance inside the store's images and tokens in
        order, row counts against the manifest.

        Raises :class:`~vision_sae_lens.errors.StoreCorruptError` naming every problem; returns ``{"files",
        "bytes", "seconds", "mb_per_s"}`` (the hashing throughput).
        """
        from tqdm.auto import tqdm

        problems = []
        for check in (  # re-read: the files may have changed since open
            lambda: checks.check_metadata(self.path, fmt.read_json(self.path / fmt.METADATA_FILE)),
            lambda: checks.read_manifest(self.path, self.metadata),
            lambda: checks.check_shapes(self.path, self.metadata, self.manifest),
        ):
            try:
                check()
            except StoreCorruptError as exc:
                problems.append(str(exc))
        files = [e for s in self.manifest["shards"] for e in (*s["files"].values(), s["provenance"])]
        sized = []
        for entry in files:
            path = self.path / entry["path"]
            if not path.is_file():
                problems.append(f"{entry['path']}: missing")
            elif path.stat().st_size != entry["bytes"]:
                problems.append(
                    f"{entry['path']}: {path.stat().st_size} bytes, manifest says {entry['bytes']}"
                )
            else:
                sized.append(entry["path"])
        verifier = self._verifier or integrity.Verifier(self.path, self.manifest, self.fingerprint)
        total = sum(e["bytes"] for e in files)
        start = time.perf_counter()
        with tqdm(total=total, desc="verify", unit="B", unit_scale=True, disable=not progress) as bar:
            bad, hashed = verifier.verify_all(sized, progress=bar.update)
        seconds = time.perf_counter() - start
        problems += bad
        if "labels" in self.manifest:
            entry = self.manifest["labels"]
            path = self.path / entry["path"]
            if not path.is_file():
                problems.append(f"{entry['path']}: missing")
            elif fmt.sha256_file(path) != entry["sha256"]:
                problems.append(f"{entry['path']}: checksum mismatch")
        if not problems:  # the content of files whose bytes are the recorded ones
            problems += checks.scan_contents(self.path, self.metadata, self.manifest, progress=progress)
        counted = sum(s["n_rows"] for s in self.manifest["shards"])
        if counted != self.n_rows or counted != self.manifest["n_rows"]:
            problems.append(f"row counts disagree: shards {counted}, metadata {self.n_rows}")
        if problems:
            raise StoreCorruptError(
                f"store {self.path} failed verification ({len(problems)} problem(s)): "
                + "; ".join(problems)
                + ". Re-record the affected shards (delete them and their _records entries, then re-run "
                "the cache command) or the whole store."
            )
        return {
            "files": len(sized),
            "bytes": hashed,
            "seconds": seconds,
            "mb_per_s": hashed / 1e6 / max(seconds, 1e-9),
        }

    # ----------------------------------------------------------------------------------- helpers
    def _check_files_present(self) -> None:
        for shard in self.shards:
            for entry in (*shard["files"].values(), shard["provenance"]):
                path = self.path / entry["path"]
                if not path.is_file():
                    raise StoreCorruptError(f"shard file {entry['path']} of store {self.path} is missing")
                if path.stat().st_size != entry["bytes"]:
                    raise StoreCorruptError(
                        f"shard file {entry['path']} of store {self.path} has {path.stat().st_size} bytes, "
                        f"the manifest says {entry['bytes']}; run store.verify() and re-record it"
                    )

    def _check_site(self, site: str) -> None:
        if site not in self.metadata["site_dims"]:
            raise UnknownSiteError(
                f"store {self.path} has no site {site!r}.{close_matches(site, self.sites)} Sites: {self.sites}"
            )

    def _map(self, key: str, shard_pos: int, width: int, dtype: np.dtype) -> np.ndarray:
        cached = self._maps.get((key, shard_pos))
        if cached is None:
            shard = self.shards[shard_pos]
            entry = self._entry(key, shard_pos)
            # mode "c" (private copy-on-write) gives writable arrays torch can wrap; nothing is ever written.
            cached = np.memmap(
                self.path / entry["path"], dtype=dtype, mode="c", shape=(shard["n_rows"], width)
            )
            self._maps[(key, shard_pos)] = cached
        return cached

    def _gather(self, key: str, start: int, stop: int, width: int, dtype: np.dtype) -> np.ndarray:
        start, stop = self.row_range(start, stop)
        out = np.empty((stop - start, width), dtype=dtype)
        for filled, part in self._pieces(key, start, stop, width, dtype):
            out[filled : filled + len(part)] = part
        return out

    def gather(self, site: str, rows_n: np.ndarray) -> torch.Tensor:
        """Rows ``rows_n`` (any order, int64) of ``site`` as a new (n, d) tensor in the storage dtype
        (float32, float16 or bfloat16): one gather per shard, straight from its memory map."""
        self._check_site(site)
        rows_n = np.asarray(rows_n, dtype=np.int64)
        if rows_n.size and (rows_n.min() < 0 or rows_n.max() >= self.n_rows):
            raise ConfigError(f"row numbers must lie in [0, {self.n_rows}) for store {self.path}")
        width, storage = self.site_dim(site), fmt.NUMPY_STORAGE[self.dtype]
        if not rows_n.size:
            return torch.empty((0, width), dtype=fmt.TORCH_DTYPES[self.dtype])
        shard_n = np.searchsorted(self._starts, rows_n, side="right") - 1
        first, last = int(shard_n.min()), int(shard_n.max())
        if first == last:  # the usual case for big shards: one index_select, no scatter
            local_n = rows_n - self._starts[first]
            self._check_rows(site, first, local_n, width * storage.itemsize)
            return self._tensor(site, first, width, storage).index_select(0, torch.from_numpy(local_n))
        out = torch.empty((len(rows_n), width), dtype=fmt.TORCH_DTYPES[self.dtype])
        for pos in np.unique(shard_n):
            sel = np.flatnonzero(shard_n == pos)
            local_n = rows_n[sel] - self._starts[pos]
            self._check_rows(site, int(pos), local_n, width * storage.itemsize)
            out.index_copy_(
                0,
                torch.from_numpy(sel),
                self._tensor(site, int(pos), width, storage).index_select(0, torch.from_numpy(local_n)),
            )
        return out

    def advise_willneed(self, site: str, start: int, stop: int) -> None:
        """Ask the kernel to start reading rows ``start..stop-1`` of ``site`` into the page cache
        (``posix_fadvise(WILLNEED)``; a no-op where the platform has no such call)."""
        if not hasattr(os, "posix_fadvise"):
            return
        row_bytes = self.site_dim(site) * fmt.NUMPY_STORAGE[self.dtype].itemsize
        start, stop = self.row_range(start, stop)
        pos = bisect.bisect_right(self._starts, start) - 1
        while start < stop:
            shard = self.shards[pos]
            lo, hi = start - shard["row_start"], min(stop - shard["row_start"], shard["n_rows"])
            fd = os.open(self.path / shard["files"][site]["path"], os.O_RDONLY)
            try:
                os.posix_fadvise(fd, lo * row_bytes, (hi - lo) * row_bytes, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)
            start, pos = shard["row_start"] + hi, pos + 1

    def _entry(self, key: str, shard_pos: int) -> dict[str, Any]:
        shard = self.shards[shard_pos]
        return shard["provenance"] if key == fmt.PROVENANCE else shard["files"][key]

    def _check_rows(self, key: str, shard_pos: int, local_n: np.ndarray, row_bytes: int) -> None:
        if self._verifier is not None:
            self._verifier.check_rows(self._entry(key, shard_pos)["path"], local_n, row_bytes)

    def _tensor(self, key: str, shard_pos: int, width: int, dtype: np.dtype) -> torch.Tensor:
        """The memory map of one shard file as a torch tensor (bf16 bit patterns viewed as bfloat16)."""
        return fmt.as_torch(self._map(key, shard_pos, width, dtype), self.dtype)

    def _pieces(self, key: str, start: int, stop: int, width: int, dtype: np.dtype):
        """``(offset, memory-mapped rows)`` of each shard's part of rows ``start..stop-1``."""
        start, stop = self.row_range(start, stop)
        pos = bisect.bisect_right(self._starts, start) - 1
        filled = 0
        while filled < stop - start:
            shard = self.shards[pos]
            lo = start + filled - shard["row_start"]
            take = min(shard["n_rows"] - lo, stop - start - filled)
            if self._verifier is not None:
                row_bytes = width * dtype.itemsize
                self._verifier.check_bytes(
                    self._entry(key, pos)["path"], lo * row_bytes, (lo + take) * row_bytes
                )
            yield filled, self._map(key, pos, width, dtype)[lo : lo + take]
            filled += take
            pos += 1
