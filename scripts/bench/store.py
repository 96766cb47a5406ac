"""Activation store benchmarks (CPU, random-init models, no downloads). Each number is a ratio measured in
one run on this machine:

(a) recording throughput / throughput of a plain loop (JPEG decode, preprocess, forward up to the same
    block) for a timm, an open_clip and a transformers ViT (target >= 0.95), and the peak RSS of each
    (target <= 1.1), each case in a fresh process;
(b) ``ordered()`` rows/s / a raw ``np.memmap`` sequential read (target >= 0.8), and ``shuffled()`` rows/s /
    a raw ``np.memmap`` read of the same rows in the same order (target >= 0.9), float16 on disk to float32
    batches on both sides, warm page cache;
(c) peak RSS while recording 10x more images than the recorder's in-flight buffers hold (must stay flat);
(d) ``verify()`` throughput (MB/s, every core) next to one thread of sha256 and of blake2b.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench/store.py [--quick]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import subprocess
import sys
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


BACKBONES = {
    # name: (build, site at layer -2, images per run)
    "timm ViT-S/16": (lambda: HookedSAEViT.from_pretrained("timm:vit_small_patch16_224", pretrained=False),
                      "blocks.10.hook_resid_post"),
    "open_clip ViT-B-32": (lambda: HookedSAEViT.from_pretrained("open_clip:ViT-B-32", pretrained=False),
                           "blocks.10.hook_resid_post"),
    "transformers ViT (384 x 6)": (lambda: _hf_vit(), "blocks.4.hook_resid_post"),
}  # fmt: skip


def _hf_vit() -> HookedSAEViT:
    import transformers

    cfg = transformers.ViTConfig(
        hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536
    )
    return HookedSAEViT.from_module(
        transformers.ViTModel(cfg, add_pooling_layer=False).eval(), backbone_id="hf:vit"
    )


def _child(mode: str, backbone: str, image_dir: str, out: str, batch: int) -> None:
    """One measurement in a fresh process (peak RSS is per process): prints img/s and peak RSS."""
    torch.manual_seed(0)
    model = BACKBONES[backbone][0]()
    site = BACKBONES[backbone][1]
    paths = sorted(Path(image_dir).glob("*.jpg"))
    stop = model.layer_of(site) + 1
    if mode == "plain":  # what a user's loop does: decode, preprocess, forward to the block
        t0 = time.perf_counter()
        with torch.inference_mode():
            for lo in range(0, len(paths), batch):
                pixels = model.preprocess([Image.open(p) for p in paths[lo : lo + batch]])
                model(pixels, stop_at_layer=stop)
    else:
        t0 = time.perf_counter()
        cache_activations(model, [str(p) for p in paths], sites=[site], out_dir=out, batch_size=batch,
                          progress=False)  # fmt: skip
    rate = len(paths) / (time.perf_counter() - t0)
    print(f"@@ {rate} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}")


def bench_recording(tmp: Path, n_images: int, repeats: int) -> None:
    image_dir = tmp / "jpegs"
    image_dir.mkdir()
    for i, img in enumerate(images(n_images, 256)):
        img.save(image_dir / f"{i:05d}.jpg", quality=90)
    batch = 32
    print(f"(a) recording layer -2 (fp16) vs the plain loop (JPEG decode + preprocess + forward to the same block),"
          f" {n_images} images, batch {batch}, each in a fresh process, median of {repeats} interleaved:")  # fmt: skip
    for backbone in BACKBONES:
        rates: dict[str, list[float]] = {"plain": [], "record": []}
        rss: dict[str, list[float]] = {"plain": [], "record": []}
        for run in range(repeats):
            for mode in ("plain", "record"):
                cmd = [sys.executable, __file__, "--child", mode, backbone, str(image_dir),
                       str(tmp / f"rec-{len(rates['record'])}-{run}-{backbone[:4]}"), str(batch)]  # fmt: skip
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                rate, peak = next(ln for ln in out.splitlines() if ln.startswith("@@")).split()[1:]
                rates[mode].append(float(rate))
                rss[mode].append(float(peak))
        plain, rec = statistics.median(rates["plain"]), statistics.median(rates["record"])
        plain_rss, rec_rss = statistics.median(rss["plain"]), statistics.median(rss["record"])
        print(f"    {backbone}: plain {plain:.1f} img/s, recording {rec:.1f} img/s -> ratio {rec / plain:.2f} "
              f"(target >= 0.95); peak RSS plain {plain_rss:.0f} MiB, recording {rec_rss:.0f} MiB -> ratio "
              f"{rec_rss / plain_rss:.2f} (target <= 1.1)")  # fmt: skip


def bench_readers(tmp: Path, n_rows: int, repeats: int) -> None:
    """``ordered()`` and ``shuffled()`` against a raw numpy memmap read of the same rows in the same order,
    float16 on disk to float32 tensors of 4096 rows on both sides, warm page cache, interleaved repeats."""
    d, site, batch = 768, "blocks.0.hook_resid_post", 4096
    layout = TokenLayout(image_size=(224, 224), patch_size=(16, 16), has_cls=True)
    writer = StoreWriter(
        tmp / "readers", backbone_id="bench", sites={site: d}, d_model=d, layout=layout, tokens="patches",
        dtype="float16", shard_rows=n_rows,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for lo in range(0, n_rows, 16384):
        hi = min(lo + 16384, n_rows)
        rows = np.arange(lo, hi)
        writer.append(
            {site: rng.standard_normal((hi - lo, d), dtype=np.float32)}, rows // 196, rows % 196 + 1
        )
    store = ActivationStore(writer.finish().path)
    mm = np.memmap(store.path / store.shards[0]["files"][site]["path"], dtype=np.float16, mode="r",
                   shape=(n_rows, d))  # fmt: skip
    # The shuffled stream's row numbers, recorded once, so the raw read takes the same rows in the same order.
    order: list[np.ndarray] = []
    gather = store.gather
    store.gather = lambda s, rows_n: (order.append(np.asarray(rows_n)), gather(s, rows_n))[1]  # type: ignore[method-assign]
    for _ in store.shuffled(site, batch, seed=1):  # also checks every block once (warm page cache after)
        pass
    store.gather = gather  # type: ignore[method-assign]

    def timed(fn) -> float:
        t0 = time.perf_counter()
        n = fn()
        return n / (time.perf_counter() - t0)

    def raw_sequential() -> int:
        for lo in range(0, n_rows, batch):
            torch.from_numpy(mm[lo : lo + batch].astype(np.float32))
        return n_rows

    def ordered() -> int:
        return sum(len(r.acts) for r in store.ordered(site, batch))

    def raw_permuted() -> int:
        return sum(len(torch.from_numpy(mm[rows_n].astype(np.float32))) for rows_n in order)

    def shuffled() -> int:
        return sum(len(b) for b in store.shuffled(site, batch, seed=1))

    rates: dict[str, list[float]] = {name: [] for name in ("raw_seq", "ordered", "raw_perm", "shuffled")}
    for _ in range(repeats):
        for name, fn in (("raw_seq", raw_sequential), ("ordered", ordered), ("raw_perm", raw_permuted),
                         ("shuffled", shuffled)):  # fmt: skip
            rates[name].append(timed(fn))
    ordered_ratio = statistics.median(o / r for o, r in zip(rates["ordered"], rates["raw_seq"], strict=True))
    shuffled_ratio = statistics.median(
        s / r for s, r in zip(rates["shuffled"], rates["raw_perm"], strict=True)
    )
    med = {name: statistics.median(v) for name, v in rates.items()}
    print(f"(b) readers, d_model {d} fp16 -> fp32 batches of {batch}, {n_rows} rows, warm page cache, median of "
          f"{repeats} interleaved repeats (ratios per repeat, then the median):")  # fmt: skip
    print(f"    ordered() {med['ordered']:,.0f} rows/s vs raw memmap sequential read {med['raw_seq']:,.0f} rows/s "
          f"-> ratio {ordered_ratio:.2f} (target >= 0.8)")  # fmt: skip
    print(f"    shuffled() {med['shuffled']:,.0f} rows/s vs raw memmap read of the same rows in the same order "
          f"{med['raw_perm']:,.0f} rows/s -> ratio {shuffled_ratio:.2f} (target >= 0.9)")  # fmt: skip


def bench_verify(tmp: Path) -> None:
    """``verify()`` throughput on the readers' store (every block hashed on every core) vs one thread of
    hashlib sha256 and blake2b over the same bytes, warm page cache."""
    import hashlib

    store = ActivationStore(tmp / "readers")
    path = store.path / store.shards[0]["files"]["blocks.0.hook_resid_post"]["path"]
    data = path.read_bytes()
    single = {}
    for name in ("sha256", "blake2b"):
        t0 = time.perf_counter()
        hashlib.new(name, data).digest()
        single[name] = len(data) / 1e6 / (time.perf_counter() - t0)
    stats = store.verify()
    print(f"(d) verify(): {stats['bytes'] / 1e6:,.0f} MB in {stats['seconds']:.2f} s = {stats['mb_per_s']:,.0f} MB/s "
          f"on {os.cpu_count()} cores; one thread over the same bytes: sha256 {single['sha256']:,.0f} MB/s, "
          f"blake2b {single['blake2b']:,.0f} MB/s")  # fmt: skip


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
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each recording case")
    parser.add_argument("--only", choices=["recording", "readers", "rss"], help="run one section")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, backbone, image_dir, out, batch = args.child
        return _child(mode, backbone, image_dir, out, int(batch))
    logging.basicConfig(level=logging.WARNING)
    # Recommended for CPU runs that allocate many large tensors (see vision_sae_lens.cpu_memory); applies
    # to the baselines and to the store alike.
    keep_freed_memory()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        if args.only in (None, "recording"):
            bench_recording(tmp, 32 if args.quick else 96, args.repeats)
        if args.only in (None, "readers"):
            bench_readers(tmp, 65536 if args.quick else 262144, args.repeats)
            bench_verify(tmp)
        if args.only in (None, "rss"):
            bench_rss(tmp, 320 if args.quick else 1280)


if __name__ == "__main__":
    main()
