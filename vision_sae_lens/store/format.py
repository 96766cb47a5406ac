"""The on-disk store format, version 2 (normative text: docs/shard_format.md; version 1 is still read).

::

    DIR/metadata.json                       canonical JSON; written last: its presence means "complete"
    DIR/manifest.json                       per-shard row counts, image ranges, sizes, per-block sha256
    DIR/recording.json                      the settings the store was recorded with (resume / mismatch check)
    DIR/labels.bin                          int32 label per source image (-1: none or skipped), if labelled
    DIR/shards/<site>/<k:06d>.bin           raw little-endian (rows, d) rows of one site, storage dtype
    DIR/shards/_provenance/<k:06d>.bin      int32 (rows, 2): [image_idx, token_idx] of each row
    DIR/shards/_records/<k:06d>.json        commit record of shard k while recording (kept afterwards)

One file per (site, shard) so a training reader streams one site in large contiguous blocks. Every
file is written under a unique ``.tmp`` name, fsynced and renamed, so a file with its final name is complete.
``DIR/.vsl.lock`` is the writer's lock (``fcntl.flock``, see :mod:`vision_sae_lens.fsutil`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vision_sae_lens import fsutil
from vision_sae_lens.errors import ConfigError, StoreError

FORMAT_NAME = "vision_sae_lens.activation_store"
FORMAT_VERSION = 2
"""Version written. 2 lists a sha256 per 1 MiB block of each shard file (1: one sha256 per file) and is the
first that may hold the plain-row layout (``layout == {"kind": "rows", ...}``), so earlier readers refuse a
plain-row store instead of misreading it as image patches."""
READABLE_VERSIONS = (1, 2)
MIN_ROWS_VERSION = 2
"""The first version whose stores may hold plain rows."""
METADATA_FILE = "metadata.json"
MANIFEST_FILE = "manifest.json"
RECORDING_FILE = "recording.json"
LABELS_FILE = "labels.bin"
SHARDS_DIR = "shards"
PROVENANCE = "_provenance"
RECORDS = "_records"
DTYPES = ("float32", "float16", "bfloat16")
# bfloat16 has no numpy dtype: its 16-bit patterns are stored and memory-mapped as uint16.
NUMPY_STORAGE: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PROVENANCE_DTYPE = np.dtype("<i4")


def check_dtype(dtype: str) -> str:
    """Raise a clear ValueError for a storage dtype that is not one of DTYPES."""
    if dtype not in DTYPES:
        raise ConfigError(f"unknown storage dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return dtype


def site_file(site: str, shard: int) -> str:
    """Path (relative to the store root, POSIX) of one site's rows in shard ``shard``."""
    return f"{SHARDS_DIR}/{site}/{shard:06d}.bin"


def provenance_file(shard: int) -> str:
    """Path (relative) of the provenance rows of shard ``shard``."""
    return f"{SHARDS_DIR}/{PROVENANCE}/{shard:06d}.bin"


def record_file(shard: int) -> str:
    """Path (relative) of the commit record of shard ``shard``."""
    return f"{SHARDS_DIR}/{RECORDS}/{shard:06d}.json"


def canonical_json(obj: Any) -> str:
    """The one serialisation used for hashing and writing: sorted keys, no spaces, ASCII, trailing newline."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False) + "\n"


def fingerprint_of(metadata: dict[str, Any]) -> str:
    """The store's identity: sha256 of the canonical metadata without its ``fingerprint`` key (16 hex)."""
    body = {k: v for k, v in metadata.items() if k != "fingerprint"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:16]


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` either does not exist or is complete (unique temp
    name, fsync, rename, fsync of the folder)."""
    fsutil.write_atomic(path, data)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Atomically write canonical JSON."""
    write_atomic(path, canonical_json(obj).encode())


def read_json(path: Path) -> Any:
    """Read a JSON file, turning a truncated or invalid one into a StoreError naming it."""
    try:
        return fsutil.read_json(path)
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"cannot read {path.name} in {path.parent}: {exc}") from exc


def sha256_file(path: Path, chunk: int = 2**20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    block = bytearray(chunk)  # one reused buffer: memory stays at `chunk` whatever the file size
    view = memoryview(block)
    with open(path, "rb") as f:
        while n := f.readinto(block):
            digest.update(view[:n])
    return digest.hexdigest()


def to_storage(acts_nd: torch.Tensor, dtype: str) -> np.ndarray:
    """Float rows -> a C-contiguous numpy array in the storage dtype (bf16 as uint16 bit patterns)."""
    converted = acts_nd.detach().to(TORCH_DTYPES[dtype])
    if dtype == "bfloat16":
        converted = converted.view(torch.int16)
    arr = converted.cpu().contiguous().numpy()
    return arr.view(NUMPY_STORAGE[dtype]) if dtype == "bfloat16" else arr


def as_torch(arr: np.ndarray, dtype: str) -> torch.Tensor:
    """A torch view (no copy) of writable storage-dtype rows; bf16 bit patterns become bfloat16."""
    if dtype == "bfloat16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)
