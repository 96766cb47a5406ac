"""Benchmark: ground-truth scoring time and peak memory vs the number of rows (streaming, flat memory).

For each size it writes a float16 store of ``n`` shapes-world test images (64 patch rows each, width
``--d-in``: the patch's 19 factor indicators, then Gaussian noise), and in a fresh child process scores a
ReLU SAE of ``--d-sae`` latents on it with ``benchmark.score_rows`` over the store's ordered reader
(all three passes, probing on ``--probe-images`` images). It prints, per size: rows, seconds, rows/s,
and the peak anonymous memory (RssAnon, sampled every 5 ms; glibc's mmap threshold is fixed at 1 MiB
unless ``--glibc-default``) the scoring added over the process after opening the store, with the ratios
to the smallest size. Flat memory means the peak ratio stays near 1 while the
rows grow.

    .venv/bin/python scripts/bench/benchmark_scoring.py [--images 250,1000,4000] [--d-in 64] [--d-sae 512]
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", default="250,1000,4000", help="comma-separated image counts")
    parser.add_argument("--d-in", type=int, default=64)
    parser.add_argument("--d-sae", type=int, default=512)
    parser.add_argument("--probe-images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="keep glibc's dynamic mmap threshold (freed batch buffers then stay in the heap and count as RSS)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.images.split(",")]
    ctx = multiprocessing.get_context("spawn")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp:
        for n in sizes:
            path = Path(tmp) / f"store-{n}"
            proc = ctx.Process(target=_write_store, args=(path, n, args.d_in))
            proc.start()
            proc.join()
            queue = ctx.Queue()
            proc = ctx.Process(target=_score, args=(path, n, args, queue))
            proc.start()
            results.append(queue.get())
            proc.join()
    base = results[0]
    print(
        f"{'images':>8}{'rows':>10}{'seconds':>10}{'rows/s':>10}{'peak MiB':>10}{'rows x':>8}{'time x':>8}{'peak x':>8}"
    )
    for r in results:
        print(
            f"{r['images']:>8}{r['rows']:>10}{r['seconds']:>10.1f}{r['rows'] / r['seconds']:>10.0f}"
            f"{r['peak_mib']:>10.1f}{r['rows'] / base['rows']:>8.1f}{r['seconds'] / base['seconds']:>8.2f}"
            f"{r['peak_mib'] / max(base['peak_mib'], 1e-9):>8.2f}"
        )


def _write_store(path: Path, n_images: int, d_in: int) -> None:
    from vision_sae_lens.data.synthetic import FACTOR_NAMES, ShapesWorld
    from vision_sae_lens.layout import TokenLayout
    from vision_sae_lens.store import StoreWriter

    layout = TokenLayout(image_size=(32, 32), patch_size=(4, 4), has_cls=True)
    world = ShapesWorld("test", n_images=n_images)
    writer = StoreWriter(
        path, backbone_id="demo:shapes-vit", sites=["blocks.2.hook_resid_post"], d_model=d_in, layout=layout,
        tokens="patches", dataset=world.description,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    tok = np.arange(layout.n_prefix, layout.n_tokens)
    f = len(FACTOR_NAMES)
    for start in range(0, n_images, 256):
        imgs = range(start, min(start + 256, n_images))
        acts = rng.standard_normal((len(imgs) * layout.n_patches, d_in), dtype=np.float32) * 0.1
        acts[:, :f] += np.concatenate([world.patch_factors(i, patch_size=4) for i in imgs])
        writer.append(
            {"blocks.2.hook_resid_post": acts},
            np.repeat(np.asarray(imgs), layout.n_patches),
            np.tile(tok, len(imgs)),
        )
    writer.finish(n_images=n_images)


def _score(path: Path, n_images: int, args: argparse.Namespace, queue) -> None:
    import torch

    from vision_sae_lens.benchmark import ScoreConfig, SyntheticTruth, score_rows
    from vision_sae_lens.data.synthetic import ShapesWorld
    from vision_sae_lens.store import ActivationStore

    torch.set_num_threads(1)
    if not args.glibc_default:
        _fix_mmap_threshold()
    store = ActivationStore(path)

    class ReLUSAE(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.w = torch.nn.Parameter(torch.randn(args.d_in, args.d_sae, generator=g) / args.d_in**0.5)

        def encode(self, x):
            return torch.relu(x @ self.w - 0.1)

        def decode(self, f):
            return f @ self.w.T

    sae = ReLUSAE()
    truth = SyntheticTruth(ShapesWorld("test", n_images=n_images), patch_size=4)
    cfg = ScoreConfig(probe_images=min(args.probe_images, n_images), batch_size=args.batch)
    base = _rss_mib()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    score_rows(sae, lambda: store.ordered("blocks.2.hook_resid_post", cfg.batch_size), truth,
               layout=store.layout, n_images=n_images, config=cfg, progress=False)  # fmt: skip
    seconds = time.perf_counter() - start
    stop.set()
    thread.join()
    queue.put({"images": n_images, "rows": store.n_rows, "seconds": seconds, "peak_mib": peak[0] - base})


def _fix_mmap_threshold(nbytes: int = 2**20) -> None:
    """Serve blocks >= 1 MiB with mmap and return them on free (glibc otherwise raises the threshold
    after the first large free, and per-batch buffers then linger in a fragmented heap), as
    scripts/bench/analysis.py does."""
    import ctypes
    import ctypes.util

    path = ctypes.util.find_library("c")
    if path and hasattr(ctypes.CDLL(path), "mallopt"):
        ctypes.CDLL(path).mallopt(-3, nbytes)  # M_MMAP_THRESHOLD


def _rss_mib() -> float:
    # RssAnon: heap memory, not the page cache of the memory-mapped shards.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return 0.0


if __name__ == "__main__":
    main()
