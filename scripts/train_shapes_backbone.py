"""Train the embedded benchmark backbone ``demo:shapes-vit``: a small timm ViT that predicts, for each
image of the synthetic shapes world (``synthetic:shapes``), which of its factors are present
(multi-label: one logit per factor of ``vision_sae_lens.data.synthetic.FACTOR_NAMES``).

Re-runnable and seeded. It writes ``vision_sae_lens/backbones/assets/shapes_vit.safetensors`` (fp16) with
safetensors metadata: the timm model name and kwargs, the factor names, the seed, the splits, the
normalisation and the accuracies measured on the fp16 weights as shipped (per-factor label accuracy
and exact-match accuracy on the test split). The images are regenerated from their seeds, so only the
weights ship.

Usage::

    .venv/bin/python scripts/train_shapes_backbone.py                 # a few minutes on 2 CPU cores
    .venv/bin/python scripts/train_shapes_backbone.py --epochs 2 --out /tmp/shapes_assets   # quick try
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from vision_sae_lens.data.synthetic import FACTOR_NAMES, ShapesWorld

ASSETS = Path(__file__).resolve().parents[1] / "vision_sae_lens" / "backbones" / "assets"
SCRIPT = "scripts/train_shapes_backbone.py"
MODEL_NAME = "vit_tiny_patch16_224"
MODEL_KWARGS = {
    "img_size": 32,
    "patch_size": 4,
    "in_chans": 3,
    "embed_dim": 64,
    "depth": 4,
    "num_heads": 4,
    "num_classes": len(FACTOR_NAMES),
    "class_token": True,
    "global_pool": "token",
}


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate and write the weights file; prints the test accuracies."""
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    train_world, test_world = ShapesWorld("train", seed=args.seed), ShapesWorld("test", seed=args.seed)
    x_train, y_train = _arrays(train_world)
    x_test, y_test = _arrays(test_world)
    mean = [round(float(v), 4) for v in x_train.mean(dim=(0, 2, 3))]
    std = [round(float(v), 4) for v in x_train.std(dim=(0, 2, 3))]
    print(f"shapes: {len(x_train)} train / {len(x_test)} test, mean {mean}, std {std}")

    model = timm.create_model(MODEL_NAME, pretrained=False, **MODEL_KWARGS)
    print(f"model: {MODEL_NAME} {MODEL_KWARGS} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    start = time.perf_counter()
    _train(model, _normalize(x_train, mean, std), y_train, args=args)
    seconds = time.perf_counter() - start

    # Measure what ships: the fp16 weights loaded back into a float32 model.
    state_fp16 = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.float() for k, v in state_fp16.items()})
    train_acc, _ = _accuracy(model, _normalize(x_train, mean, std), y_train)
    test_acc, test_exact = _accuracy(model, _normalize(x_test, mean, std), y_test)
    metadata = {
        "format": "vision_sae_lens.demo_backbone/1",
        "script": SCRIPT,
        "model_name": MODEL_NAME,
        "model_kwargs": json.dumps(MODEL_KWARGS, sort_keys=True),
        "task": "multi-label: one logit per factor, sigmoid > 0.5 means present",
        "label_names": json.dumps(list(FACTOR_NAMES)),
        "seed": str(args.seed),
        "split": json.dumps(
            {
                "train": "synthetic:shapes:train",
                "test": "synthetic:shapes:test",
                "n_train": len(x_train),
                "n_test": len(x_test),
            },
            sort_keys=True,
        ),
        "dataset": "synthetic:shapes (vision_sae_lens.data.synthetic, regenerated from its seeds)",
        "mean": json.dumps(mean),
        "std": json.dumps(std),
        "test_accuracy": f"{test_acc:.4f}",
        "test_exact_match": f"{test_exact:.4f}",
        "train_accuracy": f"{train_acc:.4f}",
        "accuracy_definition": "test_accuracy: mean over images and factors of (sigmoid(logit) > 0.5) == "
        "label; test_exact_match: share of images with every factor right",
        "epochs": str(args.epochs),
        "batch_size": str(args.batch_size),
        "lr": str(args.lr),
        "training_seconds": f"{seconds:.1f}",
        "threads": str(args.threads),
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
    }
    path = args.out / "shapes_vit.safetensors"
    save_file(state_fp16, str(path), metadata=metadata)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    print(
        f"training time {seconds:.1f} s; train accuracy {train_acc:.4f}; test accuracy {test_acc:.4f}; "
        f"test exact match {test_exact:.4f}"
    )
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seeds the images, the init and the batches")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (cosine decay)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=ASSETS, help="folder for the weights file")
    return parser.parse_args(argv)


def _arrays(world: ShapesWorld) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for i in tqdm(range(len(world)), desc=f"rendering {world.split}", unit="img"):
        scene = world.scene(i)
        images.append(scene.image_hw3)
        labels.append(world.image_factors(i))
    # Same float32 ops as torchvision's ToTensor (HWC uint8 -> CHW / 255).
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255)
    return x, torch.from_numpy(np.stack(labels)).float()


def _normalize(x01: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    return x01.sub(torch.tensor(mean).view(1, -1, 1, 1)).div(torch.tensor(std).view(1, -1, 1, 1))


def _train(model: torch.nn.Module, x_n3hw: torch.Tensor, y_nf: torch.Tensor, *, args) -> None:
    gen = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = math.ceil(len(y_nf) / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
        ),
    )
    model.train()
    bar = tqdm(range(args.epochs), desc="training", unit="epoch")
    for _ in bar:
        order = torch.randperm(len(y_nf), generator=gen)
        seen, loss_sum = 0, 0.0
        for start in range(0, len(order), args.batch_size):
            idx = order[start : start + args.batch_size]
            loss = F.binary_cross_entropy_with_logits(model(x_n3hw[idx]), y_nf[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            seen += len(idx)
            loss_sum += float(loss.detach()) * len(idx)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
    model.eval()


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y_nf: torch.Tensor) -> tuple[float, float]:
    model.eval()
    pred = torch.cat([model(chunk) > 0 for chunk in x.split(500)]).float()
    right = pred == y_nf
    return float(right.float().mean()), float(right.all(dim=1).float().mean())


if __name__ == "__main__":
    raise SystemExit(main())
