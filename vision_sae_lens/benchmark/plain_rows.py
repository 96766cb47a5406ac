"""Rows that are not image patches, with their ground truth, into an activation store.

:func:`write_plain_rows` writes ``(rows, d)`` batches from any generator (SynthSAEBench's, or a user's)
into a store with a :class:`~vision_sae_lens.layout.RowLayout` (one example per row, provenance
``[row, 0]``, ``tokens="all"``): training, evaluation and :func:`~vision_sae_lens.benchmark.score_rows`
read it like any store, and image-only tools refuse it by name. When the batches carry each row's true
feature activations and ``directions`` are given, it also writes the
:class:`~vision_sae_lens.benchmark.truth.ActivationTruth` of the rows next to the store, bound to the
store's fingerprint.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from vision_sae_lens.benchmark.truth import ActivationTruth
from vision_sae_lens.errors import ConfigError
from vision_sae_lens.layout import RowLayout


def truth_path_of(store_dir: str | os.PathLike) -> Path:
    """Where :func:`write_plain_rows` puts a store's truth: ``<store_dir>.truth.safetensors``."""
    store_dir = Path(store_dir)
    return store_dir.with_name(store_dir.name + ".truth.safetensors")


def write_plain_rows(
    out_dir: str | os.PathLike,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
    *,
    source_id: str,
    site: str = "activations",
    directions: torch.Tensor | None = None,
    feature_names: list[str] | None = None,
    dtype: str = "float32",
    dataset: Mapping[str, Any] | None = None,
    total_rows: int | None = None,
    progress: bool = True,
) -> tuple[Any, ActivationTruth | None]:
    """Write ``(rows (n, d), true feature activations (n, F) or None)`` batches as a plain-row store.

    ``source_id`` names what produced the rows (the store's ``backbone_id``, e.g.
    ``synthetic:synthsaebench``). With ``directions`` ``(F, d)`` every batch must carry its feature
    activations; the truth is saved to :func:`truth_path_of` ``(out_dir)`` and returned. ``total_rows``
    only sizes the progress bar. Returns ``(ActivationStore, truth or None)``.
    """
    from vision_sae_lens.store import StoreWriter

    writer: StoreWriter | None = None
    features: list[torch.Tensor] = []
    row = 0
    bar = tqdm(total=total_rows, desc="writing rows", unit="row", disable=not progress)
    try:
        for rows, acts in batches:
            rows = torch.as_tensor(rows)
            if rows.dim() != 2 or len(rows) == 0:
                raise ConfigError(
                    f"each batch of rows must be (n, d) with n >= 1, got shape {tuple(rows.shape)}"
                )
            if writer is None:
                writer = StoreWriter(
                    out_dir, backbone_id=source_id, sites=[site], d_model=rows.shape[1], layout=RowLayout(),
                    tokens="all", dtype=dtype, dataset=dataset,
                )  # fmt: skip
            if directions is not None:
                if acts is None or acts.shape[0] != len(rows) or acts.shape[1] != directions.shape[0]:
                    raise ConfigError(
                        f"with directions of {directions.shape[0]} features every batch needs its (n, "
                        f"{directions.shape[0]}) feature activations"
                    )
                features.append(acts.detach().cpu().float().to_sparse())  # nnz, not n x F
            n = len(rows)
            writer.append({site: rows}, np.arange(row, row + n), np.zeros(n, dtype=np.int64))
            row += n
            bar.update(n)
        if writer is None:
            raise ConfigError("no rows were given")
        store = writer.finish()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
    if directions is None:
        return store, None
    truth = ActivationTruth.from_batches(
        directions, features, feature_names=feature_names, store_fingerprint=store.fingerprint
    )
    truth.save(truth_path_of(out_dir))
    return store, truth
