"""Integrity checks that cost what is read: per-block sha256, checked once per process, remembered across them.

A format-2 store lists the sha256 of every :data:`BLOCK_BYTES` block of every shard file
(``block_sha256`` in the manifest); a format-1 store one sha256 per file, which is treated here as a
single block as large as the file. Before a reader uses bytes of a shard file, :class:`Verifier`
hashes the blocks they lie in that this process has not checked yet (several at a time on a thread
pool: ``hashlib`` releases the GIL), so a pass that reads a tenth of a store hashes about a tenth.

The *verified record* remembers, across processes, which blocks of which files were found intact:
one small JSON file per store in the user's cache folder (:func:`cache_dir`), so it works for stores
the reader may not write to, and two processes merge what they add. A file's entry is keyed on its
size, mtime, ctime, inode and device at the time it was hashed; any write to the file through the
file system changes its ctime (which ``touch`` or ``os.utime`` cannot set back), so a changed file is
hashed again. Files changed less than :data:`RACY_SECONDS` before they were hashed are not recorded
(timestamps are coarse; an edit in the same tick would look unchanged). The record does *not* catch
corruption below the file system (a failing disk, bit rot, raw device writes) or an edit made with the
clock set back; ``verify()`` always re-hashes everything.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from vision_sae_lens import fsutil
from vision_sae_lens.errors import StoreCorruptError

logger = logging.getLogger(__name__)

BLOCK_BYTES = 2**20
"""Bytes per hashed block in format-2 stores."""
RACY_SECONDS = 2.0
"""A file modified this recently when hashed is not written to the verified record."""
SAVE_EVERY_SECONDS = 10.0
"""Newly verified blocks are written to the record at most this often (and when the store is dropped)."""
RECORD_FORMAT = "vision_sae_lens.verified"
CACHE_ENV = "VISION_SAE_LENS_CACHE"

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def cache_dir() -> Path:
    """The package's per-user cache folder: ``$VISION_SAE_LENS_CACHE``, else ``$XDG_CACHE_HOME/vision_sae_lens``,
    else ``~/.cache/vision_sae_lens``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vision_sae_lens"


def hash_threads() -> int:
    """Threads that hash blocks: every core the process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def hash_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=hash_threads(), thread_name_prefix="vsl-hash")
        return _pool


class BlockHasher:
    """sha256 of every ``block_bytes`` block of a stream written piece by piece (the last block may be short)."""

    def __init__(self, block_bytes: int = BLOCK_BYTES) -> None:
        self.block_bytes = int(block_bytes)
        self._done = bytearray()
        self._current = hashlib.sha256()
        self._filled = 0

    def update(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            take = min(len(view), self.block_bytes - self._filled)
            self._current.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == self.block_bytes:
                self._done += self._current.digest()
                self._current, self._filled = hashlib.sha256(), 0

    def hexdigests(self) -> str:
        """The blocks' digests, concatenated, as hex (64 characters per block; empty for no bytes)."""
        return (self._done + (self._current.digest() if self._filled else b"")).hex()


def file_blocks(manifest: dict[str, Any], entry: dict[str, Any]) -> tuple[int, bytes]:
    """``(block_bytes, concatenated 32-byte digests)`` of one manifest file entry (format 1: one block)."""
    if "block_sha256" in entry:
        return int(manifest["block_bytes"]), bytes.fromhex(entry["block_sha256"])
    return max(int(entry["bytes"]), 1), bytes.fromhex(entry["sha256"])


def check_block_lists(root: Path, manifest: dict[str, Any]) -> None:
    """Every file entry must carry one well-formed digest per block of its size (refused at open)."""
    block = manifest.get("block_bytes")
    if int(manifest.get("format_version", 1)) >= 2 and (not isinstance(block, int) or block < 1):
        raise StoreCorruptError(
            f"{root}/manifest.json: block_bytes must be a positive integer, got {block!r}"
        )
    for shard in manifest["shards"]:
        for entry in (*shard["files"].values(), shard["provenance"]):
            try:
                size, digests = file_blocks(manifest, entry)
                want = math.ceil(entry["bytes"] / size) if "block_sha256" in entry else 1
            except (KeyError, ValueError, TypeError) as exc:
                raise StoreCorruptError(
                    f"{root}/manifest.json: {entry.get('path')!r} has no valid checksum ({exc!r}); re-record the store."
                ) from exc
            if len(digests) != 32 * want:
                raise StoreCorruptError(
                    f"{root}/manifest.json: {entry['path']} lists {len(digests) // 32} block checksums for "
                    f"{want} blocks; the store is mis-shaped. Re-record it."
                )


