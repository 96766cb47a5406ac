"""The training reader: block-shuffled windows of rows, gathered from the memory maps on a prefetch thread.

Per epoch, the row range is cut into blocks of ``block_rows`` consecutive rows and the blocks are
visited in a random order (seeded by ``(seed, epoch)``), a window of about ``buffer_rows`` rows at a
time. The window's row numbers (plus the previous window's leftover, fewer than a batch) are permuted
and each full batch is gathered from the store; the kernel is asked to read the next window's blocks
ahead, so a cold store is read block by block, sequentially. Every row is emitted exactly once per
epoch (the final partial batch only with ``drop_last=False``), batches mix many images, and memory is
one batch plus the window's row numbers, never set by the store's size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from vision_sae_lens.errors import ConfigError
from vision_sae_lens.layout import check_token_selection
from vision_sae_lens.store import format as fmt
from vision_sae_lens.store.prefetch import prefetched

if TYPE_CHECKING:
    from vision_sae_lens.layout import Layout

DEFAULT_BUFFER_BYTES = 256 * 2**20
BLOCKS_PER_BUFFER = 64


class RowSource(Protocol):
    """What the readers here use of a store (:class:`~vision_sae_lens.store.reader.ActivationStore` is one):
    stated here so that this module needs nothing of the reader, which binds these functions as its
    ``shuffled`` and ``statistics`` methods."""

    @property
    def path(self) -> Path: ...
    @property
    def dtype(self) -> str: ...
    @property
    def layout(self) -> Layout: ...
    @property
    def labels(self) -> np.ndarray | None: ...
    def site_dim(self, site: str) -> int: ...
    def row_range(self, start_row: int, stop_row: int | None) -> tuple[int, int]: ...
    def read_rows(self, site: str, start: int, stop: int) -> torch.Tensor: ...
    def gather(self, site: str, rows_n: np.ndarray) -> torch.Tensor: ...
    def provenance(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]: ...
    def advise_willneed(self, site: str, start: int, stop: int) -> None: ...


def shuffled_batches(
    store: RowSource,
    site: str,
    batch_size: int,
    *,
    seed: int = 0,
    start_row: int = 0,
    stop_row: int | None = None,
    epochs: int = 1,
    drop_last: bool = True,
    buffer_rows: int | None = None,
    block_rows: int | None = None,
    labels: Iterable[int] | None = None,
    token_types: Iterable[str] | None = None,
    subtract_mean: bool = False,
    scale_norm: bool = False,
    device: str | torch.device | None = None,
    prefetch: int = 4,
    skip_batches: int = 0,
    exclude_images: Iterable[int] | None = None,
    part: tuple[int, int] = (0, 1),
) -> Iterator[torch.Tensor]:
    """Yield ``(batch_size, d)`` float32 tensors of ``site`` rows ``start_row..stop_row-1`` in a seeded
    shuffled order, ``epochs`` times.

    ``drop_last=True`` (default) drops each epoch's final partial batch, so every batch has exactly
    ``batch_size`` rows (SAELens' trainer needs that). ``buffer_rows`` (default: 256 MiB of stored rows) is the
    shuffling window: how widely rows mix, and how far ahead the store is read; ``block_rows`` (default
    ``buffer_rows / 64``) is the length of each contiguous run of rows. ``labels`` keeps rows of images with those labels, ``token_types`` rows of those
    token kinds (``"cls"``, ``"registers"``, ``"patches"``). ``subtract_mean`` / ``scale_norm`` apply
    :func:`site_statistics` of the same rows (same range, labels and token kinds): the mean is removed,
    then rows are scaled so that their mean norm is ``sqrt(d)``. Batches are produced by a background thread, ``prefetch`` batches ahead
    (``prefetch=0``: in the caller's thread, for a consumer that runs the whole stream on its own prefetch thread).
    ``skip_batches`` starts after that many batches of the same stream (counted over all epochs)
    without reading them: a resumed training run continues exactly where it stopped.
    ``exclude_images`` drops every row of those images (a held-out evaluation set).
    ``part=(i, n)`` yields only the i-th of n equal slices of every batch (``batch_size`` must divide by n): n
    data-parallel readers with the same seed together read exactly the batches of one reader, each row once.
    """
    start, stop = store.row_range(start_row, stop_row)
    dim = store.site_dim(site)
    if batch_size < 1 or epochs < 1 or prefetch < 0:
        raise ConfigError(
            f"batch_size and epochs must be >= 1 and prefetch >= 0 (got {batch_size}, {epochs}, {prefetch})"
        )
    if skip_batches < 0:
        raise ConfigError(f"skip_batches must be >= 0, got {skip_batches}")
    part_index, n_parts = part
    if not 0 <= part_index < n_parts or batch_size % n_parts or (n_parts > 1 and not drop_last):
        raise ConfigError(
            f"part={part} must be (i, n) with 0 <= i < n, n dividing batch_size ({batch_size}) and, for n > 1, "
            "drop_last=True (every slice the same size)"
        )
    part_rows = batch_size // n_parts
    n = stop - start
    if buffer_rows is None:
        itemsize = fmt.NUMPY_STORAGE[store.dtype].itemsize
        buffer_rows = max(DEFAULT_BUFFER_BYTES // (dim * itemsize), 4 * batch_size)
    buffer_rows = max(1, min(int(buffer_rows), max(n, 1)))
    block_rows = max(1, int(block_rows) if block_rows else buffer_rows // BLOCKS_PER_BUFFER)
    keep = _row_filter(store, labels, token_types, exclude_images)
    mean_d, scale = None, 1.0
    if subtract_mean or scale_norm:
        # Statistics of exactly the rows emitted, after centring: the mean norm is then sqrt(d).
        stats = site_statistics(
            store,
            site,
            start_row=start,
            stop_row=stop,
            labels=labels,
            token_types=token_types,
            subtract_mean=subtract_mean,
            exclude_images=exclude_images,
        )
        mean_d = torch.from_numpy(stats["mean"]) if subtract_mean else None
        scale = stats["scale"] if scale_norm else 1.0

    # Shuffling moves row *indices*, not rows: a window of blocks is a list of row numbers, permuted
    # (with the previous window's leftover), and each batch is one gather straight from the memory
    # maps in the storage dtype. No buffer copy, and the gather moves half the bytes of float32 for
    # fp16/bf16 stores; batches become float32 in the consumer's thread, on the target device. The
    # next window's blocks are announced to the kernel (WILLNEED) so cold reads stay sequential.
    blocks_per_window = max(1, -(-buffer_rows // block_rows))

    def produce() -> Iterator[torch.Tensor]:
        n_batches = 0  # batches emitted (or skipped) so far, over all epochs
        for epoch in range(epochs):
            rng = np.random.default_rng([seed, epoch])
            starts = np.arange(start, stop, block_rows)
            order = starts[rng.permutation(len(starts))]
            windows = [order[w : w + blocks_per_window] for w in range(0, len(order), blocks_per_window)]
            left = np.empty(0, dtype=np.int64)
            for w, window in enumerate(windows):
                if w + 1 < len(windows):
                    for lo in windows[w + 1]:
                        store.advise_willneed(site, int(lo), min(int(lo) + block_rows, stop))
                spans = [np.arange(lo, min(lo + block_rows, stop)) for lo in window]
                if keep is not None:
                    spans = [rows[keep(int(rows[0]), int(rows[-1]) + 1)] for rows in spans]
                rows_n = np.concatenate([left, *spans])
                rows_n = rows_n[rng.permutation(len(rows_n))]
                n_full = len(rows_n) // batch_size * batch_size
                for j in range(part_index * part_rows, n_full, batch_size):
                    if n_batches >= skip_batches:  # skipped batches cost no read
                        yield store.gather(site, rows_n[j : j + part_rows])
                    n_batches += 1
                left = rows_n[n_full:]
            if len(left) and not drop_last:
                if n_batches >= skip_batches:
                    yield store.gather(site, left)
                n_batches += 1

    target = torch.device(device) if device is not None else None
    if mean_d is not None and target is not None:
        mean_d = mean_d.to(target)

    def batches() -> Iterator[torch.Tensor]:
        for raw in prefetched(produce(), prefetch) if prefetch else produce():
            # Copy in the storage dtype, then convert on the device (half the transfer for fp16/bf16).
            acts = (raw if target is None else raw.to(target, non_blocking=True)).float()
            if mean_d is not None:
                acts -= mean_d
            if scale != 1.0:
                acts *= scale
            yield acts

    # A plain function returning a generator, so bad arguments raise here and not at the first next().
    return batches()


def site_statistics(
    store: RowSource,
    site: str,
    *,
    start_row: int = 0,
    stop_row: int | None = None,
    max_rows: int = 262144,
    labels: Iterable[int] | None = None,
    token_types: Iterable[str] | None = None,
    subtract_mean: bool = False,
    exclude_images: Iterable[int] | None = None,
) -> dict[str, Any]:
    """Mean row and mean row norm of ``site`` over the rows that ``shuffled`` would emit.

    Only rows of images with ``labels`` and tokens of ``token_types``, and none of ``exclude_images``,
    count (None: all). With more
    than ``max_rows`` rows in the range, chunks spread evenly through it are read. ``mean`` is the
    (d,) float32 mean; ``mean_norm`` the mean L2 norm of the rows, *after* removing ``mean`` when
    ``subtract_mean`` (so ``scale`` = ``sqrt(d) / mean_norm`` brings the transformed rows to a mean
    norm of ``sqrt(d)``); ``raw_mean_norm`` the mean norm of the rows as stored; ``rows`` how many
    rows were read.
    """
    start, stop = store.row_range(start_row, stop_row)
    if stop - start == 0:
        raise ConfigError("cannot compute statistics of an empty row range")
    keep = _row_filter(store, labels, token_types, exclude_images)
    spans = _sample_spans(start, stop, max_rows)
    dim = store.site_dim(site)

    def chunks() -> Iterator[torch.Tensor]:
        for lo, hi in spans:
            acts = store.read_rows(site, lo, hi)  # float32; sums are accumulated in float64
            yield acts if keep is None else acts[torch.from_numpy(keep(lo, hi))]

    total = torch.zeros(dim, dtype=torch.float64)
    raw_norm_sum, count = 0.0, 0
    for acts in chunks():
        total += acts.sum(0, dtype=torch.float64)
        raw_norm_sum += float(acts.norm(dim=1).sum(dtype=torch.float64))
        count += acts.shape[0]
    if count == 0:
        raise ConfigError(
            f"no rows of {site} in [{start}, {stop}) match labels={labels} token_types={token_types}; "
            "widen the selection"
        )
    mean = total / count
    raw_mean_norm = raw_norm_sum / count
    mean_norm = raw_mean_norm
    if subtract_mean:  # a second pass: the norm of centred rows is not a function of the first pass
        mean_f = mean.float()
        mean_norm = (
            sum(float((acts - mean_f).norm(dim=1).sum(dtype=torch.float64)) for acts in chunks()) / count
        )
    return {
        "mean": mean.float().numpy(),
        "mean_norm": mean_norm,
        "raw_mean_norm": raw_mean_norm,
        "scale": math.sqrt(dim) / mean_norm if mean_norm > 0 else 1.0,
        "rows": count,
        "centred": bool(subtract_mean),
    }


def _sample_spans(start: int, stop: int, max_rows: int, chunk: int = 4096) -> list[tuple[int, int]]:
    """Every row in chunks, or about ``max_rows`` rows in chunks spread evenly through the range."""
    n = stop - start
    if n <= max_rows:
        return [(lo, min(lo + chunk, stop)) for lo in range(start, stop, chunk)]
    n_chunks = max(1, max_rows // chunk)
    starts = np.linspace(start, stop - chunk, n_chunks).astype(np.int64)
    return [(int(lo), int(lo) + chunk) for lo in starts]


def _row_filter(store: RowSource, labels, token_types, exclude_images=None):
    """A function (lo, hi) -> boolean mask of the rows to keep, or None to keep all."""
    excluded = None if exclude_images is None else np.unique(np.asarray(list(exclude_images), dtype=np.int64))
    if labels is None and token_types is None and (excluded is None or not len(excluded)):
        return None
    label_set = None
    per_image = np.zeros(0, dtype=np.int64)
    if labels is not None:
        if store.labels is None:
            raise ConfigError(f"store {store.path} has no labels; cannot filter by label")
        per_image = np.asarray(store.labels)
        label_set = np.asarray(sorted(set(int(v) for v in labels)), dtype=np.int64)
    token_ok = None
    if token_types is not None:
        token_ok = np.zeros(store.layout.n_tokens, dtype=bool)
        for kind in token_types:
            check_token_selection(kind)
            token_ok |= store.layout.token_mask(kind).numpy()

    def keep(lo: int, hi: int) -> np.ndarray:
        image_n, token_n = store.provenance(lo, hi)
        mask = np.ones(hi - lo, dtype=bool)
        if label_set is not None:
            mask &= np.isin(per_image[image_n], label_set)
        if token_ok is not None:
            mask &= token_ok[token_n]
        if excluded is not None and len(excluded):
            mask &= ~np.isin(image_n, excluded)
        return mask

    return keep
