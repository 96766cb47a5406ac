"""Activation store benchmarks (CPU, random-init models, no downloads). Each number is a ratio measured in
one run on this machine:

(a) recording throughput / plain forward throughput of the same model up to the same block (target >= 0.9);
(b) ``shuffled()`` rows/s / sequential ``np.memmap`` read rows/s of the same file, warm page cache
    (target >= 0.5), plus absolute rows/s at d_model 768;
(c) peak RSS while recording 10x more images than the recorder's in-flight buffers hold (must stay flat).

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench/store.py [--quick]``.
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vision_sae_lens.backbones import HookedSAEViT, TokenLayout
from vision_sae_lens.cpu_memory import keep_freed_memory
from vision_sae_lens.store import ActivationStore, StoreWriter, cache_activations


def images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def bench_recording(tmp: Path, n_images: int) -> None:
    torch.manual_seed(0)
    model = HookedSAEViT.from_pretrained("timm:vit_small_patch16_224", pretrained=False)
    sites = ["blocks.5.hook_resid_post", "blocks.6.hook_resid_post"]
    batch = 32
    imgs = images(n_images, 224)
    pixels = model.preprocess(imgs)

    def plain_forward() -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            for lo in range(0, n_images, batch):
                model(pixels[lo : lo + batch], stop_at_layer=7)
            return n_images / (time.perf_counter() - t0)

    def recording(run: int) -> float:
        t0 = time.perf_counter()
        cache_activations(
            model, imgs, sites=sites, out_dir=tmp / f"rec{run}", batch_size=batch, progress=False
        )
        return n_images / (time.perf_counter() - t0)

    with torch.inference_mode():
        model(pixels[:batch], stop_at_layer=7)  # warm-up
    # Interleaved and best-of-2: the machine is shared, so a single run is at the mercy of its neighbours.
    plain, rec = 0.0, 0.0
    for run in range(2):
        plain = max(plain, plain_forward())
        rec = max(rec, recording(run))
    print(f"(a) recording ViT-S/16 224px, 2 sites up to block 7, fp16, {n_images} images, batch {batch}:")
    print(
        f"    plain forward {plain:.1f} img/s, recording {rec:.1f} img/s -> ratio {rec / plain:.2f} (target >= 0.9)"
    )


def bench_shuffled(tmp: Path, n_rows: int) -> None:
    d, site = 768, "blocks.0.hook_resid_post"
    layout = TokenLayout(image_size=(224, 224), patch_size=(16, 16), has_cls=True)
    writer = StoreWriter(
        tmp / "shuf", backbone_id="bench", sites={site: d}, d_model=d, layout=layout, tokens="patches",
        dtype="float16", shard_rows=n_rows,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    chunk = 16384
    for lo in range(0, n_rows, chunk):
        hi = min(lo + chunk, n_rows)
        rows = np.arange(lo, hi)
        writer.append(
            {site: rng.standard_normal((hi - lo, d), dtype=np.float32)}, rows // 196, rows % 196 + 1
        )
    store = writer.finish()
    path = store.path / store.shards[0]["files"][site]["path"]
    mm = np.memmap(path, dtype=np.float16, mode="r", shape=(n_rows, d))
    for lo in range(0, n_rows, 4096):  # warm the page cache
        np.array(mm[lo : lo + 4096])

    def sequential() -> float:
        t0 = time.perf_counter()
        for lo in range(0, n_rows, 4096):
            np.array(mm[lo : lo + 4096])
        return n_rows / (time.perf_counter() - t0)

    def sequential_fp32() -> float:  # the same output as shuffled(): float32 tensors of 4096 rows
        t0 = time.perf_counter()
        for lo in range(0, n_rows, 4096):
            torch.from_numpy(np.array(mm[lo : lo + 4096])).float()
        return n_rows / (time.perf_counter() - t0)

    store = ActivationStore(store.path)
    for _ in store.shuffled(site, 4096, seed=0):  # first pass checks the checksum once
        pass

    def shuffled() -> float:
        t0 = time.perf_counter()
        n = sum(len(b) for b in store.shuffled(site, 4096, seed=1))
        return n / (time.perf_counter() - t0)

    seq = max(sequential() for _ in range(3))
    seq32 = max(sequential_fp32() for _ in range(3))
    shuf = max(shuffled() for _ in range(3))
    print(f"(b) shuffled() d_model {d} fp16 -> fp32 batches of 4096, {n_rows} rows, warm page cache:")
    print(f"    shuffled() {shuf:,.0f} rows/s ({shuf * d * 4 / 2**30:.2f} GiB/s of float32 batches)")
    print(
        f"    sequential memmap read (raw copy) {seq:,.0f} rows/s -> ratio {shuf / seq:.2f} (target >= 0.5)"
    )
    print(f"    sequential memmap read to float32 batches {seq32:,.0f} rows/s -> ratio {shuf / seq32:.2f}")


def bench_rss(tmp: Path, n_images: int) -> None:
    torch.manual_seed(0)
    model = HookedSAEViT.from_pretrained("timm:vit_tiny_patch16_224", pretrained=False, img_size=112)
    batch = 16
    in_flight = (2 + 4 + 2) * batch  # loader queue + writer queue + the batches being worked on
    imgs = images(n_images, 112)
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter(), _rss_bytes()))
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    thread.start()
    cache_activations(
        model, imgs, sites=["blocks.5.hook_resid_post"], out_dir=tmp / "rss", dtype="float32",
        batch_size=batch, shard_images=64, progress=False,
    )  # fmt: skip
    done.set()
    thread.join()
    span = samples[-1][0] - start
    early = max(r for t, r in samples if t - start <= span * 0.2)
    late = max(r for t, r in samples if t - start >= span * 0.6)
    row_mb = 196 * 192 * 4 / 2**20
    print(f"(c) recording {n_images} images (~{n_images / in_flight:.0f}x the ~{in_flight} images in flight, "
          f"{n_images * row_mb:.0f} MiB of rows): peak RSS first 20% {early / 2**20:.0f} MiB, "
          f"last 40% {late / 2**20:.0f} MiB -> growth {(late - early) / 2**20:+.0f} MiB "
          f"(process peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")  # fmt: skip


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (for a smoke run)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # Recommended for CPU runs that allocate many large tensors (see vision_sae_lens.cpu_memory); applies
    # to the baselines and to the store alike.
    keep_freed_memory()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        bench_recording(tmp, 64 if args.quick else 160)
        bench_shuffled(tmp, 65536 if args.quick else 262144)
        bench_rss(tmp, 320 if args.quick else 1280)


if __name__ == "__main__":
    main()
