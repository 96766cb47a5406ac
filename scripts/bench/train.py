"""Benchmark SAE training: store-fed vs in-memory rows/s, and a 4-SAE sweep vs 4 sequential runs.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench/train.py [--d-in 256] [--rows 262144] [--steps 60]

1. The same TopK SAE trains once fed from an on-disk activation store (fp16, through
   ``ActivationStore.shuffled``) and once fed from a float32 tensor already in memory; the ratio
   of training rows/s says whether data loading is the bottleneck (target >= 0.9).
2. Four SAEs (topk, batchtopk, standard, jumprelu) train in one sweep (one data pass) and then
   one after another; the wall-time ratio sweep / sequential shows what sharing the pass saves.

Times are those of the training loops (``TrainRun.train_seconds``), evaluation excluded.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sae_lens import (
    BatchTopKTrainingSAEConfig,
    JumpReLUTrainingSAEConfig,
    StandardTrainingSAEConfig,
    TopKTrainingSAEConfig,
)

from vision_sae_lens.layout import TokenLayout
from vision_sae_lens.store.writer import StoreWriter
from vision_sae_lens.train import TrainConfig, train_sae

SITE = "blocks.0.hook_resid_post"
LAYOUT = TokenLayout(image_size=(224, 224), patch_size=(16, 16), has_cls=True)  # 196 patches


class InMemoryStore:
    """The store interface over a float32 tensor held in memory (the 'no data loading' baseline)."""

    def __init__(self, store, rows_nd: torch.Tensor) -> None:
        self._store, self.rows_nd = store, rows_nd
        for name in (
            "metadata",
            "fingerprint",
            "sites",
            "d_model",
            "layout",
            "tokens",
            "backbone_id",
            "dataset",
        ):
            setattr(self, name, getattr(store, name))
        self.n_rows = rows_nd.shape[0]
        self.path = None

    def site_dim(self, site):
        return self.rows_nd.shape[1]

    def shuffled(
        self,
        site,
        batch_size,
        *,
        seed=0,
        start_row=0,
        stop_row=None,
        epochs=1,
        drop_last=True,
        skip_batches=0,
    ):
        stop = self.n_rows if stop_row is None else stop_row
        g = torch.Generator().manual_seed(seed)
        n = 0
        for _ in range(epochs):
            perm = torch.randperm(stop - start_row, generator=g) + start_row
            for i in range(0, len(perm) - batch_size + 1, batch_size):
                if n >= skip_batches:
                    yield self.rows_nd[perm[i : i + batch_size]]
                n += 1

    def ordered(self, site, batch_size, *, start_row=0, stop_row=None):
        return self._store.ordered(site, batch_size, start_row=start_row, stop_row=stop_row)


def build_store(path: Path, n_rows: int, d: int):
    per_image = LAYOUT.n_patches
    n_rows = n_rows // per_image * per_image
    g = np.random.default_rng(0)
    writer = StoreWriter(
        path, backbone_id="bench", sites=[SITE], d_model=d, layout=LAYOUT, tokens="patches", dtype="float16"
    )
    chunk = per_image * 256
    for lo in range(0, n_rows, chunk):
        hi = min(lo + chunk, n_rows)
        rows = g.standard_normal((hi - lo, d), dtype=np.float32)
        idx = np.arange(lo, hi)
        writer.append({SITE: rows}, idx // per_image, idx % per_image + LAYOUT.n_prefix)
    return writer.finish()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-in", type=int, default=256)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--rows", type=int, default=262144)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    d, d_sae, bs = args.d_in, args.d_in * args.expansion, args.batch_size
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    t = time.perf_counter()
    store = build_store(tmp / "acts", args.rows, d)
    print(f"store: {store.n_rows} rows x {d} fp16 written in {time.perf_counter() - t:.1f}s ({tmp})")
    memory = InMemoryStore(store, store.read_rows(SITE, 0, store.n_rows))

    def cfg(src, sae, name):
        return TrainConfig(
            store=src,
            site=SITE,
            sae=sae,
            training_tokens=bs * args.steps,
            batch_size=bs,
            lr=3e-4,
            device=args.device,
            name=name,
            eval_fraction=0.01,
            max_eval_rows=bs,
        )

    def topk():
        return TopKTrainingSAEConfig(d_in=d, d_sae=d_sae, k=32)

    results = {}
    train_sae(cfg(store, topk(), "warmup"), out_dir=tmp / "warm", progress=False)  # first-call costs
    from_store = train_sae(cfg(store, topk(), "store"), out_dir=tmp / "a", progress=False)
    from_memory = train_sae(cfg(memory, topk(), "memory"), out_dir=tmp / "b", progress=False)
    rows = bs * args.steps
    results["store_rows_per_s"] = rows / from_store.train_seconds
    results["memory_rows_per_s"] = rows / from_memory.train_seconds
    results["store_over_memory"] = results["store_rows_per_s"] / results["memory_rows_per_s"]

    saes = {
        "topk": topk,
        "batchtopk": lambda: BatchTopKTrainingSAEConfig(d_in=d, d_sae=d_sae, k=32),
        "standard": lambda: StandardTrainingSAEConfig(d_in=d, d_sae=d_sae, l1_coefficient=1.0),
        "jumprelu": lambda: JumpReLUTrainingSAEConfig(d_in=d, d_sae=d_sae),
    }
    t = time.perf_counter()
    sweep = train_sae(
        [cfg(store, make(), n) for n, make in saes.items()], out_dir=tmp / "sweep", progress=False
    )
    sweep_wall = time.perf_counter() - t
    t = time.perf_counter()
    seq = [
        train_sae(cfg(store, make(), n), out_dir=tmp / f"seq_{n}", progress=False) for n, make in saes.items()
    ]
    seq_wall = time.perf_counter() - t
    results["sweep_train_s"] = max(r.train_seconds for r in sweep)
    results["sequential_train_s"] = sum(r.train_seconds for r in seq)
    results["sweep_over_sequential_train"] = results["sweep_train_s"] / results["sequential_train_s"]
    results["sweep_over_sequential_wall"] = sweep_wall / seq_wall
    results.update(
        d_in=d,
        d_sae=d_sae,
        batch_size=bs,
        steps=args.steps,
        device=str(sweep[0].sae.device),
        threads=torch.get_num_threads(),
    )
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
