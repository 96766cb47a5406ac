"""``evaluate_sae``: how well an SAE reconstructs held-out activations, and what survives downstream.

Reconstruction metrics stream over held-out rows (by default the images the training run held
out, from ``split.json``): MSE, normalised MSE (= fraction of variance unexplained), explained
variance (SAELens' ``ExplainedVarianceCalculator``), L0. Firing statistics use the package's one
definition of *dead* and *dense* (:data:`DEAD_DENSE_DEFINITION`), over the whole store (a seeded
random draw of its images when it holds more than :data:`DENSITY_MAX_ROWS` rows): the same rows the
feature browser scans, so both report the same counts. With a backbone and images, the SAE is spliced into the model and
compared with the clean model and with zero- and mean-ablation of the site
(:mod:`vision_sae_lens.train.downstream`). Only rows of the SAE's ``metadata.tokens`` count, and an SAE
trained on normalised inputs has the normalisation folded in, so raw rows go in. The report is a
JSON-ready dict; with ``out_dir`` it is written as ``eval.json`` with a ``density.png`` beside it.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sae_lens import SAE
from tqdm.auto import tqdm

from vision_sae_lens import fsutil
from vision_sae_lens.compat import ExplainedVarianceCalculator
from vision_sae_lens.contracts import ActivationStoreReader
from vision_sae_lens.errors import (
    ConfigError,
    NonFiniteError,
    SAEFolderError,
    SAEMismatchError,
    escape_control,
)
from vision_sae_lens.train.feed import Split, check_store_for, open_store
from vision_sae_lens.train.plots import plot_density

if TYPE_CHECKING:
    from vision_sae_lens.backbones import HookedSAEViT

logger = logging.getLogger(__name__)

DENSITY_BINS = torch.linspace(-8, 0, 33)
"""Edges of the log10 feature-density histogram (latents that never fire are counted apart)."""
DENSE_THRESHOLD = 0.1
"""Token frequency above which a latent is *dense*."""
ENCODE_ELEMENTS = 2**25
"""Rows x latents encoded at a time: a wide SAE's batches shrink so that memory does not grow with its width
(128 MiB per float32 latent tensor; 512 rows at 65,536 latents, the full batch up to 8,192)."""
DENSITY_MAX_ROWS = 10_000_000
"""Rows over which firing is counted: the whole store, or a seeded random draw of its images
holding at most this many rows."""
DEAD_DENSE_DEFINITION = (
    "dead: fires (activation > 0) on no token of the density rows; dense: fires on more than "
    f"{DENSE_THRESHOLD:g} of them. Density rows: every row of the store, or a seeded random draw of its "
    f"images holding at most {DENSITY_MAX_ROWS:,} rows."
)
"""The package's one definition of dead and dense latents (eval.json, the browser, the demo)."""


