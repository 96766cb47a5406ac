"""Side by side with saev 0.1.0: recording and SAE training on the same images and weights, one run.

Both sides get the same images (JPEGs of 224 px written once), the same random-init open_clip ViT-B-32
(built once with a fixed seed, its state dict saved to a file that both load) and layer -2 of 12
(saev's ``vit_layers=[-2]`` hooks ``resblocks[-2]``'s output: our ``blocks.10.hook_resid_post``, see
docs/hub.md), on the CPU with the same number of intra-op threads. Each measurement runs in its own
fresh process, saev's first and ours right after it; peak RSS is that process's high-water mark
(``VmHWM``).

1. Recording: ``saev.activations.main`` (its ImageFolder loader, ``RecordedVisionTransformer``,
   ``ShardWriter``; float32, CLS + patches as saev always stores them) vs ``cache_activations`` (patches,
   float32). images/s counts from the data loop's set-up (saev: ``get_dataloader``; ours: the
   ``cache_activations`` call) to the last byte written; "end to end" is the whole child process, imports
   and model loading included. The stored patch vectors of the two stores are compared.
2. Training: ``saev.training.train`` + ``saev.training.evaluate`` (ReLU SAE, ``Vanilla`` L1 objective, unit-norm
   decoder, its defaults otherwise) vs ``train_sae`` with ``StandardTrainingSAEConfig``, the L1 coefficient
   mapped as docs/coming_from_saev.md says (``l1_coefficient = d_model x sparsity_coeff``) and the same
   batch size, lr, lr warm-up, number of patches, ``subtract_mean`` / ``scale_norm`` (saev's ``scale_mean`` /
   ``scale_norm``). Each side reads the store it recorded in part 1. patches/s counts the training loop
   only; peak RSS is given at the end of the loop and for the whole process (evaluation included). Both
   SAEs are then scored by the same code on the patches of separate held-out images (recorded once, by
   us): FVU (sum of squared errors / total variance, raw units) and L0. Our side runs as the ``train``
   command does, with ``cpu_memory.return_freed_memory()`` (``--no-return-freed-memory`` leaves glibc as is).

saev is an optional reference, never a dependency of the package: install it into a throw-away folder
(torch, open_clip, numpy, beartype, jaxtyping, einops and wandb come from the package's environment; its
other requirements -- altair, marimo, polars, submitit, tyro, datasets' extras -- are not imported by the
modules used here)::

    .venv/bin/python -m pip install --target /tmp/saevpkgs --no-deps saev==0.1.0
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench/saev.py --refpkgs /tmp/saevpkgs

Without saev the script measures and prints our side only and says how to install it. Defaults (about
10 minutes on 2 cores): 256 training images (+64 held out), batch 64 for recording, d_sae = 8 x 768,
batch 4096, 60 steps (245,760 patches), 2 threads. ``--images DIR`` uses your photos (centre-cropped to
224 px) instead of the two scikit-learn sample photos (random crops) or, without scikit-learn, the
package's ``synthetic:shapes``. ``--saev-workers N`` gives saev N DataLoader worker processes (default 0:
everything in one process on both sides, so RUSAGE_SELF covers all the memory); with workers the sampled
RSS of saev's whole process tree is printed too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SITE = "blocks.10.hook_resid_post"  # saev's layer -2 of open_clip ViT-B-32's 12 blocks
D_MODEL, N_PATCHES = 768, 49  # ViT-B-32 at 224 px: 7 x 7 patches + CLS
SAEV_INSTALL = ".venv/bin/python -m pip install --target /tmp/saevpkgs --no-deps saev==0.1.0"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--refpkgs", default="/tmp/saevpkgs", help="folder holding saev 0.1.0")
    parser.add_argument("--images", help="folder of your own images (default: offline sample photos)")
    parser.add_argument("--n-images", type=int, default=256, help="training images (recorded by both)")
    parser.add_argument("--n-eval-images", type=int, default=64, help="held-out images for FVU / L0")
    parser.add_argument("--record-batch", type=int, default=64, help="images per forward, both sides")
    parser.add_argument("--expansion", type=int, default=8, help="d_sae = expansion x 768")
    parser.add_argument("--batch-size", type=int, default=4096, help="patches per training step")
    parser.add_argument("--steps", type=int, default=60, help="training steps (patches = steps x batch)")
    parser.add_argument("--lr", type=float, default=4e-4, help="saev's default")
    parser.add_argument(
        "--lr-warmup",
        type=int,
        help="lr warm-up steps, both sides (default: a tenth of the steps; saev's 500 "
        "exceeds a short run, which our TrainConfig refuses)",
    )
    parser.add_argument("--sparsity-coeff", type=float, default=4e-4, help="saev's sparsity_coeff")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of each side")
    parser.add_argument("--saev-workers", type=int, default=0, help="saev DataLoader worker processes")
    parser.add_argument(
        "--no-return-freed-memory",
        action="store_true",
        help="train our side without cpu_memory.return_freed_memory() (the train command applies it)",
    )
    parser.add_argument("--device", default="cpu", help="torch device of both sides (cpu, cuda, cuda:N)")
    parser.add_argument(
        "--json", help="also write the measurements to this file (scripts/bench/gpu.py reads it)"
    )
    parser.add_argument("--only", choices=["record", "train"], help="run one part")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (printed)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _run_child(args.child[0], json.loads(args.child[1]))
    _parent(args)


# ------------------------------------------------------------------------------------------ parent
def _parent(args: argparse.Namespace) -> None:
    refpkgs = Path(args.refpkgs).resolve()
    have_saev = (refpkgs / "saev" / "training.py").exists()
    if not have_saev:
        print(
            f"saev 0.1.0 not found in {refpkgs}; measuring our side only. Install it with:\n    {SAEV_INSTALL}"
        )
    tmp = Path(tempfile.mkdtemp(prefix="vsl-bench-saev-"))
    try:
        _side_by_side(args, tmp, refpkgs if have_saev else None)
    finally:
        if args.keep:
            print(f"temp folder kept: {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def _side_by_side(args: argparse.Namespace, tmp: Path, refpkgs: Path | None) -> None:
    # The parent stays a small process: a child's ru_maxrss starts from the RSS of the process that
    # spawned it (Linux keeps the high-water mark across exec), so the heavy set-up runs in children too.
    weights = tmp / "weights.pt"
    train_dir, eval_dir = tmp / "images" / "train", tmp / "images" / "eval"
    source = _child(
        "prepare",
        {"threads": args.threads, "weights": str(weights), "images": args.images, "n_images": args.n_images,
         "n_eval_images": args.n_eval_images, "train_dir": str(train_dir / "all"), "eval_dir": str(eval_dir / "all")},
    )["source"]  # fmt: skip
    n_patches = args.steps * args.batch_size
    if args.lr_warmup is None:
        args.lr_warmup = args.steps // 10
    print(
        f"open_clip ViT-B-32 random init (seed 0), {SITE} (saev layer -2), {args.device}, {args.threads} threads; "
        f"{args.n_images} training + {args.n_eval_images} held-out images of 224 px ({source})"
    )
    common = {"weights": str(weights), "threads": args.threads, "device": args.device}
    rec: dict[str, dict] = {}
    if True:  # training reads the stores recorded here
        print(f"\n1. recording (batch {args.record_batch}, float32; saev workers {args.saev_workers})")
        if refpkgs:
            rec["saev"] = _child(
                "saev-record",
                {**common, "weights": weights.name, "image_root": str(train_dir), "out": str(tmp / "saev_acts"),
                 "batch": args.record_batch, "workers": args.saev_workers, "n_images": args.n_images},
                refpkgs=refpkgs, cwd=tmp,
            )  # fmt: skip
        rec["ours"] = _child(
            "ours-record",
            {**common, "image_root": str(train_dir / "all"), "out": str(tmp / "ours_acts"), "batch": args.record_batch},
        )  # fmt: skip
        _print_sides(rec, "img/s", "images/s")
        _write_json(args, {"record": rec})
        if "saev" in rec:
            same = _child(
                "compare", {"threads": args.threads, "saev": rec["saev"]["shard_dir"], "ours": str(tmp / "ours_acts")}
            )  # fmt: skip
            print(f"    stored vectors: {same['verdict']}")
    if args.only == "record":
        return
    _child(
        "ours-record",
        {**common, "image_root": str(eval_dir / "all"), "out": str(tmp / "eval_acts"), "batch": args.record_batch,
         "dump_npy": str(tmp / "eval_rows.npy")},
    )  # fmt: skip
    d_sae = args.expansion * D_MODEL
    hyper = {
        "threads": args.threads, "batch_size": args.batch_size, "n_patches": n_patches, "lr": args.lr,
        "lr_warmup": args.lr_warmup, "sparsity_coeff": args.sparsity_coeff, "d_sae": d_sae,
        "eval_npy": str(tmp / "eval_rows.npy"), "return_freed_memory": not args.no_return_freed_memory,
        "device": args.device,
    }  # fmt: skip
    print(
        f"\n2. training ReLU/L1 SAE d_sae {d_sae}, batch {args.batch_size}, {args.steps} steps ({n_patches:,} patches), "
        f"lr {args.lr:g} (warm-up {args.lr_warmup}), saev sparsity_coeff {args.sparsity_coeff:g} = our l1_coefficient "
        f"{D_MODEL * args.sparsity_coeff:g}; mean/norm scaling on both"
    )
    trn: dict[str, dict] = {}
    if refpkgs:
        trn["saev"] = _child(
            "saev-train",
            {**hyper, "shard_root": rec["saev"]["shard_dir"], "workers": args.saev_workers, "ckpt": str(tmp / "saev_ckpt")},
            refpkgs=refpkgs, cwd=tmp,
        )  # fmt: skip
    trn["ours"] = _child(
        "ours-train", {**hyper, "store": str(tmp / "ours_acts"), "eval_store": str(tmp / "eval_acts"), "out": str(tmp / "ours_sae")}
    )  # fmt: skip
    _print_sides(trn, "patches/s", "patches/s")
    _write_json(args, {"record": rec, "train": trn})
    for side, r in trn.items():
        print(
            f"    {side}: FVU {r['fvu']:.4f}, L0 {r['l0']:.1f} on {r['eval_rows']:,} held-out patches; "
            f"import RSS {r['import_rss_mib']:.0f} MiB, peak RSS at the end of the loop {r['loop_rss_mib']:.0f} MiB, "
            f"whole process {r['peak_rss_mib']:.0f} MiB; loop {r['loop_s']:.0f} s of {r['wall_s']:.0f} s"
        )
    if "saev" in trn:
        s, o = trn["saev"], trn["ours"]
        print(
            f"    peak RSS at the end of the loop ours/saev {o['loop_rss_mib'] / s['loop_rss_mib']:.2f}; "
            f"FVU ours/saev {o['fvu'] / s['fvu']:.2f} (L0 {o['l0']:.1f} vs {s['l0']:.1f})"
        )


def _write_json(args: argparse.Namespace, results: dict) -> None:
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, **results}, indent=1))


def _print_sides(res: dict[str, dict], unit: str, label: str) -> None:
    for side, r in res.items():
        tree = f", process tree (sampled) {r['tree_rss_mib']:.0f} MiB" if r.get("tree_rss_mib") else ""
        print(
            f"    {side}: {r['rate']:.1f} {unit} ({r['count']:,} in {r['seconds']:.1f} s, {r['cpu_s']:.1f} CPU s), "
            f"end to end {r['wall_s']:.1f} s, "
            f"peak RSS {r['peak_rss_mib']:.0f} MiB{tree}"
        )
    if "saev" in res:
        s, o = res["saev"], res["ours"]
        cpu = (s["cpu_s"] / s["count"]) / (o["cpu_s"] / o["count"])
        print(
            f"    ours/saev: {label} {o['rate'] / s['rate']:.2f}x, end to end {s['wall_s'] / o['wall_s']:.2f}x "
            f"(saev wall / ours), {label} per CPU second {cpu:.2f}x, peak RSS {o['peak_rss_mib'] / s['peak_rss_mib']:.2f}x"
        )


def _child(kind: str, params: dict, *, refpkgs: Path | None = None, cwd: Path | None = None) -> dict:
    """Run one measurement in a fresh interpreter and return its ``@@`` JSON line (plus its wall time)."""
    env = dict(os.environ)
    threads = str(params["threads"])
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    env.update(WANDB_MODE="disabled", WANDB_SILENT="true")
    if refpkgs is not None:  # only saev's processes see the throw-away folder
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(refpkgs), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(params)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@ ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{kind} failed (exit {proc.returncode}); its output is above")
    return {**json.loads(lines[-1][3:]), "wall_s": wall}


def _prepare(p: dict) -> dict:
    """The shared inputs: the random ViT-B-32's state dict (seed 0) and the images as 224 px JPEGs, in
    one class folder each (saev reads a torchvision ImageFolder)."""
    import numpy as np
    import open_clip
    import torch

    torch.manual_seed(0)
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), p["weights"])
    rng = np.random.default_rng(0)
    n_train = p["n_images"]
    crops, source = _image_crops(p["images"], n_train + p["n_eval_images"], rng)
    train_dir, eval_dir = Path(p["train_dir"]), Path(p["eval_dir"])
    for folder in (train_dir, eval_dir):
        folder.mkdir(parents=True)
    for i, img in enumerate(crops):
        folder, j = (train_dir, i) if i < n_train else (eval_dir, i - n_train)
        img.save(folder / f"{j:06d}.jpg", quality=90)
    return {"source": source}


def _image_crops(folder: str | None, n: int, rng) -> tuple[list, str]:
    from PIL import Image

    if folder:
        paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if len(paths) < n:
            raise SystemExit(
                f"{folder} holds {len(paths)} images; {n} are needed (--n-images + --n-eval-images)"
            )
        chosen = sorted(rng.choice(len(paths), n, replace=False))
        return [_centre_crop(Image.open(paths[i]).convert("RGB")) for i in chosen], f"{folder}"
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        from vision_sae_lens.data import open_images

        shapes = open_images("synthetic:shapes:train")
        return [
            shapes[i][0].resize((224, 224), Image.BICUBIC) for i in range(n)
        ], "synthetic:shapes, upscaled"
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    crops = []
    for _ in range(n):  # random square crops of random size, resized to 224, random flips
        photo = photos[int(rng.integers(len(photos)))]
        side = int(rng.integers(112, min(photo.size) + 1))
        x, y = int(rng.integers(photo.width - side + 1)), int(rng.integers(photo.height - side + 1))
        img = photo.crop((x, y, x + side, y + side)).resize((224, 224), Image.BICUBIC)
        crops.append(img.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img)
    return crops, "random crops of scikit-learn's two sample photos"


def _centre_crop(img):
    side = min(img.size)
    x, y = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((x, y, x + side, y + side)).resize((224, 224))


def _compare(p: dict) -> dict:
    """saev's stored patch rows (layer -2, CLS dropped) against ours, row for row."""
    return {"verdict": _compare_stores(Path(p["saev"]), Path(p["ours"]))}


