"""Benchmark: what saev-style inputs cost the training feed (token selection, subtract_mean, scale_norm).

Writes a synthetic float16 store of ``--images`` images x (CLS + ``--grid``² patches) x ``--d-in``, then
times in one run (warm page cache, interleaved, medians of ``--repeats``):

* plain: ``batch_stream`` over every stored row (rows/s);
* patches: the same with ``token_types=["patches"]`` (rows/s of emitted rows);
* normalised: patches plus the ``InputNormalization`` applied to every batch (rows/s);
* statistics: ``prepare_inputs`` (token filter + two-pass statistics over up to 262,144 rows), seconds,

and prints the ratios normalised / plain and patches / plain (1.0 = free).

    .venv/bin/python scripts/bench/normalization.py [--images 4000] [--grid 14] [--d-in 384]
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from vision_sae_lens.layout import TokenLayout
from vision_sae_lens.store import StoreWriter
from vision_sae_lens.train.feed import batch_stream, prepare_inputs

SITE = "blocks.0.hook_resid_post"


def build_store(root: Path, *, images: int, grid: int, d: int):
    layout = TokenLayout(image_size=(grid * 16, grid * 16), patch_size=(16, 16), has_cls=True)
    t = layout.n_tokens
    writer = StoreWriter(
        root,
        backbone_id="bench:synthetic",
        sites={SITE: d},
        d_model=d,
        layout=layout,
        tokens="all",
        dtype="float16",
    )
    g = np.random.default_rng(0)
    for lo in range(0, images, 500):
        n = min(500, images - lo)
        acts = g.normal(0.5, 1.0, (n * t, d)).astype(np.float16)
        writer.append({SITE: acts}, np.repeat(np.arange(lo, lo + n), t), np.tile(np.arange(t), n))
    return writer.finish()


def rows_per_second(store, *, batch: int, n_batches: int, **kw) -> float:
    stream = batch_stream(store, SITE, batch_size=batch, seed=0, stop_row=store.n_rows, **kw)
    t0 = time.perf_counter()
    for b in itertools.islice(stream, n_batches):
        b.sum()  # touch every value, as a training step would
    return n_batches * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--grid", type=int, default=14)
    ap.add_argument("--d-in", type=int, default=384)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench_norm_"))
    try:
        store = build_store(root / "acts", images=args.images, grid=args.grid, d=args.d_in)
        cfg = SimpleNamespace(
            tokens="patches", site=SITE, batch_size=args.batch, subtract_mean=True, scale_norm=True
        )
        t0 = time.perf_counter()
        inputs = prepare_inputs(store, cfg, n_train=store.n_rows)
        stats_s = time.perf_counter() - t0
        kinds = {
            "plain": {},
            "patches": {"token_types": inputs.token_types},
            "normalised": {"token_types": inputs.token_types, "normalization": inputs.normalization},
        }
        rate_by_kind: dict[str, list[float]] = {k: [] for k in kinds}
        rows_per_second(store, batch=args.batch, n_batches=10)  # warm the page cache
        for _ in range(args.repeats):
            for kind, kw in kinds.items():
                rate_by_kind[kind].append(
                    rows_per_second(store, batch=args.batch, n_batches=args.batches, **kw)
                )
        med = {k: statistics.median(v) for k, v in rate_by_kind.items()}
        print(
            f"store: {store.n_rows} rows x {args.d_in} (fp16), {args.images} images of {store.layout.n_tokens} tokens"
        )
        for kind, rate in med.items():
            print(f"{kind:>11}: {rate:,.0f} rows/s")
        print(f" statistics: {stats_s:.2f} s over {inputs.normalization.rows} rows (once per run)")
        print(f"ratio normalised / plain: {med['normalised'] / med['plain']:.3f}")
        print(f"ratio patches / plain:    {med['patches'] / med['plain']:.3f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
