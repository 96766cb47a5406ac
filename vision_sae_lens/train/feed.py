"""From an activation store to training batches: opening, validating, splitting, streaming.

The last ``eval_fraction`` of the store's rows (rows are in image order, so these are the last
images) is held out for evaluation; training reads the rest through ``ActivationStore.shuffled``,
one epoch at a time with the epoch folded into the seed, so the stream is the same prefix however
many epochs a run needs (a sweep member equals the same config trained alone). A background
thread (SAELens' ``PrefetchingIterator``) reads the next batches while the SAEs train.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vision_sae_lens.errors import SAEMismatchError, TrainingError, UnknownSiteError, close_matches
from vision_sae_lens.normalization import InputNormalization, estimate_input_normalization

logger = logging.getLogger(__name__)

_EPOCH_SEED_STRIDE = 1_000_003


def open_store(store: Any) -> Any:
    """An ``ActivationStore`` from a path; an object that already looks like a store is returned as is."""
    if hasattr(store, "shuffled") and hasattr(store, "ordered"):
        return store
    from vision_sae_lens.store import ActivationStore

    path = Path(store)
    if not path.exists():
        raise TrainingError(
            f"activation store {path} does not exist; record one with `vision-sae-lens cache`."
        )
    return ActivationStore(path)


def store_key(store: Any) -> str:
    """Identity of a store for grouping runs into one data pass."""
    if hasattr(store, "shuffled") and hasattr(store, "ordered"):
        path = getattr(store, "path", None)
        return str(Path(path).resolve()) if path is not None else f"<store object {id(store)}>"
    return str(Path(store).resolve())


def site_width(store: Any, site: str) -> int:
    """Width (d_in) of a site's rows in the store."""
    return int(store.site_dim(site))


def check_store_for(store: Any, site: str, d_in: int, name: str) -> None:
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


@dataclass(frozen=True)
class Split:
    """Training rows ``[0, n_train)`` and held-out rows ``[n_train, n_rows)`` of a store."""

    n_rows: int
    n_train: int

    @property
    def n_eval(self) -> int:
        """Held-out rows."""
        return self.n_rows - self.n_train


def split_rows(n_rows: int, *, eval_fraction: float, max_eval_rows: int, batch_size: int) -> Split:
    """Hold out the last rows for evaluation; at least one training batch must remain."""
    n_eval = min(int(round(n_rows * eval_fraction)), max_eval_rows) if eval_fraction > 0 else 0
    if eval_fraction > 0 and n_eval == 0 and n_rows > batch_size:
        n_eval = 1
    split = Split(n_rows=n_rows, n_train=n_rows - n_eval)
    if split.n_train < batch_size:
        raise TrainingError(
            f"the store's training slice has {split.n_train} rows ({n_rows} rows, {n_eval} held out), fewer than "
            f"one batch of {batch_size}; record more images or lower batch_size / eval_fraction."
        )
    return split


def batch_stream(
    store: Any,
    site: str,
    *,
    batch_size: int,
    seed: int,
    stop_row: int,
    skip_batches: int = 0,
    token_types: list[str] | None = None,
    normalization: InputNormalization | None = None,
    prefetch: int | None = None,
) -> Iterator[torch.Tensor]:
    """Endless (batch_size, d_in) float32 batches over rows ``[0, stop_row)``, epoch after epoch.

    ``skip_batches`` resumes the stream after that many batches without reading them (whole epochs
    are skipped here, the rest by ``shuffled``). ``token_types`` keeps rows of those token kinds only
    (see :func:`token_filter`); ``normalization`` is applied to every batch. ``prefetch`` is passed to
    ``shuffled`` (0: no reader thread of its own, for a caller that prefetches the whole stream).
    """
    n_rows = count_selected_rows(store, token_types, stop_row)
    per_epoch = n_rows // batch_size
    if per_epoch == 0:
        raise TrainingError(
            f"the training rows of {site} hold {n_rows} rows of tokens {token_types}, fewer than one batch of "
            f"{batch_size}; record more images or lower batch_size."
        )
    first_epoch, skip_in_epoch = divmod(skip_batches, per_epoch)
    for epoch in itertools.count(first_epoch):
        if epoch > 0:
            logger.info("starting epoch %d over the %d training rows of %s", epoch + 1, n_rows, site)
        batches = store.shuffled(
            site,
            batch_size,
            seed=seed + epoch * _EPOCH_SEED_STRIDE,
            stop_row=stop_row,
            drop_last=True,
            skip_batches=skip_in_epoch if epoch == first_epoch else 0,
            **({"token_types": token_types} if token_types is not None else {}),
            **({"prefetch": prefetch} if prefetch is not None else {}),
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
    store: Any,
    site: str,
    *,
    batch_size: int,
    seed: int,
    stop_row: int,
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
        stop_row=stop_row,
        token_types=token_types,
        normalization=normalization,
    )
    return itertools.islice(stream, n)


def token_filter(store: Any, tokens: str | None) -> list[str] | None:
    """The ``token_types`` filter that keeps the rows of selection ``tokens`` (None: keep every row).

    Raises a clear error when the store did not record those tokens.
    """
    recorded = str(getattr(store, "tokens", "all"))
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


def count_selected_rows(store: Any, token_types: list[str] | None, stop_row: int) -> int:
    """Rows of ``token_types`` among rows ``[0, stop_row)`` (rows are whole images of the same tokens)."""
    if token_types is None:
        return stop_row
    layout = store.layout
    per_image = layout.token_indices(str(store.tokens)).numpy()
    keep = torch.zeros(layout.n_tokens, dtype=torch.bool)
    for kind in token_types:
        keep |= layout.token_mask(kind)
    keep_i = keep.numpy()[per_image]
    full, rest = divmod(stop_row, len(per_image))
    return int(full * keep_i.sum() + keep_i[:rest].sum())


def check_finite_batch(batch: torch.Tensor, *, step: int, site: str) -> None:
    """Stop with a clear message on NaN/inf activations (a corrupt or badly recorded store)."""
    if not torch.isfinite(batch).all():
        bad = int((~torch.isfinite(batch)).any(dim=-1).sum())
        raise TrainingError(
            f"activation batch {step} of {site} holds NaN/inf in {bad} of {batch.shape[0]} rows; the store is "
            "corrupt or was recorded from a diverging model. Run ActivationStore.verify() and re-record."
        )


def store_preprocessing(store: Any) -> dict:
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


def prepare_inputs(store: Any, cfg: Any, *, n_train: int) -> RunInputs:
    """Token filter and input normalisation of ``cfg`` over training rows ``[0, n_train)``.

    The statistics are computed once, deterministically, so every epoch and a resumed run see the same
    transform. Raises when fewer than one batch of the selected tokens is left for training.
    """
    token_types = token_filter(store, cfg.tokens)
    tokens = cfg.tokens or str(store.tokens)
    n_selected = count_selected_rows(store, token_types, n_train)
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
        stop_row=n_train,
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
