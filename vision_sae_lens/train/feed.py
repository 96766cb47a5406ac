"""From an activation store to training batches: opening, validating, splitting, streaming.

A seeded random share ``eval_fraction`` of the store's *images* (stratified by label when the store
has labels; never the last ones, since datasets are often sorted by class) is held out for
evaluation with all their rows; training reads the other rows through ``ActivationStore.shuffled``,
one epoch at a time with the epoch folded into the seed, so the stream is the same prefix however
many epochs a run needs (a sweep member equals the same config trained alone). A background
thread (SAELens' ``PrefetchingIterator``) reads the next batches while the SAEs train.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vision_sae_lens.contracts import ActivationStoreReader
from vision_sae_lens.data.subsets import subset_indices
from vision_sae_lens.errors import (
    NonFiniteError,
    SAEMismatchError,
    StoreNotFoundError,
    TrainingError,
    UnknownSiteError,
    close_matches,
)
from vision_sae_lens.normalization import InputNormalization, estimate_input_normalization

logger = logging.getLogger(__name__)

_EPOCH_SEED_STRIDE = 1_000_003


def open_store(store: ActivationStoreReader | str | os.PathLike[str]) -> ActivationStoreReader:
    """An ``ActivationStore`` from a path; a store object (an ``ActivationStore`` or a user's object with its
    members) is returned as is."""
    if not isinstance(store, (str, os.PathLike)):
        return store
    from vision_sae_lens.store import ActivationStore

    path = Path(store)
    if not path.exists():  # the reader's own error for a path without a store, before it is opened
        raise StoreNotFoundError(
            f"activation store {path} does not exist; record one with `vision-sae-lens cache`."
        )
    return ActivationStore(path)


def store_key(store: ActivationStoreReader | str | os.PathLike[str]) -> str:
    """Identity of a store for grouping runs into one data pass."""
    if isinstance(store, (str, os.PathLike)):
        return str(Path(store).resolve())
    return str(Path(store.path).resolve()) if store.path is not None else f"<store object {id(store)}>"


def site_width(store: ActivationStoreReader, site: str) -> int:
    """Width (d_in) of a site's rows in the store."""
    return int(store.site_dim(site))


def check_store_for(store: ActivationStoreReader, site: str, d_in: int, name: str) -> None:
    """Clear errors for an unknown site, an empty store and a d_in that does not match."""
    sites = list(store.sites)
    if site not in sites:
        raise UnknownSiteError(
            f"run {name!r}: the store has no site {site!r}.{close_matches(site, sites)} "
            f"Recorded sites: {', '.join(sites) or '(none)'}."
        )
    if int(store.n_rows) == 0:
        raise TrainingError(
            f"run {name!r}: the activation store is empty (0 rows); record images into it first."
        )
    width = site_width(store, site)
    if d_in != width:
        raise SAEMismatchError(
            f"run {name!r}: the SAE config has d_in={d_in} but {site} rows in the store are {width} wide; "
            f"set d_in={width}."
        )