def _compare_stores(saev_dir: Path, ours_dir: Path) -> str:
    import numpy as np

    from vision_sae_lens.store import ActivationStore

    meta = json.loads((saev_dir / "metadata.json").read_text())
    per_img = meta["n_patches_per_img"] + int(meta["cls_token"])
    per_shard = meta["n_patches_per_shard"] // len(meta["layers"]) // per_img
    shape = (per_shard, len(meta["layers"]), per_img, meta["d_vit"])
    acts = np.memmap(saev_dir / "acts000000.bin", dtype=np.float32, mode="r", shape=shape)
    theirs = np.asarray(acts[: meta["n_imgs"], 0, int(meta["cls_token"]) :]).reshape(-1, meta["d_vit"])
    store = ActivationStore(ours_dir)
    ours = store.read_rows(SITE, 0, store.n_rows).numpy()
    if theirs.shape != ours.shape:
        return f"shapes differ: saev {theirs.shape}, ours {ours.shape}"
    if np.array_equal(theirs, ours):
        return f"bit-identical ({ours.shape[0]:,} patch rows x {ours.shape[1]}, float32)"
    diff = np.abs(theirs - ours).max()
    return f"NOT identical: max |saev - ours| = {diff:.3g} (max |x| {np.abs(ours).max():.3g})"


