"""Benchmark: streaming top-k over an activation store vs reading the store, and its peak memory.

Writes a synthetic float16 store (``--rows`` rows of width ``--d-in``, ``--tokens`` tokens per image),
then times (warm page cache, interleaved, medians of ``--repeats``):

* sequential read: ``store.ordered(site, batch)`` touching every batch (rows/s);
* top-k: ``analysis.top_activating(sae, store, k)`` with a ReLU SAE of ``--d-sae`` latents (rows/s),
  which also encodes every row with the SAE;

and reports their ratio (target >= 0.5), the SAE encoder alone on in-memory rows (on a CPU it, not
the reading or the top-k bookkeeping, sets the pace), plus the peak anonymous memory (RssAnon, sampled every 5 ms;
glibc's mmap threshold is fixed at 1 MiB unless ``--glibc-default``)
the top-k pass adds over the process after opening the store (the store is built in a child process),
against the store's size on disk (the store is meant to be >= 10x that).

    .venv/bin/python scripts/bench/analysis.py [--rows 1000000] [--d-in 192] [--d-sae 1536] [--k 16]
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from vision_sae_lens.analysis import top_activating
from vision_sae_lens.layout import TokenLayout
from vision_sae_lens.metadata import VisionFacts, apply_vision_facts
from vision_sae_lens.store import ActivationStore, StoreWriter

SITE = "blocks.0.hook_resid_post"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--d-in", type=int, default=192)
    parser.add_argument("--d-sae", type=int, default=1536)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=196, help="patch tokens per image (14x14)")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", help="where to write the store (default: a temporary folder)")
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="keep glibc's dynamic mmap threshold (freed batch buffers then stay in the heap and count as RSS)",
    )
    args = parser.parse_args()
    if not args.glibc_default:
        fix_mmap_threshold()
    torch.manual_seed(0)
    root = Path(args.dir or tempfile.mkdtemp(prefix="vsl_bench_analysis_"))
    try:
        # Built in a child process so this process's memory holds only what the analysis allocates.
        child = multiprocessing.get_context("fork").Process(target=build_store, args=(root / "store", args))
        child.start()
        child.join()
        store = ActivationStore(root / "store")
        base_anon = rss_anon()
        store_bytes = sum(f.stat().st_size for f in (root / "store").rglob("*") if f.is_file())
        sae = StandardSAE(StandardSAEConfig(d_in=args.d_in, d_sae=args.d_sae))
        with torch.no_grad():
            sae.W_enc.normal_(0, args.d_in**-0.5)
            sae.b_enc.fill_(-0.5)
        apply_vision_facts(sae, VisionFacts("bench:synthetic", SITE, "patches", store.layout))
        read_s, topk_s, peak = [], [], 0
        for _ in range(args.repeats):
            with PeakAnon(base_anon) as mem:
                topk_s.append(
                    timed(lambda: top_activating(sae, store, k=args.k, batch_size=args.batch, progress=False))
                )
            peak = max(peak, mem.peak_delta)
            read_s.append(timed(lambda: sum(int(r.acts.shape[0]) for r in store.ordered(SITE, args.batch))))
        # The encoder alone on in-memory rows of the same batch size: the bound on a CPU.
        batch = store.read_rows(SITE, 0, min(args.batch, store.n_rows))
        with torch.no_grad():
            encode_s = statistics.median(timed(lambda: sae.encode(batch)) for _ in range(10)) / len(batch)
        read_rps, topk_rps, encode_rps = (
            store.n_rows / statistics.median(read_s),
            store.n_rows / statistics.median(topk_s),
            1.0 / encode_s,
        )
        print(f"store: {store.n_rows:,} rows x {args.d_in} float16 = {store_bytes / 2**20:.0f} MiB on disk")
        print(
            f"SAE: d_sae {args.d_sae}, k {args.k}, batch {args.batch} rows, torch threads {torch.get_num_threads()}"
        )
        print(f"sequential read : {read_rps:12,.0f} rows/s")
        print(f"top-k           : {topk_rps:12,.0f} rows/s  (ratio {topk_rps / read_rps:.2f}, target >= 0.5)")
        print(
            f"SAE encode only : {encode_rps:12,.0f} rows/s  (top-k reaches {topk_rps / encode_rps:.2f} of the "
            "encoder alone: the rest is reading and the per-image top-k)"
        )
        print(
            f"top-k peak extra anonymous memory: {peak / 2**20:.0f} MiB "
            f"(store is {store_bytes / max(peak, 1):.1f}x that; top-k buffers {args.d_sae * args.k * 20 / 2**20:.1f} MiB)"
        )
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


def build_store(path: Path, args: argparse.Namespace) -> None:
    side = int(round(args.tokens**0.5))
    layout = TokenLayout(image_size=(side * 16, side * 16), patch_size=(16, 16), has_cls=True)
    writer = StoreWriter(
        path, backbone_id="bench:synthetic", sites=[SITE], d_model=args.d_in, layout=layout, tokens="patches"
    )
    rng = np.random.default_rng(0)
    n_images = max(1, args.rows // layout.n_patches)
    tok = np.arange(layout.n_prefix, layout.n_tokens)
    chunk = max(1, 65536 // layout.n_patches)
    for start in range(0, n_images, chunk):
        m = min(chunk, n_images - start)
        acts = rng.standard_normal((m * layout.n_patches, args.d_in), dtype=np.float32)
        writer.append({SITE: acts}, np.repeat(np.arange(start, start + m), layout.n_patches), np.tile(tok, m))
    writer.finish(n_images=n_images)


def fix_mmap_threshold(nbytes: int = 2**20) -> None:
    """Serve blocks >= 1 MiB with mmap and return them on free (glibc otherwise raises the threshold
    after the first large free, and per-batch buffers then linger in a fragmented heap)."""
    import ctypes
    import ctypes.util

    path = ctypes.util.find_library("c")
    if path and hasattr(ctypes.CDLL(path), "mallopt"):
        ctypes.CDLL(path).mallopt(-3, nbytes)  # M_MMAP_THRESHOLD


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class PeakAnon:
    """Peak of /proc/self/status RssAnon above ``base`` (sampled by a thread)."""

    def __init__(self, base: int) -> None:
        self.base = base

    def __enter__(self) -> PeakAnon:
        self.peak = rss_anon()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_anon())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon())

    @property
    def peak_delta(self) -> int:
        return self.peak - self.base


def rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    main()
