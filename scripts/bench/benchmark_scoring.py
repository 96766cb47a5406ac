"""Peak memory and time of benchmark scoring (``benchmark.score_rows``) as rows, latents and labels grow.

For every (images, latents x labels) combination it writes, in a fresh child process, a float32 store
of a 8x8-pixel, patch-4 ViT layout (CLS + 4 patches per image, width ``--d-in``) whose rows carry
their images' labels (each image has ``--labels-per-image`` of the labels; a label adds a fixed random
direction to every patch of the image, plus Gaussian noise), then in another fresh child process
scores an SAE on it with ``score_rows`` over the store's ordered reader (all passes, probing on 16
images). The SAE is what a trained one looks like to the scorer: one latent per label reads the label's
direction (a detector), the other latents are random projections that fire on about 2% of rows.

It prints, per run: rows, latents, labels, seconds, the passes over the rows, and the peak anonymous
memory (RssAnon sampled every 5 ms; glibc's mmap threshold fixed at 1 MiB) that scoring added over the
process after opening the store. Then it fits ``peak = a * latents * labels + b * latents + c`` to the
runs (least squares; ``c`` = 0 with two runs) and extrapolates to ``--extrapolate``. ``--plain`` adds
runs on plain rows (a :class:`RowLayout` store of ``--plain-rows`` sparse codes times random unit
directions, scored against its :class:`ActivationTruth`, SynthSAEBench's metrics included), e.g.
``1024x4096`` for SynthSAEBench's quarter size. Run it with
``PYTHONPATH=<an older checkout>`` to measure that version the same way.

    .venv/bin/python scripts/bench/benchmark_scoring.py [--images 2000] [--sizes 4096x100,24576x10]
        [--extrapolate 65536x1000] [--d-in 64]
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

LABEL_SEED, SAE_SEED = 0, 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", default="2000", help="comma-separated image counts")
    parser.add_argument("--sizes", default="4096x100,24576x10", help="comma-separated LATENTSxLABELS")
    parser.add_argument(
        "--extrapolate", default="65536x1000", help="LATENTSxLABELS to extrapolate the peak to"
    )
    parser.add_argument(
        "--plain",
        default="",
        help="comma-separated LATENTSxFEATURES scored on plain rows with an ActivationTruth",
    )
    parser.add_argument("--plain-rows", type=int, default=32768, help="rows of the --plain stores")
    parser.add_argument("--d-in", type=int, default=64)
    parser.add_argument("--labels-per-image", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4096)
    args = parser.parse_args()
    runs = [(int(n), *_size(s)) for n in args.images.split(",") if n for s in args.sizes.split(",") if s]
    ctx = multiprocessing.get_context("spawn")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp:
        for n_images, n_latents, n_labels in runs:
            path = Path(tmp) / f"store-{n_images}-{n_labels}"
            if not path.exists():
                _child(ctx, _write_store, path, n_images, n_labels, args)
            results.append(_child(ctx, _score, path, n_images, n_latents, n_labels, args))
            r = results[-1]
            print(
                f"measured {r['images']} images, {r['latents']} x {r['labels']}: {r['peak_mib']:.0f} MiB",
                flush=True,
            )
        for n_latents, n_features in [_size(s) for s in args.plain.split(",") if s]:
            path = Path(tmp) / f"plain-{n_features}"
            if not path.exists():
                _child(ctx, _write_plain, path, n_features, args)
            results.append(_child(ctx, _score, path, 0, n_latents, n_features, args))
            print(
                f"measured plain rows, {n_latents} x {n_features}: {results[-1]['peak_mib']:.0f} MiB",
                flush=True,
            )
    print(f"\n{'images':>7}{'rows':>9}{'latents':>9}{'labels':>8}{'seconds':>9}{'passes':>8}{'peak MiB':>10}")
    for r in results:
        print(f"{r['images']:>7}{r['rows']:>9}{r['latents']:>9}{r['labels']:>8}{r['seconds']:>9.1f}"
              f"{r['passes']:>8}{r['peak_mib']:>10.0f}")  # fmt: skip
    image_runs = [r for r in results if r["images"]]
    if not image_runs:
        return
    s_x, f_x = _size(args.extrapolate)
    coef = _fit(image_runs)
    predicted = coef[0] * s_x * f_x + coef[1] * s_x + coef[2]
    print(f"\nfit: peak MiB = {coef[0]:.3g} * latents * labels + {coef[1]:.3g} * latents + {coef[2]:.3g}")
    print(f"extrapolated peak at {s_x} latents x {f_x} labels: {predicted / 1024:.2f} GiB")


def _size(text: str) -> tuple[int, int]:
    latents, labels = text.lower().split("x")
    return int(latents), int(labels)


def _fit(results: list[dict]) -> tuple[float, float, float]:
    x = np.array([[r["latents"] * r["labels"], r["latents"], 1.0] for r in results], dtype=np.float64)
    y = np.array([r["peak_mib"] for r in results])
    cols = 3 if len(results) >= 3 else 2
    coef, *_ = np.linalg.lstsq(x[:, :cols], y, rcond=None)
    return (float(coef[0]), float(coef[1]), float(coef[2]) if cols == 3 else 0.0)


def _child(ctx, target, *args):
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def _inputs(n_images: int, n_labels: int, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(LABEL_SEED)
    labels = np.zeros((n_images, n_labels), dtype=bool)
    for i in range(n_images):
        labels[i, rng.choice(n_labels, size=min(args.labels_per_image, n_labels), replace=False)] = True
    directions = rng.standard_normal((n_labels, args.d_in)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return labels, directions


def _write_store(path: Path, n_images: int, n_labels: int, args: argparse.Namespace, queue) -> None:
    from vision_sae_lens.layout import TokenLayout
    from vision_sae_lens.store import StoreWriter

    layout = TokenLayout(image_size=(8, 8), patch_size=(4, 4), has_cls=True)
    labels, directions = _inputs(n_images, n_labels, args)
    writer = StoreWriter(path, backbone_id="bench:scoring", sites=["x"], d_model=args.d_in, layout=layout,
                         tokens="all", dtype="float32")  # fmt: skip
    rng = np.random.default_rng(2)
    p = layout.n_tokens
    for start in range(0, n_images, 1024):
        imgs = np.arange(start, min(start + 1024, n_images))
        signal = (labels[imgs].astype(np.float32) @ directions) * 2.0
        acts = np.repeat(signal, p, axis=0) + 0.3 * rng.standard_normal(
            (len(imgs) * p, args.d_in), dtype=np.float32
        )
        writer.append({"x": acts}, np.repeat(imgs, p), np.tile(np.arange(p), len(imgs)))
    writer.finish(n_images=n_images)
    queue.put(None)


def _write_plain(path: Path, n_features: int, args: argparse.Namespace, queue) -> None:
    """Plain rows: sparse non-negative codes (about 16 of ``n_features`` active) times unit directions."""
    import torch

    from vision_sae_lens.benchmark import write_plain_rows

    g = torch.Generator().manual_seed(LABEL_SEED)
    directions = torch.randn(n_features, args.d_in, generator=g)
    directions /= directions.norm(dim=1, keepdim=True)

    def batches():
        for start in range(0, args.plain_rows, 4096):
            n = min(4096, args.plain_rows - start)
            active = torch.rand(n, n_features, generator=g) < 16 / n_features
            codes = torch.rand(n, n_features, generator=g) * active
            yield codes @ directions + 0.05 * torch.randn(n, args.d_in, generator=g), codes

    write_plain_rows(path, batches(), source_id="bench:plain", directions=directions, progress=False)
    queue.put(None)


def _score(path: Path, n_images: int, n_latents: int, n_labels: int, args: argparse.Namespace, queue) -> None:
    import sae_lens.synthetic  # noqa: F401  # imported before the baseline: its import is not scoring memory
    import torch

    from vision_sae_lens.benchmark import ArrayTruth, ScoreConfig, score_rows
    from vision_sae_lens.store import ActivationStore

    torch.set_num_threads(1)
    _fix_mmap_threshold()
    store = ActivationStore(path)
    if n_images == 0:  # plain rows: the truth is the store's own, the planted latents read its directions
        from vision_sae_lens.benchmark import ActivationTruth
        from vision_sae_lens.benchmark.plain_rows import truth_path_of

        truth: Any = ActivationTruth.load(truth_path_of(path), store=store)
        directions = truth.directions.numpy()
    else:
        labels, directions = _inputs(n_images, n_labels, args)
        truth = ArrayTruth(labels, n_patches=store.layout.n_patches)
    g = torch.Generator().manual_seed(SAE_SEED)
    w = torch.randn(args.d_in, n_latents, generator=g) / args.d_in**0.5
    b = torch.full((n_latents,), -2.0)  # a random unit projection of these rows exceeds 2 on ~2% of them
    planted = min(n_labels, n_latents)
    w[:, :planted] = torch.from_numpy(directions[:planted]).T
    b[:planted] = -1.0

    class ReLUSAE(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w, self.b = torch.nn.Parameter(w), torch.nn.Parameter(b)

        def encode(self, x):
            return torch.relu(x @ self.w + self.b)

        def decode(self, f):
            return f @ self.w.T

        @property
        def W_dec(self):  # noqa: N802  # SAELens' name, read by SynthSAEBench's metrics
            return self.w.T

    cfg = ScoreConfig(probe_images=16, probe_ks=(1,), batch_size=args.batch)
    passes = _count_passes()
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
    site = store.sites[0]
    score_rows(ReLUSAE(), lambda: store.ordered(site, cfg.batch_size), truth, layout=store.layout,
               n_images=store.n_images, config=cfg, progress=False)  # fmt: skip
    seconds = time.perf_counter() - start
    stop.set()
    thread.join()
    queue.put({"images": n_images, "rows": store.n_rows, "latents": n_latents, "labels": n_labels,
               "seconds": seconds, "peak_mib": peak[0] - base, "passes": passes()})  # fmt: skip


def _count_passes():
    """Counts the scorer's reads of the rows (the number of ``ordered`` iterations started)."""
    from vision_sae_lens.store import ActivationStore

    count = [0]
    original = ActivationStore.ordered

    def ordered(self, *a, **k):
        count[0] += 1
        return original(self, *a, **k)

    ActivationStore.ordered = ordered
    return lambda: count[0]


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
