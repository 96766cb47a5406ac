"""``evaluate_sae``: how well an SAE reconstructs held-out activations, and what survives downstream.

Reconstruction metrics stream over a contiguous slice of the store (by default the slice the
training run held out): MSE, normalised MSE (= fraction of variance unexplained), explained
variance (SAELens' ``ExplainedVarianceCalculator``), L0, dead and dense latent fractions and the
feature-density histogram. With a backbone and images, the SAE is spliced into the model and
compared with the clean model and with zero- and mean-ablation of the site
(:mod:`vision_sae_lens.train.downstream`). The report is a JSON-ready dict; with ``out_dir`` it is
written as ``eval.json`` with a ``density.png`` beside it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from sae_lens.evals import ExplainedVarianceCalculator
from tqdm.auto import tqdm

from vision_sae_lens.errors import SAEMismatchError
from vision_sae_lens.train.feed import Split, check_store_for, open_store, split_rows
from vision_sae_lens.train.plots import plot_density

logger = logging.getLogger(__name__)

DENSITY_BINS = torch.linspace(-8, 0, 33)
"""Edges of the log10 feature-density histogram (latents that never fire are counted apart)."""


@torch.no_grad()
def evaluate_sae(
    sae_or_dir: SAE | str | Path,
    store: Any,
    *,
    model: Any = None,
    images: Any = None,
    site: str | None = None,
    start_row: int | None = None,
    stop_row: int | None = None,
    max_rows: int = 65536,
    batch_size: int = 4096,
    n_images: int = 64,
    dense_threshold: float = 0.1,
    use_error_term: bool = False,
    device: str | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate an SAE (object or SAELens folder) on rows of an activation store.

    Rows ``[start_row, stop_row)`` are read; by default the held-out slice recorded in the
    folder's ``train_config.json``, else the last ``max_rows`` rows. ``model`` (a ``HookedSAEViT``)
    and ``images`` add the spliced downstream metric on the first ``n_images`` images.
    A latent is *dead* when it never fires on these rows and *dense* when it fires on more than
    ``dense_threshold`` of them. Only rows of the SAE's ``metadata.tokens`` count (a patches SAE is
    not measured on CLS rows). An SAE trained with ``subtract_mean`` / ``scale_norm`` has them folded
    in, so raw rows go in and the metrics are in raw units. ``progress=False`` hides the bar.
    Returns the report; writes ``eval.json`` and ``density.png`` into ``out_dir`` when given.
    """
    folder = Path(sae_or_dir) if not isinstance(sae_or_dir, SAE) else None
    if folder is not None:
        from vision_sae_lens.train.checkpoint import open_sae_folder  # checks checksums.json and cfg.json

        sae = open_sae_folder(folder, device=device or "cpu")
    else:
        sae = sae_or_dir
    if device is not None:
        sae = sae.to(device)
    store = open_store(store)
    site = site or sae.cfg.metadata.hook_name
    if not site:
        raise SAEMismatchError(
            "the SAE has no cfg.metadata.hook_name; pass site= to say which store site to use"
        )
    check_store_for(store, site, sae.cfg.d_in, name=str(folder or "sae"))
    n_rows = int(store.n_rows)
    start_row, stop_row = _default_rows(folder, n_rows, start_row, stop_row, max_rows)
    stop_row = min(stop_row, start_row + max_rows)
    keep_t = _token_keep(sae, store)
    recon = _reconstruction(
        sae, store, site, start_row, stop_row, batch_size, dense_threshold, keep_t=keep_t, progress=progress
    )
    mean_d = recon.pop("_mean_d")
    report: dict[str, Any] = {
        "site": site,
        "architecture": sae.cfg.architecture(),
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "rows": [start_row, stop_row],
        "store_fingerprint": str(getattr(store, "fingerprint", "")) or None,
        "tokens": getattr(sae.cfg.metadata, "tokens", None),
        **recon,
    }
    if model is not None and images is not None:
        from vision_sae_lens.train.downstream import measure_downstream

        report["downstream"] = measure_downstream(
            model, sae, images, mean_d=mean_d, n_images=n_images, use_error_term=use_error_term
        )
    elif model is not None or images is not None:
        logger.warning("the downstream metric needs both a model and images; skipped")
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(report, indent=1))
        plot_density(
            report["density_histogram"], out / "density.png", title=f"{report['architecture']} {site}"
        )
    return report