# ------------------------------------------------------------------------------------------ children
def _run_child(kind: str, p: dict) -> None:
    # This file is itself named saev.py: drop its folder from the path so `import saev` finds the package.
    here = Path(__file__).resolve().parent
    sys.path[:] = [e for e in sys.path if Path(e or ".").resolve() != here]
    import torch

    torch.set_num_threads(int(p["threads"]))
    result = CHILDREN[kind](p)
    result["peak_rss_mib"] = result.get("peak_rss_mib") or _peak_rss_mib()
    if str(p.get("device", "cpu")).startswith("cuda"):
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("@@ " + json.dumps(result), flush=True)


def _peak_rss_mib() -> float:
    """Peak RSS of this process: ``VmHWM``, the high-water mark of its own address space.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` is the same counter, except that Linux carries it over exec
    from the process that spawned this one; VmHWM starts afresh with the new program.
    """
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _TreeRSS:
    """Peak of the summed RSS of this process and its children (DataLoader workers), sampled at 20 Hz."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(0.05):
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a worker may exit between listing and reading
                    total += proc.memory_info().rss
            self.peak = max(self.peak, total)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def _saev_record(p: dict) -> dict:
    from saev import activations, config

    tree = _TreeRSS() if p["workers"] else None
    marks: dict[str, float] = {}
    get_dataloader = activations.get_dataloader

    def timed_get_dataloader(*args, **kwargs):  # the model is loaded by now: the data loop starts here
        marks["start"], marks["cpu"] = time.perf_counter(), time.process_time()
        return get_dataloader(*args, **kwargs)

    activations.get_dataloader = timed_get_dataloader  # timing only; saev's own function does the work
    cfg = config.Activations(
        data=config.ImageFolderDataset(root=p["image_root"]),
        dump_to=p["out"],
        vit_family="clip",
        vit_ckpt=f"ViT-B-32/{p['weights']}",  # a relative file name: saev splits the id on "/"
        vit_batch_size=p["batch"],
        n_workers=p["workers"],
        d_vit=D_MODEL,
        vit_layers=[-2],
        n_patches_per_img=N_PATCHES,
        cls_token=True,
        n_patches_per_shard=(p["n_images"] + 1) * (N_PATCHES + 1),  # one shard holds every image
        device=p.get("device", "cpu"),
    )
    activations.main(cfg)
    seconds, cpu = time.perf_counter() - marks["start"], time.process_time() - marks["cpu"]
    shard_dir = activations.get_acts_dir(cfg)
    return {
        "rate": p["n_images"] / seconds,
        "count": p["n_images"],
        "seconds": seconds,
        "cpu_s": cpu,
        "shard_dir": str(Path(shard_dir).resolve()),
        "tree_rss_mib": tree.stop() if tree else None,
    }


def _ours_record(p: dict) -> dict:
    from vision_sae_lens.backbones import HookedSAEViT
    from vision_sae_lens.store import cache_activations

    model = HookedSAEViT.from_pretrained("open_clip:ViT-B-32", weights=p["weights"])
    paths = sorted(str(q) for q in Path(p["image_root"]).glob("*.jpg"))
    t0, cpu0 = time.perf_counter(), time.process_time()
    store = cache_activations(
        model, paths, sites=[SITE], tokens="patches", dtype="float32", out_dir=p["out"],
        batch_size=p["batch"], device=p.get("device", "cpu"), progress=False,
    )  # fmt: skip
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak = _peak_rss_mib()
    if p.get("dump_npy"):  # the held-out rows both SAEs are scored on (not part of the measurement)
        import numpy as np

        np.save(p["dump_npy"], store.read_rows(SITE, 0, store.n_rows).numpy())
    return {
        "rate": len(paths) / seconds,
        "count": len(paths),
        "seconds": seconds,
        "cpu_s": cpu,
        "peak_rss_mib": peak,
    }


def _saev_train(p: dict) -> dict:
    import torch
    from saev import activations, config, training

    import_rss = _peak_rss_mib()
    tree = _TreeRSS() if p["workers"] else None
    loop: dict[str, float] = {"patches": 0}

    class CountingLimiter(training.BatchLimiter):
        """saev's BatchLimiter, also counting the patches it hands out and timing the loop."""

        def __iter__(self):
            loop["start"], loop["cpu"] = time.perf_counter(), time.process_time()
            for batch in super().__iter__():
                loop["patches"] += len(batch["act"])
                yield batch
            loop["end"] = time.perf_counter()  # after the last step: the loop asks for the next batch
            loop["cpu"] = time.process_time() - loop["cpu"]
            loop["rss"] = _peak_rss_mib()

    training.BatchLimiter = CountingLimiter  # instrumentation only; train() builds it by this name
    cfg = config.Train(
        data=config.DataLoad(shard_root=p["shard_root"], patches="patches", layer=-2),
        n_workers=p["workers"],
        n_patches=p["n_patches"],
        sae=config.SparseAutoencoder(
            d_vit=D_MODEL, exp_factor=p["d_sae"] // D_MODEL, sparsity_coeff=p["sparsity_coeff"], seed=0
        ),
        lr=p["lr"],
        n_lr_warmup=p["lr_warmup"],
        sae_batch_size=p["batch_size"],
        track=False,
        ckpt_path=p["ckpt"],
        device=p.get("device", "cpu"),
    )
    saes, run, steps = training.train([cfg])
    training.evaluate([cfg], saes)  # saev's end-of-training pass, as training.main runs it
    peak = _peak_rss_mib()
    tree_peak = tree.stop() if tree else None
    sae = saes[0].eval().to("cpu")  # scored on the CPU, both sides alike
    dataset = activations.Dataset(cfg.data)  # its normalisation: (x - act_mean) / scalar

    def reconstruct(x):
        x_hat, f_x, _ = sae((x - dataset.act_mean) / dataset.scalar)
        return x_hat * dataset.scalar + dataset.act_mean, f_x

    with torch.no_grad():
        fvu, l0, n = _score(reconstruct, p["eval_npy"])
    seconds = loop["end"] - loop["start"]
    return {
        "rate": loop["patches"] / seconds, "count": int(loop["patches"]), "seconds": seconds, "steps": steps,
        "cpu_s": loop["cpu"],
        "loop_s": seconds, "loop_rss_mib": loop["rss"], "import_rss_mib": import_rss, "peak_rss_mib": peak,
        "tree_rss_mib": tree_peak, "fvu": fvu, "l0": l0, "eval_rows": n,
    }  # fmt: skip