class _File:
    """One shard file's checksums and which of its blocks this process has found intact."""

    def __init__(self, root: Path, manifest: dict[str, Any], entry: dict[str, Any]) -> None:
        self.rel, self.path, self.size = entry["path"], root / entry["path"], int(entry["bytes"])
        self.block_bytes, self.digests = file_blocks(manifest, entry)
        self.n_blocks = len(self.digests) // 32
        self.verified = np.zeros(self.n_blocks, dtype=bool)
        st = os.stat(self.path)
        self.stat = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
        self.racy = time.time() - max(st.st_mtime, st.st_ctime) < RACY_SECONDS

    def hash_block(self, b: int) -> bool:
        """Whether block ``b`` on disk matches its checksum."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            offset = b * self.block_bytes
            data = os.pread(fd, min(self.block_bytes, self.size - offset), offset)
        finally:
            os.close(fd)
        return hashlib.sha256(data).digest() == self.digests[32 * b : 32 * b + 32]


class Verifier:
    """Checks the blocks a reader is about to use (see the module docstring); thread-safe."""

    def __init__(
        self, root: Path, manifest: dict[str, Any], fingerprint: str, *, remember: bool = True
    ) -> None:
        self.root, self.manifest = Path(root), manifest
        self._entries = {
            e["path"]: e for s in manifest["shards"] for e in (*s["files"].values(), s["provenance"])
        }
        self._files: dict[str, _File] = {}
        self._lock = threading.Lock()
        self._record = _Record(self.root, fingerprint) if remember else None
        if self._record is not None:  # written when this store object goes away (or at exit) too
            weakref.finalize(self, self._record.save)

    def check_bytes(self, rel: str, lo: int, hi: int) -> None:
        """Make sure bytes ``lo..hi-1`` of shard file ``rel`` are intact (hashing their blocks once)."""
        if hi > lo:
            state = self._file(rel)
            self._check_blocks(state, np.arange(lo // state.block_bytes, (hi - 1) // state.block_bytes + 1))

    def check_rows(self, rel: str, rows_n: np.ndarray, row_bytes: int) -> None:
        """Make sure rows ``rows_n`` (local to the file, each ``row_bytes`` long) are intact."""
        if len(rows_n):
            state = self._file(rel)
            first = rows_n.astype(np.int64) * row_bytes // state.block_bytes
            last = ((rows_n.astype(np.int64) + 1) * row_bytes - 1) // state.block_bytes
            self._check_blocks(state, np.unique(np.concatenate([first, last])))

    def verify_all(
        self, rels: Iterable[str], progress: Callable[[int], Any] | None = None
    ) -> tuple[list[str], int]:
        """Hash every block of the shard files ``rels`` now on every core, whatever is recorded; returns
        (problems, bytes hashed). Intact blocks go to the verified record. ``progress`` gets each block's bytes.
        """
        bad: set[str] = set()
        hashed = 0
        in_flight: collections.deque[tuple[_File, int, Future]] = collections.deque()

        def settle(state: _File, b: int, future: Future) -> None:
            state.verified[b] = future.result()
            if not state.verified[b]:
                bad.add(state.rel)
            if progress is not None:
                progress(min(state.block_bytes, state.size - b * state.block_bytes))

        pool = hash_pool()
        for rel in rels:  # a bounded number of blocks in flight: memory does not grow with the store
            with self._lock:
                state = self._files[rel] = _File(self.root, self.manifest, self._entries[rel])
            for b in range(state.n_blocks):
                in_flight.append((state, b, pool.submit(state.hash_block, b)))
                if len(in_flight) >= 4 * hash_threads():
                    settle(*in_flight.popleft())
            hashed += state.size
        while in_flight:
            settle(*in_flight.popleft())
        self._remember(self._files[rel] for rel in self._files)
        self.save()
        return [f"{rel}: checksum mismatch" for rel in sorted(bad)], hashed

    def save(self) -> None:
        """Write newly verified blocks to the verified record now."""
        if self._record is not None:
            self._record.save()

    # -------------------------------------------------------------------------------- helpers
    def _file(self, rel: str) -> _File:
        with self._lock:
            state = self._files.get(rel)
            if state is None:
                state = self._files[rel] = _File(self.root, self.manifest, self._entries[rel])
                if self._record is not None and not state.racy:
                    self._record.restore(state)
            return state

    def _check_blocks(self, state: _File, blocks_b: np.ndarray) -> None:
        todo = blocks_b[~state.verified[blocks_b]]
        if not len(todo):
            return
        if len(todo) == 1:
            results = [state.hash_block(int(todo[0]))]
        else:
            results = list(hash_pool().map(state.hash_block, (int(b) for b in todo)))
        if not all(results):
            b = int(todo[results.index(False)])
            raise StoreCorruptError(
                f"shard file {state.rel} of store {self.root} does not match its checksum in the manifest "
                f"(bytes {b * state.block_bytes}..{min((b + 1) * state.block_bytes, state.size) - 1} corrupted); "
                "run store.verify() to list every bad file, and re-record it"
            )
        state.verified[todo] = True
        self._remember([state])

    def _remember(self, states: Iterable[_File]) -> None:
        if self._record is not None:
            self._record.update([s for s in states if not s.racy])


class _Record:
    """The persistent verified record of one store (see the module docstring); no reference to the store."""

    def __init__(self, root: Path, fingerprint: str) -> None:
        self.store = str(root.resolve())
        self.fingerprint = fingerprint
        key = hashlib.sha256(f"{self.store}\0{fingerprint}".encode()).hexdigest()[:32]
        self.path = cache_dir() / "verified" / f"{key}.json"
        self._loaded: dict[str, Any] | None = None
        self._pending: dict[str, dict[str, Any]] = {}
        self._saved_at = time.monotonic()
        self._lock = threading.Lock()

    def restore(self, state: _File) -> None:
        entry = self._files().get(state.rel)
        if entry and entry.get("stat") == state.stat and entry.get("block_bytes") == state.block_bytes:
            bits = np.unpackbits(np.frombuffer(bytes.fromhex(entry["verified"]), dtype=np.uint8))
            if len(bits) >= state.n_blocks:
                state.verified |= bits[: state.n_blocks].astype(bool)

    def update(self, states: list[_File]) -> None:
        with self._lock:
            for s in states:
                self._pending[s.rel] = {
                    "stat": s.stat,
                    "block_bytes": s.block_bytes,
                    "verified": np.packbits(s.verified).tobytes().hex(),
                }
            due = time.monotonic() - self._saved_at >= SAVE_EVERY_SECONDS
        if due:
            self.save()

    def save(self) -> None:
        with self._lock:
            if not self._pending:
                return
            pending, self._pending = self._pending, {}
            self._saved_at = time.monotonic()
        self._loaded = None  # merge with what other processes wrote meanwhile
        files = dict(self._files())
        for rel, new in pending.items():
            old = files.get(rel)
            if old and old.get("stat") == new["stat"] and old.get("block_bytes") == new["block_bytes"]:
                a, b = bytes.fromhex(old["verified"]), bytes.fromhex(new["verified"])
                if len(a) == len(b):
                    new = {**new, "verified": bytes(x | y for x, y in zip(a, b, strict=True)).hex()}
            files[rel] = new
        doc = {"format": RECORD_FORMAT, "store": self.store, "fingerprint": self.fingerprint, "files": files}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fsutil.write_atomic(self.path, json.dumps(doc, sort_keys=True).encode())
        except OSError as exc:  # a read-only home: verification still works, it is just not remembered
            logger.debug("cannot write the verified record %s: %s", self.path, exc)
        self._loaded = files

    def _files(self) -> dict[str, Any]:
        if self._loaded is None:
            self._loaded = {}
            with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
                # O_NOFOLLOW: a symlink planted at the record's name is not followed
                fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
                with os.fdopen(fd, "rb") as f:
                    doc = json.loads(f.read())
                if (
                    doc.get("format") == RECORD_FORMAT
                    and doc.get("store") == self.store
                    and doc.get("fingerprint") == self.fingerprint
                    and isinstance(doc.get("files"), dict)
                ):
                    self._loaded = doc["files"]
        return self._loaded