def evaluate_run(
    sae: SAE,
    cfg: Any,
    *,
    store: Any,
    split: Split,
    name: str,
    model: Any = None,
    images: Any = None,
    out_dir: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """The end-of-training report of one run: its ``eval_store``, else its held-out slice.

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
        return evaluate_sae(sae, store, start_row=split.n_train, stop_row=split.n_rows, **common)
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
    if downstream:
        from vision_sae_lens.train.downstream import measure_downstream

        report["downstream"] = measure_downstream(model, sae, images, n_images=cfg.downstream_images)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(report, indent=1))
    return report


def _default_rows(folder: Path | None, n_rows: int, start: int | None, stop: int | None, max_rows: int):
    stop = n_rows if stop is None else min(stop, n_rows)
    if start is None:
        train_cfg = folder / "train_config.json" if folder is not None else None
        if train_cfg is not None and train_cfg.exists():
            cfg = json.loads(train_cfg.read_text())
            split = split_rows(
                n_rows,
                eval_fraction=cfg["eval_fraction"],
                max_eval_rows=cfg["max_eval_rows"],
                batch_size=1,
            )
            start = split.n_train if split.n_eval else max(0, n_rows - max_rows)
            if not split.n_eval:
                logger.warning(
                    "%s was trained with eval_fraction=0: rows [%d, %d) of the store were training rows, so "
                    "these metrics are on training data (pass another store, or start_row/stop_row).",
                    folder,
                    start,
                    stop,
                )
        else:
            start = max(0, stop - max_rows)
    if not 0 <= start < stop:
        raise ValueError(f"empty evaluation slice [{start}, {stop}) of a store with {n_rows} rows")
    return start, stop


def _token_keep(sae: SAE, store: Any) -> torch.Tensor | None:
    """(tokens,) mask of the token positions the SAE applies to, or None when every stored row counts."""
    tokens = getattr(sae.cfg.metadata, "tokens", None)
    recorded = str(getattr(store, "tokens", "all"))
    if not tokens or tokens == recorded or tokens == "all":
        return None
    return store.layout.token_mask(tokens)


def _reconstruction(
    sae: SAE,
    store: Any,
    site: str,
    start: int,
    stop: int,
    batch_size: int,
    dense_threshold: float,
    *,
    keep_t: torch.Tensor | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    sae.eval()
    ev = ExplainedVarianceCalculator()
    fired_s = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    sse = l0_sum = cos_sum = 0.0
    n = 0
    batches = store.ordered(site, batch_size, start_row=start, stop_row=stop)
    total = math.ceil((stop - start) / batch_size)
    for rows in tqdm(batches, desc="evaluating", total=total, leave=False, disable=not progress):
        acts_bd = getattr(rows, "acts", rows[0] if isinstance(rows, tuple) else rows)
        if keep_t is not None:
            acts_bd = acts_bd[keep_t[rows.token_idx]]
            if not len(acts_bd):
                continue
        x_bd = acts_bd.to(sae.device, torch.float32)
        feats_bs = sae.encode(x_bd)
        recon_bd = sae.decode(feats_bs).float()
        ev.add_batch(recon_bd, x_bd)
        sse += (recon_bd - x_bd).double().pow(2).sum().item()
        active_bs = feats_bs != 0
        fired_s += active_bs.sum(0).double().cpu()
        l0_sum += active_bs.sum().item()
        cos_sum += torch.nn.functional.cosine_similarity(recon_bd, x_bd, dim=-1).double().sum().item()
        n += x_bd.shape[0]
    if n == 0:
        raise ValueError(
            f"rows [{start}, {stop}) of {site} hold no rows of the SAE's tokens; evaluate on a wider slice"
        )
    d = sae.cfg.d_in
    mean_d = (ev.sum_x / n).float()
    total_var = ev.sum_squared_norm - n * mean_d.double().pow(2).sum().item()
    freq_s = fired_s / n
    log_freq = torch.log10(freq_s[freq_s > 0])
    counts = torch.histogram(
        log_freq.clamp(DENSITY_BINS[0], DENSITY_BINS[-1]), bins=DENSITY_BINS.double()
    ).hist
    return {
        "n_rows": n,
        "mse": sse / (n * d),
        "mse_per_row": sse / n,
        "nmse": sse / total_var if total_var > 0 else float("nan"),
        "explained_variance": ev.compute(),
        "cosine_similarity": cos_sum / n,
        "l0": l0_sum / n,
        "dead_fraction": float((fired_s == 0).double().mean()),
        "dense_fraction": float((freq_s > dense_threshold).double().mean()),
        "dense_threshold": dense_threshold,
        "density_histogram": {
            "log10_density_edges": [round(float(e), 4) for e in DENSITY_BINS],
            "counts": [int(c) for c in counts],
            "never_fired": int((fired_s == 0).sum()),
        },
        "_mean_d": mean_d,
    }