def _ours_train(p: dict) -> dict:
    import torch
    from sae_lens import StandardTrainingSAEConfig

    from vision_sae_lens.train import TrainConfig, train_sae
    from vision_sae_lens.train import trainer as trainer_module

    import_rss = _peak_rss_mib()
    if p.get("return_freed_memory", True):  # as the `train` command does for its own process
        from vision_sae_lens.cpu_memory import return_freed_memory

        return_freed_memory()
    loop: dict[str, float] = {}
    group = trainer_module._GroupTrainer
    run_loop, finish = getattr(group, "_loop", None), getattr(group, "_finish", None)
    if run_loop is not None and finish is not None:  # marks only: CPU time of the loop, peak RSS at its end

        def marked_loop(self, *args, **kwargs):
            loop["cpu"] = time.process_time()
            return run_loop(self, *args, **kwargs)

        def marked_finish(self, m):
            if "rss" not in loop:
                loop["rss"], loop["cpu"] = _peak_rss_mib(), time.process_time() - loop["cpu"]
            return finish(self, m)

        group._loop, group._finish = marked_loop, marked_finish  # type: ignore[method-assign]
    cfg = TrainConfig(
        store=p["store"],
        site=SITE,
        sae=StandardTrainingSAEConfig(
            d_in=D_MODEL, d_sae=p["d_sae"], l1_coefficient=D_MODEL * p["sparsity_coeff"], l1_warm_up_steps=0
        ),
        training_tokens=p["n_patches"],
        batch_size=p["batch_size"],
        lr=p["lr"],
        lr_warm_up_steps=p["lr_warmup"],
        tokens="patches",
        subtract_mean=True,
        scale_norm=True,
        eval_fraction=0.0,
        eval_store=p["eval_store"],
        device=p.get("device", "cpu"),
    )
    run = train_sae(cfg, out_dir=p["out"], progress=False)
    peak = _peak_rss_mib()
    sae = run.sae.to("cpu")  # normalisation folded in: takes and returns raw activations; scored on the CPU

    def reconstruct(x):
        f_x = sae.encode(x)
        return sae.decode(f_x), f_x

    with torch.no_grad():
        fvu, l0, n = _score(reconstruct, p["eval_npy"])
    n_patches = run.n_steps * p["batch_size"]
    return {
        "rate": n_patches / run.train_seconds, "count": n_patches, "seconds": run.train_seconds,
        "steps": run.n_steps, "loop_s": run.train_seconds, "loop_rss_mib": loop.get("rss", float("nan")),
        "cpu_s": loop.get("cpu", float("nan")),
        "import_rss_mib": import_rss, "peak_rss_mib": peak, "fvu": fvu, "l0": l0, "eval_rows": n,
        "package_report": {k: run.report.get(k) for k in ("nmse", "l0", "explained_variance")},
    }  # fmt: skip


def _score(reconstruct, npy: str) -> tuple[float, float, int]:
    """FVU (squared error / total variance, raw units) and mean L0 over the held-out rows, in chunks."""
    import numpy as np
    import torch

    x_all = torch.from_numpy(np.load(npy))
    mean = x_all.mean(0)
    err = var = l0 = 0.0
    for lo in range(0, len(x_all), 1024):
        x = x_all[lo : lo + 1024]
        x_hat, f_x = reconstruct(x)
        err += float((x_hat - x).pow(2).sum())
        var += float((x - mean).pow(2).sum())
        l0 += float((f_x > 0).sum())
    return err / var, l0 / len(x_all), len(x_all)


CHILDREN = {
    "prepare": _prepare,
    "compare": _compare,
    "saev-record": _saev_record,
    "ours-record": _ours_record,
    "saev-train": _saev_train,
    "ours-train": _ours_train,
}


if __name__ == "__main__":
    main()
