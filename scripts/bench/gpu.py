"""One command that measures a GPU: recording, the store reader, SAE training, and saev 0.1.0 beside them.

    scripts/bench/gpu.sh [--device cuda] [--refpkgs /tmp/saevpkgs] [--json gpu.json]   # < 8 min on one H100
    scripts/bench/gpu.sh --quick --device cpu                                          # < 2 min: the same code

1. recording: a random-init timm ViT-B/16 (``vit_base_patch16_224``) over noise images of 224 px,
   ``blocks.10.hook_resid_post`` patches into a float16 store; images/s with the model in float32 and under
   bfloat16 autocast (``cache_activations(autocast="bfloat16")``), each after a warm-up batch.
2. training: standard / topk / batchtopk SAEs with 24,576 latents at batch 4,096 and 16,384 (and topk under
   bf16 ``autocast`` at 16,384), fed from that store: patches/s of the training loop (``TrainRun.train_seconds``,
   after a warm-up run) and the peak GPU memory of each run (``torch.cuda.max_memory_allocated``).
3. reader: rows/s the training feed delivers on the device (``ActivationStore.shuffled``, pinned, copied ahead:
   ``store.transfer.device_batches``) at each batch size, against the fastest training rate at that size:
   ``reader_over_training`` above 1 means the reader is never the bottleneck.
4. saev 0.1.0 (``scripts/bench/saev.py --device ...``: its recording and training next to ours on the same
   images and weights), when it is installed in ``--refpkgs``.

``--quick`` shrinks the sizes (32 images of 112 px; latents and batches / 16: 1,536 latents, batches of 256 and
1,024; 6 steps) so the whole path runs in under 2 minutes on a CPU (a test runs it). Prints a table and one JSON object (also
written to ``--json``). Timings from one run; on a shared machine, say so.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sae_lens import BatchTopKTrainingSAEConfig, StandardTrainingSAEConfig, TopKTrainingSAEConfig

from vision_sae_lens.backbones import HookedSAEViT
from vision_sae_lens.store import ActivationStore, cache_activations
from vision_sae_lens.store.transfer import device_batches, pinned
from vision_sae_lens.train import TrainConfig, train_sae

SITE = "blocks.10.hook_resid_post"
MODEL = "timm:vit_base_patch16_224"
SAES = {
    "standard": lambda d, n: StandardTrainingSAEConfig(d_in=d, d_sae=n),
    "topk": lambda d, n: TopKTrainingSAEConfig(d_in=d, d_sae=n, k=64),
    "batchtopk": lambda d, n: BatchTopKTrainingSAEConfig(d_in=d, d_sae=n, k=64),
}
FULL = {
    "image_size": 224,
    "n_images": 4096,
    "record_batch": 256,
    "d_sae": 24576,
    "batches": (4096, 16384),
    "steps": 30,
}
QUICK = {**FULL, "image_size": 112, "n_images": 32, "record_batch": 16, "steps": 6,
         "d_sae": FULL["d_sae"] // 16, "batches": tuple(b // 16 for b in FULL["batches"])}  # fmt: skip
SAEV_QUICK = ["--n-images", "16", "--n-eval-images", "8", "--record-batch", "8", "--expansion", "2",
              "--batch-size", "256", "--steps", "4"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes: the code path in < 2 min on a CPU")
    parser.add_argument("--refpkgs", default="/tmp/saevpkgs", help="folder holding saev 0.1.0 (optional)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (printed)")
    args = parser.parse_args()
    logging.getLogger("vision_sae_lens").setLevel(
        logging.ERROR
    )  # a few steps on noise: quality warnings only
    sizes = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="vsl-bench-gpu-"))
    results: dict = {
        "device": _device_name(args.device),
        "torch": torch.__version__,
        "quick": args.quick,
        **sizes,
    }
    results["recording"], store = _recording(args.device, sizes, tmp)
    results["training"] = _training(store, args.device, sizes, tmp)
    results["reader"] = _reader(store, args.device, sizes, results["training"])
    results["saev"] = _saev(args, tmp)
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["wall_s"] = time.perf_counter() - t0
    _print_table(results)
    text = json.dumps(results, indent=1, default=float)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    if args.keep:
        print(f"temp folder kept: {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"{device} ({torch.get_num_threads()} threads)"


def _noise_images(n: int, size: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _recording(device: str, sizes: dict, tmp: Path) -> tuple[dict, ActivationStore]:
    torch.manual_seed(0)
    size = sizes["image_size"]
    model = HookedSAEViT.from_pretrained(MODEL, pretrained=False, img_size=size, device=device)
    images = _noise_images(sizes["n_images"], size)
    kw = dict(sites=[SITE], dtype="float16", batch_size=sizes["record_batch"], progress=False)
    rates, store = {}, None
    for precision in ("float32", "bfloat16"):
        autocast = None if precision == "float32" else precision
        cache_activations(
            model, images[: sizes["record_batch"]], out_dir=tmp / f"warm_{precision}", autocast=autocast, **kw
        )
        _sync(device)
        t = time.perf_counter()
        store = cache_activations(model, images, out_dir=tmp / f"acts_{precision}", autocast=autocast, **kw)
        _sync(device)
        rates[f"{precision}_images_per_s"] = len(images) / (time.perf_counter() - t)
    del model
    assert store is not None
    return rates, store


def _training(store: ActivationStore, device: str, sizes: dict, tmp: Path) -> list[dict]:
    d_in, n = store.site_dim(SITE), sizes["d_sae"]
    runs = [(arch, batch, False) for batch in sizes["batches"] for arch in SAES]
    runs.append(("topk", sizes["batches"][-1], True))

    def config(arch: str, batch: int, autocast: bool, steps: int) -> TrainConfig:
        return TrainConfig(
            store=store, site=SITE, sae=SAES[arch](d_in, n), training_tokens=batch * steps, batch_size=batch,
            lr_warm_up_steps=0, device=device, autocast=autocast, eval_fraction=0.01, max_eval_rows=batch,
            name=f"{arch}_{batch}{'_bf16' if autocast else ''}",
        )  # fmt: skip

    train_sae(config("topk", sizes["batches"][0], False, 2), out_dir=tmp / "warm_train", progress=False)
    rows = []
    for arch, batch, autocast in runs:
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        run = train_sae(config(arch, batch, autocast, sizes["steps"]), out_dir=tmp / "train", progress=False)
        peak = torch.cuda.max_memory_allocated() / 2**20 if torch.device(device).type == "cuda" else None
        rows.append({
            "architecture": arch, "batch": batch, "d_sae": n, "autocast": autocast,
            "patches_per_s": run.n_steps * batch / run.train_seconds, "peak_gpu_mib": peak,
        })  # fmt: skip
    return rows


def _reader(store: ActivationStore, device: str, sizes: dict, training: list[dict]) -> list[dict]:
    """Rows/s of the training feed on the device, per batch size, against training's fastest rate there."""
    rows = []
    for batch in sizes["batches"]:
        n_batches = max(4, min(64, store.n_rows // batch))
        feed = (pinned(b, device) for b in store.shuffled(SITE, batch, seed=1, epochs=64, drop_last=True))
        got = 0
        t = time.perf_counter()
        for i, on_device in enumerate(device_batches(feed, device)):
            got += on_device.shape[0]
            if i + 1 == n_batches:
                break
        _sync(device)
        rate = got / (time.perf_counter() - t)
        fastest = max(r["patches_per_s"] for r in training if r["batch"] == batch)
        rows.append({"batch": batch, "rows_per_s": rate, "fastest_training_patches_per_s": fastest,
                     "reader_over_training": rate / fastest})  # fmt: skip
    return rows


def _saev(args: argparse.Namespace, tmp: Path) -> dict | None:
    if not (Path(args.refpkgs) / "saev" / "training.py").exists():
        print(
            f"(saev 0.1.0 not in {args.refpkgs}: its figures are skipped; see scripts/bench/saev.py to install it)"
        )
        return None
    out = tmp / "saev.json"
    cmd = [sys.executable, str(Path(__file__).with_name("saev.py")), "--refpkgs", args.refpkgs, "--device", args.device,
           "--json", str(out), "--threads", str(torch.get_num_threads()), *(SAEV_QUICK if args.quick else [])]  # fmt: skip
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    found = json.loads(out.read_text())
    keep = ("rate", "count", "seconds", "peak_rss_mib", "peak_gpu_mib", "fvu", "l0")
    return {part: {side: {k: r.get(k) for k in keep} for side, r in found.get(part, {}).items()}
            for part in ("record", "train")}  # fmt: skip


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _print_table(r: dict) -> None:
    print(f"\n{r['device']}, torch {r['torch']}{' (--quick: small sizes)' if r['quick'] else ''}")
    rec = r["recording"]
    print(f"recording {MODEL} ({r['image_size']} px, {r['n_images']} images, batch {r['record_batch']}): "
          f"fp32 {rec['float32_images_per_s']:.1f} img/s, bf16 autocast {rec['bfloat16_images_per_s']:.1f} img/s")  # fmt: skip
    print(f"{'training':<24}{'batch':>8}{'patches/s':>14}{'peak GPU MiB':>14}")
    for t in r["training"]:
        name = t["architecture"] + (" (bf16 autocast)" if t["autocast"] else "")
        peak = "-" if t["peak_gpu_mib"] is None else f"{t['peak_gpu_mib']:.0f}"
        print(f"{name:<24}{t['batch']:>8}{t['patches_per_s']:>14,.0f}{peak:>14}")
    for f in r["reader"]:
        print(f"reader at batch {f['batch']}: {f['rows_per_s']:,.0f} rows/s = {f['reader_over_training']:.1f}x the "
              f"fastest training ({f['fastest_training_patches_per_s']:,.0f} patches/s)")  # fmt: skip
    for part, sides in (r["saev"] or {}).items():
        line = ", ".join(f"{side} {v['rate']:,.1f}/s" for side, v in sides.items())
        print(f"saev 0.1.0 side by side, {part}: {line}")
    print(f"wall {r['wall_s']:.0f} s, peak RSS {r['peak_rss_mib']:.0f} MiB\n")


if __name__ == "__main__":
    main()