@torch.no_grad()
def evaluate_sae(
    sae_or_dir: SAE | str | Path,
    store: ActivationStoreReader | str | Path,
    *,
    model: HookedSAEViT | None = None,
    images: Any = None,
    site: str | None = None,
    split: Any = None,
    start_row: int | None = None,
    stop_row: int | None = None,
    max_rows: int = 65536,
    batch_size: int = 4096,
    n_images: int = 64,
    dense_threshold: float = DENSE_THRESHOLD,
    density_max_rows: int = DENSITY_MAX_ROWS,
    seed: int = 0,
    use_error_term: bool = False,
    device: str | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate an SAE (object or SAELens folder) on rows of an activation store.

    Reconstruction rows: ``[start_row, stop_row)`` when given, else the held-out images of
    ``split`` (a :class:`~vision_sae_lens.train.feed.Split`) or of the folder's ``split.json``, else
    a seeded random draw of images; at most ``max_rows`` rows. Dead and dense latents follow
    :data:`DEAD_DENSE_DEFINITION` (over at most ``density_max_rows`` rows). ``model`` (a
    ``HookedSAEViT``) and ``images`` add the spliced downstream metric on a seeded random,
    label-stratified draw of ``n_images`` images. Only rows of the SAE's ``metadata.tokens`` count (a
    patches SAE is not measured on CLS rows); an SAE trained with ``subtract_mean`` / ``scale_norm``
    has them folded in, so the metrics are in raw units. ``progress=False`` hides the bars. Returns
    the report; writes ``eval.json`` and ``density.png`` into ``out_dir`` when given.
    """
    folder = Path(sae_or_dir) if not isinstance(sae_or_dir, SAE) else None
    if folder is not None:
        from vision_sae_lens.train.checkpoint import open_sae_folder  # checks checksums.json and cfg.json

        sae = open_sae_folder(folder, device=device or "cpu")
    else:
        sae = sae_or_dir
    if device is not None:
        sae = sae.to(device)
    reader: ActivationStoreReader = open_store(store)
    site = site or sae.cfg.metadata.hook_name
    if not site:
        raise SAEMismatchError(
            "the SAE has no cfg.metadata.hook_name; pass site= to say which store site to use"
        )
    check_store_for(reader, site, sae.cfg.d_in, name=str(folder or "sae"))
    keep_t = _token_keep(sae, reader)
    # (rows, d_sae) latents are the largest tensors: bound them, whatever the SAE's width
    batch_size = max(1, min(batch_size, ENCODE_ELEMENTS // int(sae.cfg.d_sae)))
    rows_n, which = _eval_rows(folder, reader, split, start_row, stop_row, max_rows, seed)
    rows_n = _of_tokens(reader, rows_n, keep_t)
    recon = _reconstruction(sae, reader, site, rows_n, batch_size, progress=progress)
    mean_d = recon.pop("_mean_d")
    density_n = _of_tokens(reader, _sampled_rows(reader, density_max_rows, seed), keep_t)
    recon.update(_firing(sae, reader, site, density_n, batch_size, dense_threshold, progress=progress))
    report: dict[str, Any] = {
        "site": site,
        "architecture": sae.cfg.architecture(),
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "rows": which,
        "store_fingerprint": reader.fingerprint or None,
        "tokens": getattr(sae.cfg.metadata, "tokens", None),
        **recon,
    }
    if model is not None and images is not None:
        from vision_sae_lens.train.downstream import measure_downstream

        report["downstream"] = measure_downstream(
            model,
            sae,
            images,
            mean_d=mean_d,
            n_images=n_images,
            use_error_term=use_error_term,
            seed=seed,
            text_embeddings="auto",  # zero-shot through the text tower when there is one and class names
        )
    elif model is not None or images is not None:
        logger.warning("the downstream metric needs both a model and images; skipped")
    check_report_finite(report, source=f"the evaluation of {folder or 'the SAE'}")
    if out_dir is not None:
        out = Path(out_dir)
        write_eval_json(out, report, sae_folder=folder)
        plot_density(
            report["density_histogram"], out / "density.png", title=f"{report['architecture']} {site}"
        )
    return report


def evaluate_run(
    sae: SAE,
    cfg: Any,
    *,
    store: ActivationStoreReader,
    split: Split,
    name: str,
    model: HookedSAEViT | None = None,
    images: Any = None,
    out_dir: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """The end-of-training report of one run: on its ``eval_store``, else on its held-out images.

    With ``eval_fraction=0`` and no ``eval_store`` there is no row the SAE did not train on: the report
    says so (``"evaluated": false``) instead of measuring training rows; the downstream metric is still
    measured when ``model`` and ``images`` are given.
    """
    common = dict(
        model=model,
        images=images,
        max_rows=cfg.max_eval_rows,
        n_images=cfg.downstream_images,
        batch_size=cfg.batch_size,
        out_dir=out_dir,
        progress=progress,
    )
    if cfg.eval_store is not None:
        return evaluate_sae(sae, open_store(cfg.eval_store), start_row=0, **common)
    if split.n_eval:
        return evaluate_sae(sae, store, split=split, **common)
    downstream = model is not None and images is not None
    logger.warning(
        "run %r: eval_fraction=0 and no eval_store, so no held-out rows: the reconstruction metrics are not "
        "computed (set eval_fraction > 0 or eval_store=...)%s",
        name,
        "; measuring the downstream metric on the given images" if downstream else "",
    )
    report: dict[str, Any] = {
        "site": cfg.site,
        "architecture": sae.cfg.architecture(),
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "n_rows": 0,
        "evaluated": False,
        "note": "eval_fraction=0 held no rows out and no eval_store was given: not evaluated on activation rows "
        "(every row of the store was used for training).",
    }
    if model is not None and images is not None:
        from vision_sae_lens.train.downstream import measure_downstream

        report["downstream"] = measure_downstream(
            model, sae, images, n_images=cfg.downstream_images, text_embeddings="auto"
        )
    check_report_finite(report, source=f"the evaluation of run {name!r}")
    write_eval_json(out_dir, report, sae_folder=None)
    return report


def write_eval_json(out: Path, report: dict[str, Any], *, sae_folder: Path | None) -> None:
    """Write ``out/eval.json`` atomically. In a sealed SAE folder only that SAE's own evaluation goes
    (``sae_folder`` is the folder it was opened from), and the seal is updated to the new file, so a
    re-evaluated folder still verifies while a hand-edited ``eval.json`` does not."""
    sealed = fsutil.folder_kind(out) == "sae"
    if sealed and (sae_folder is None or not os.path.samefile(out, sae_folder)):
        raise SAEFolderError(
            f"{out} is a sealed SAE folder of another SAE; this evaluation would replace its eval.json. "
            "Write it elsewhere (--out), or evaluate that folder's own SAE."
        )
    fsutil.write_json_atomic(out / "eval.json", report)
    if sealed:
        fsutil.update_seal(out, "eval.json")


def check_report_finite(report: Any, *, source: str) -> None:
    """Refuse (NonFiniteError) an evaluation report holding NaN or Inf anywhere (``eval.json``, a model card).

    A non-finite metric is no result: JSON cannot hold it, and a NaN NMSE compares false with everything,
    so it would pass every quality gate. ``source`` says where the report comes from (for the message).
    """
    bad = _nonfinite_entries(report, "")
    if bad:
        raise NonFiniteError(
            f"{source} holds non-finite numbers ({', '.join(bad[:6])}): the SAE's weights or the evaluated rows "
            "hold NaN/Inf, or the rows have no variance. Such a report is not written or published; check the "
            "store with `vision-sae-lens verify` and retrain."
        )


def _nonfinite_entries(value: Any, where: str) -> list[str]:
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{where or 'value'}={value}"]
    if isinstance(value, dict):
        return [b for k, v in value.items() for b in _nonfinite_entries(v, f"{where}.{k}".lstrip("."))]
    if isinstance(value, (list, tuple)):
        return [b for i, v in enumerate(value) for b in _nonfinite_entries(v, f"{where}[{i}]")]
    return []


def _eval_rows(folder, store, split, start, stop, max_rows: int, seed: int):
    """(row numbers, JSON description) of the reconstruction rows."""
    from vision_sae_lens.train.feed import split_from_record

    n_rows = int(store.n_rows)
    if start is not None or stop is not None:
        lo, hi = start or 0, n_rows if stop is None else min(stop, n_rows)
        hi = min(hi, lo + max_rows)
        if not 0 <= lo < hi:
            raise ConfigError(f"empty evaluation slice [{lo}, {hi}) of a store with {n_rows} rows")
        return np.arange(lo, hi, dtype=np.int64), {"method": "row range", "start": lo, "stop": hi}
    record = folder / "split.json" if folder is not None else None
    if split is None and record is not None and record.exists():
        split = split_from_record(store, fsutil.read_json(record))
    if split is not None and split.n_eval:
        desc = {k: v for k, v in split.describe().items() if k != "eval_images"}
        return split.eval_rows[:max_rows], {**desc, "held_out": True}
    if split is not None:
        logger.warning(
            "%s was trained with eval_fraction=0: no image was held out, so these metrics are on training "
            "rows (pass another store, or start_row/stop_row).",
            escape_control(folder or "the SAE"),
        )
    return _sampled_rows(store, max_rows, seed), {"method": "seeded random images", "seed": seed}


def _token_keep(sae: SAE, store: ActivationStoreReader) -> torch.Tensor | None:
    """(tokens,) mask of the token positions the SAE applies to, or None when every stored row counts."""
    tokens = getattr(sae.cfg.metadata, "tokens", None)
    recorded = store.tokens
    if not tokens or tokens == recorded or tokens == "all":
        return None
    return store.layout.token_mask(tokens)


def _of_tokens(store: ActivationStoreReader, rows_n: np.ndarray, keep_t: torch.Tensor | None) -> np.ndarray:
    """The rows among ``rows_n`` whose token is kept by ``keep_t`` (all of them when it is None)."""
    if keep_t is None or not len(rows_n):
        return rows_n
    # The sorted rows come in runs (whole images): read the provenance of those runs only.
    breaks = np.flatnonzero(np.diff(rows_n) != 1) + 1
    token_n = np.concatenate(
        [
            np.asarray(store.provenance(int(run[0]), int(run[-1]) + 1)[1], dtype=np.int64)
            for run in np.split(rows_n, breaks)
        ]
    )
    return rows_n[keep_t.numpy()[token_n]]


def sampled_runs(store: ActivationStoreReader, max_rows: int, seed: int = 0) -> np.ndarray:
    """``(n, 2)`` int64 ``[start, stop)`` row runs: the whole store when it holds at most ``max_rows`` rows,
    else the rows of a seeded random draw of its images (stratified by label when it has labels), cut at
    ``max_rows`` rows. Found from the per-image row offsets: memory per image, never per stored row. The
    evaluation's density rows and the feature browser's scan are this draw (same rows, same counts)."""
    from vision_sae_lens.data.subsets import subset_indices

    n_rows = int(store.n_rows)
    if n_rows <= max_rows:
        return np.asarray([[0, n_rows]], dtype=np.int64)
    offsets = store.image_offsets()
    images = np.flatnonzero(np.diff(offsets))
    n = max(1, int(max_rows // (n_rows / len(images))))
    labels = store.labels
    lab = None if labels is None else [None if v < 0 else int(v) for v in np.asarray(labels)[images]]
    chosen = images[subset_indices(len(images), n, labels=lab, seed=seed)]
    starts, stops = offsets[chosen], offsets[chosen + 1]
    ends = np.cumsum(stops - starts)
    stops = np.minimum(stops, stops - (ends - max_rows).clip(min=0))  # the last run stops at max_rows rows
    keep = stops > starts
    return np.stack([starts[keep], stops[keep]], axis=1).astype(np.int64)


def _sampled_rows(store: ActivationStoreReader, max_rows: int, seed: int) -> np.ndarray:
    """The row numbers of :func:`sampled_runs` (at most ``max_rows`` of them)."""
    from vision_sae_lens.train.feed import rows_of_runs

    runs = sampled_runs(store, max_rows, seed)
    return rows_of_runs(runs[:, 0], runs[:, 1])


def _row_batches(
    store: ActivationStoreReader, site: str, rows_n: np.ndarray, batch_size: int, desc: str, progress: bool
):
    chunks = range(0, len(rows_n), batch_size)
    for i in tqdm(chunks, desc=desc, total=len(chunks), leave=False, disable=not progress):
        chunk = rows_n[i : i + batch_size]
        if len(chunk) and chunk[-1] - chunk[0] == len(chunk) - 1:  # contiguous: one plain read
            acts_bd = store.read_rows(site, int(chunk[0]), int(chunk[-1]) + 1)
        else:
            acts_bd = store.gather(site, chunk)
        bad_b = ~torch.isfinite(acts_bd).all(dim=-1)
        if bad_b.any():
            rows = chunk[bad_b.numpy()]
            raise NonFiniteError(
                f"{int(bad_b.sum())} of the evaluated {site} rows hold NaN or Inf (store rows "
                f"{rows[:5].tolist()}{' ...' if len(rows) > 5 else ''}): no metric can be computed on them. "
                "Run `vision-sae-lens verify` on the store and re-record it."
            )
        yield acts_bd


def _reconstruction(
    sae: SAE,
    store: ActivationStoreReader,
    site: str,
    rows_n: np.ndarray,
    batch_size: int,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    sae.eval()
    ev = ExplainedVarianceCalculator()
    sse = l0_sum = cos_sum = 0.0
    n = 0
    for acts_bd in _row_batches(store, site, rows_n, batch_size, "evaluating", progress):
        x_bd = acts_bd.to(sae.device, torch.float32)
        feats_bs = sae.encode(x_bd)
        recon_bd = sae.decode(feats_bs).float()
        ev.add_batch(recon_bd, x_bd)
        sse += (recon_bd - x_bd).double().pow(2).sum().item()
        l0_sum += (feats_bs != 0).sum().item()
        cos_sum += torch.nn.functional.cosine_similarity(recon_bd, x_bd, dim=-1).double().sum().item()
        n += x_bd.shape[0]
    d = sae.cfg.d_in
    mean_d = (ev.sum_x / n).float()
    total_var = ev.sum_squared_norm - n * mean_d.double().pow(2).sum().item()
    return {
        "n_rows": n,
        "mse": sse / (n * d),
        "mse_per_row": sse / n,
        "nmse": sse / total_var if total_var > 0 else float("nan"),
        "explained_variance": ev.compute(),
        "cosine_similarity": cos_sum / n,
        "l0": l0_sum / n,
        "_mean_d": mean_d,
    }


def _firing(
    sae: SAE,
    store: ActivationStoreReader,
    site: str,
    rows_n: np.ndarray,
    batch_size: int,
    dense_threshold: float,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Dead / dense fractions and the density histogram by :data:`DEAD_DENSE_DEFINITION`."""
    fired_s = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    n = 0
    for acts_bd in _row_batches(store, site, rows_n, batch_size, "counting firing", progress):
        # a boolean pass summed in int32 (exact: a batch has far fewer than 2**31 rows), 2x faster on a CPU
        fired_s += (sae.encode(acts_bd.to(sae.device, torch.float32)) > 0).sum(0, dtype=torch.int32).cpu()
        n += acts_bd.shape[0]
    freq_s = fired_s / max(n, 1)
    log_freq = torch.log10(freq_s[freq_s > 0])
    counts = torch.histogram(
        log_freq.clamp(DENSITY_BINS[0], DENSITY_BINS[-1]), bins=DENSITY_BINS.double()
    ).hist
    return {
        "dead_fraction": float((fired_s == 0).double().mean()),
        "dense_fraction": float((freq_s > dense_threshold).double().mean()),
        "dead": int((fired_s == 0).sum()),
        "dense": int((freq_s > dense_threshold).sum()),
        "dense_threshold": dense_threshold,
        "density_rows": n,
        "dead_dense_definition": DEAD_DENSE_DEFINITION,
        "density_histogram": {
            "log10_density_edges": [round(float(e), 4) for e in DENSITY_BINS],
            "counts": [int(c) for c in counts],
            "never_fired": int((fired_s == 0).sum()),
        },
    }