@dataclass(frozen=True, eq=False)
class Split:
    """Which rows of a store train and which are held out: every row of the held-out images."""

    n_rows: int
    """Rows in the store."""
    eval_images: np.ndarray
    """Sorted image indices held out of training."""
    eval_rows: np.ndarray
    """Sorted row numbers of the held-out images."""
    seed: int = 0
    """Seed of the held-out draw."""
    stratified: bool = False
    """Whether the draw kept each label's share of the images."""

    @property
    def n_eval(self) -> int:
        """Held-out rows."""
        return len(self.eval_rows)

    @property
    def n_train(self) -> int:
        """Training rows."""
        return self.n_rows - self.n_eval

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of the draw (written as ``split.json`` and into the checkpoint metadata)."""
        return {
            "method": "seeded random images" + (", stratified by label" if self.stratified else ""),
            "seed": self.seed,
            "n_rows": self.n_rows,
            "n_eval_rows": self.n_eval,
            "n_eval_images": len(self.eval_images),
            "eval_images": [int(i) for i in self.eval_images],
        }


def split_store(
    store: ActivationStoreReader, *, eval_fraction: float, max_eval_rows: int, batch_size: int, seed: int = 0
) -> Split:
    """Hold out a seeded random ``eval_fraction`` of the store's images (at most ``max_eval_rows``
    rows), stratified by the store's labels when it has them; one training batch must remain."""
    n_rows = int(store.n_rows)
    empty = np.empty(0, dtype=np.int64)
    if eval_fraction <= 0:
        return _checked_split(Split(n_rows, empty, empty, seed), batch_size)
    offsets = store.image_offsets()
    images = np.flatnonzero(np.diff(offsets))  # images with rows (skipped ones have none)
    rows_per_image = n_rows / max(len(images), 1)
    n_eval = min(int(round(len(images) * eval_fraction)), int(max_eval_rows // max(rows_per_image, 1)))
    n_eval = min(max(n_eval, 1), len(images) - 1)
    if n_eval < 1:
        return _checked_split(Split(n_rows, empty, empty, seed), batch_size)
    per_image = store.labels
    labels = None
    if per_image is not None:
        lab = np.asarray(per_image, dtype=np.int64)[images]
        labels = None if bool((lab < 0).all()) else [None if v < 0 else int(v) for v in lab]
    chosen = np.sort(images[subset_indices(len(images), n_eval, labels=labels, seed=seed)])
    return _checked_split(
        Split(n_rows, chosen, rows_of_images(offsets, chosen), seed, labels is not None), batch_size
    )


def split_from_record(store: ActivationStoreReader, record: dict[str, Any]) -> Split:
    """The :class:`Split` a ``split.json`` record describes, on ``store``."""
    n_rows = int(store.n_rows)
    chosen = np.unique(np.asarray(record.get("eval_images", []), dtype=np.int64))
    if not len(chosen):
        return Split(n_rows, chosen, chosen, int(record.get("seed", 0)))
    offsets = store.image_offsets()
    if chosen[0] < 0 or chosen[-1] >= len(offsets) - 1:
        raise TrainingError(
            f"split.json holds image indices outside the store's {len(offsets) - 1} images; it was written "
            "for another store. Evaluate with the store the SAE was trained on."
        )
    rows = rows_of_images(offsets, chosen)
    return Split(n_rows, chosen, rows, int(record.get("seed", 0)), "stratified" in record.get("method", ""))


def rows_of_images(offsets: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Sorted int64 row numbers of the sorted ``images``, from the store's per-image row ``offsets``
    (:meth:`ActivationStore.image_offsets`): one run per image, never a pass over every row."""
    return rows_of_runs(offsets[images], offsets[images + 1])


def rows_of_runs(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """The row numbers of the runs ``starts[i]..stops[i]-1``, run after run, as one int64 array."""
    lengths = np.asarray(stops, dtype=np.int64) - np.asarray(starts, dtype=np.int64)
    # output position j belongs to run i: its row is starts[i] + (j - first position of run i)
    firsts = np.cumsum(lengths) - lengths
    return (np.repeat(starts - firsts, lengths) + np.arange(lengths.sum())).astype(np.int64)


def _checked_split(split: Split, batch_size: int) -> Split:
    if split.n_train < batch_size:
        raise TrainingError(
            f"the store's training slice has {split.n_train} rows ({split.n_rows} rows, {split.n_eval} held out), "
            f"fewer than one batch of {batch_size}; record more images or lower batch_size / eval_fraction."
        )
    return split


def batch_stream(
    store: ActivationStoreReader,
    site: str,
    *,
    batch_size: int,
    seed: int,
    split: Split,
    skip_batches: int = 0,
    token_types: list[str] | None = None,
    normalization: InputNormalization | None = None,
    prefetch: int = 4,
    part: tuple[int, int] = (0, 1),
) -> Iterator[torch.Tensor]:
    """Endless (batch_size, d_in) float32 batches over the training rows of ``split``, epoch after epoch.

    ``skip_batches`` resumes the stream after that many batches without reading them (whole epochs
    are skipped here, the rest by ``shuffled``). ``token_types`` keeps rows of those token kinds only
    (see :func:`token_filter`); ``normalization`` is applied to every batch. ``prefetch`` is passed to
    ``shuffled`` (0: no reader thread of its own, for a caller that prefetches the whole stream).
    ``part=(i, n)``: only the i-th of n equal slices of every batch (a data-parallel rank's share).
    """
    n_rows = count_selected_rows(store, token_types, split)
    per_epoch = n_rows // batch_size
    if per_epoch == 0:
        raise TrainingError(
            f"the training rows of {site} hold {n_rows} rows of tokens {token_types}, fewer than one batch of "
            f"{batch_size}; record more images or lower batch_size / eval_fraction."
        )
    first_epoch, skip_in_epoch = divmod(skip_batches, per_epoch)
    for epoch in itertools.count(first_epoch):
        if epoch > 0:
            logger.info("starting epoch %d over the %d training rows of %s", epoch + 1, n_rows, site)
        batches = store.shuffled(
            site,
            batch_size,
            seed=seed + epoch * _EPOCH_SEED_STRIDE,
            drop_last=True,
            skip_batches=skip_in_epoch if epoch == first_epoch else 0,
            token_types=token_types,
            exclude_images=split.eval_images if split.n_eval else None,
            prefetch=prefetch,
            part=part,
        )
        if normalization is None:
            yield from batches
        else:
            yield from (_normalised(normalization, b) for b in batches)


def _normalised(norm: InputNormalization, batch: torch.Tensor) -> torch.Tensor:
    # ActivationStore hands out fresh float32 tensors: normalise those in place (no copy per batch). A
    # batch that shares its storage (a view into another store object's data) is never modified.
    owns = batch.dtype == torch.float32 and batch.untyped_storage().nbytes() == batch.numel() * 4
    return norm.apply_(batch) if owns else norm.apply(batch)


def estimation_batches(
    store: ActivationStoreReader,
    site: str,
    *,
    batch_size: int,
    seed: int,
    split: Split,
    n: int,
    token_types: list[str] | None = None,
    normalization: InputNormalization | None = None,
) -> Iterator[torch.Tensor]:
    """An iterator of ``n`` batches for the activation-normalisation estimate (its own seed, so the
    training stream is not consumed)."""
    stream = batch_stream(
        store,
        site,
        batch_size=batch_size,
        seed=seed + 7919,
        split=split,
        token_types=token_types,
        normalization=normalization,
    )
    return itertools.islice(stream, n)


def token_filter(store: ActivationStoreReader, tokens: str | None) -> list[str] | None:
    """The ``token_types`` filter that keeps the rows of selection ``tokens`` (None: keep every row).

    Raises a clear error when the store did not record those tokens.
    """
    recorded = store.tokens
    if tokens is None or tokens == recorded:
        return None
    layout = store.layout
    wanted, have = layout.token_mask(tokens), layout.token_mask(recorded)
    if torch.equal(wanted, have):
        return None
    if bool((wanted & ~have).any()):
        raise TrainingError(
            f"tokens={tokens!r} asks for tokens the store did not record (it holds tokens={recorded!r}); "
            f"train on tokens={recorded!r} or a part of it, or record the store with tokens={tokens!r}."
        )
    return ["cls", "registers", "patches"] if tokens == "all" else [tokens]


def count_selected_rows(store: ActivationStoreReader, token_types: list[str] | None, split: Split) -> int:
    """Training rows of ``split`` that are tokens of ``token_types`` (None: every token).

    Every image contributes the same stored tokens, so this is (training images) x (kept tokens per image).
    """
    if token_types is None:
        return split.n_train
    layout = store.layout
    per_image = layout.token_indices(str(store.tokens)).numpy()
    keep = torch.zeros(layout.n_tokens, dtype=torch.bool)
    for kind in token_types:
        keep |= layout.token_mask(kind)
    kept_per_image = int(keep.numpy()[per_image].sum())
    train_images = split.n_rows // len(per_image) - len(split.eval_images)
    return train_images * kept_per_image


def check_finite_batch(batch: torch.Tensor, *, step: int, site: str) -> None:
    """Stop with a clear message on NaN/inf activations (a corrupt or badly recorded store)."""
    if not torch.isfinite(batch).all():
        bad = int((~torch.isfinite(batch)).any(dim=-1).sum())
        raise NonFiniteError(
            f"activation batch {step} of {site} holds NaN/inf in {bad} of {batch.shape[0]} rows; the store is "
            "corrupt or was recorded from a diverging model. Run ActivationStore.verify() and re-record."
        )


def store_preprocessing(store: ActivationStoreReader) -> dict:
    """The backbone preprocessing recorded with the store (empty when unknown)."""
    return dict(store.metadata.get("preprocessing") or {})


@dataclass(frozen=True)
class RunInputs:
    """Which rows a run trains on and how they are transformed (shared by a group, fixed for the run)."""

    token_types: list[str] | None
    """``shuffled`` token filter (None: every stored row)."""
    tokens: str
    """The token selection recorded in the SAE's metadata."""
    normalization: InputNormalization | None
    """``subtract_mean`` / ``scale_norm`` statistics of the training rows, or None."""


def prepare_inputs(store: ActivationStoreReader, cfg: Any, *, split: Split) -> RunInputs:
    """Token filter and input normalisation of ``cfg`` over the training rows of ``split``.

    The statistics are computed once, deterministically, so every epoch and a resumed run see the same
    transform. Raises when fewer than one batch of the selected tokens is left for training.
    """
    token_types = token_filter(store, cfg.tokens)
    tokens = cfg.tokens or str(store.tokens)
    n_selected = count_selected_rows(store, token_types, split)
    if n_selected < cfg.batch_size:
        raise TrainingError(
            f"the training slice holds {n_selected} rows of tokens={tokens!r}, fewer than one batch of "
            f"{cfg.batch_size}; record more images or lower batch_size / eval_fraction."
        )
    norm = estimate_input_normalization(
        store,
        cfg.site,
        subtract_mean=cfg.subtract_mean,
        scale_norm=cfg.scale_norm,
        tokens=tokens,
        token_types=token_types,
        exclude_images=split.eval_images if split.n_eval else None,
    )
    if norm is not None:
        logger.info(
            "input normalisation of %s over %d training rows: mean %s, scale %.6g (folded into the saved SAE)",
            cfg.site,
            norm.rows,
            "subtracted" if norm.subtract_mean else "kept",
            norm.scale,
        )
    return RunInputs(token_types=token_types, tokens=tokens, normalization=norm)
