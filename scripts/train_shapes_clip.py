"""Train the embedded image-text model ``demo:shapes-clip``: a small open_clip CLIP for the synthetic shapes
world, trained contrastively on captions built from each image's exact factors.

It is a real open_clip model: a custom ``model_cfg`` (ViT image tower at 32 px, patch 4; a 2-layer text
transformer pooled at its end-of-text token) in an open_clip ``local-dir`` folder, with a word-level
tokenizer over the captions' 24 words saved beside it (open_clip's ``HFTokenizer`` reads it from the
folder). So ``open_clip.create_model("local-dir:<folder>")`` and ``open_clip.get_tokenizer(...)`` load it
as they load any open_clip model, and the namer code path is the one of ``open_clip:ViT-B-16/openai``.

Captions: a random subset of an image's objects, each described by a random subset of its factor
families (``vision_sae_lens.data.shapes_captions.random_caption``), redrawn every epoch. Since a caption
says exactly what it claims, the contrastive targets are soft: an image's target is spread over every
caption of the batch that fits it (and a caption's over every image it fits), instead of treating
``"a red shape"`` as wrong for all red images but one.

Re-runnable and seeded. It writes ``vision_sae_lens/backbones/assets/shapes_clip/`` (fp16 safetensors
whose metadata records the config, seed, splits and what it measured on the held-out test images as
shipped: image-to-text and text-to-image top-1 retrieval of full captions among all test images, and the
AUROC of each factor phrase's similarity for the images that carry the factor).

Usage::

    .venv/bin/python scripts/train_shapes_clip.py                  # a few minutes on 2 CPU cores
    .venv/bin/python scripts/train_shapes_clip.py --epochs 1 --train-images 2000 --out /tmp/shapes_clip
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from vision_sae_lens.data.shapes_captions import FACTOR_PHRASES, caption_words, full_caption, random_caption
from vision_sae_lens.data.synthetic import FACTOR_NAMES, MAX_OBJECTS, ShapesWorld

ASSETS = Path(__file__).resolve().parents[1] / "vision_sae_lens" / "backbones" / "assets" / "shapes_clip"
SCRIPT = "scripts/train_shapes_clip.py"
WEIGHTS_FILE = "open_clip_model.safetensors"
SPECIAL_TOKENS = ("[PAD]", "[SOT]", "[EOT]", "[UNK]")  # ids 0..3: pad 0, end-of-text 2 (the pooled token)
CONTEXT_LENGTH = 32  # three full object descriptions, two "and", start and end fit
MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 4, "head_width": 16},
    "text_cfg": {
        "context_length": CONTEXT_LENGTH,
        "vocab_size": len(SPECIAL_TOKENS) + len(caption_words()),
        "width": 64,
        "heads": 4,
        "layers": 2,
        "pool_type": "eos",
        "eos_id": 2,
        "pad_id": 0,
        # open_clip reads the tokenizer of a local-dir model from the folder itself when this is set.
        "hf_tokenizer_name": "vision_sae_lens/shapes-clip",
    },
}


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate the fp16 weights and write the open_clip folder; prints what it measured."""
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(out)

    train_world = ShapesWorld("train", n_images=args.train_images, seed=args.seed)
    test_world = ShapesWorld("test", seed=args.seed)
    x_train, scenes = _render(train_world)
    mean = [round(float(v), 4) for v in x_train.mean(dim=(0, 2, 3))]
    std = [round(float(v), 4) for v in x_train.std(dim=(0, 2, 3))]
    preprocess_cfg = {"mean": mean, "std": std, "interpolation": "bilinear", "resize_mode": "shortest"}
    (out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": preprocess_cfg}, indent=1) + "\n"
    )
    (out / WEIGHTS_FILE).unlink(missing_ok=True)  # random init below, then the trained weights
    model = open_clip.create_model(f"local-dir:{out}", load_weights=False)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    print(f"model: {MODEL_CFG} ({sum(p.numel() for p in model.parameters()):,} parameters)")

    start = time.perf_counter()
    _train(model, _normalize(x_train, mean, std), scenes, tokenizer, args=args)
    seconds = time.perf_counter() - start

    # Measure what ships: the fp16 weights loaded back into a float32 model.
    state_fp16 = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.float() for k, v in state_fp16.items()})
    x_test, test_scenes = _render(test_world)
    measured = _evaluate(model, tokenizer, _normalize(x_test, mean, std), test_world, test_scenes)
    metadata = {
        "format": "vision_sae_lens.demo_backbone/1",
        "script": SCRIPT,
        "model_cfg": json.dumps(MODEL_CFG, sort_keys=True),
        "task": "contrastive image-text (CLIP) on captions built from the images' factors",
        "label_names": json.dumps(list(FACTOR_NAMES)),
        "concept_phrases": json.dumps(list(FACTOR_PHRASES)),
        "seed": str(args.seed),
        "split": json.dumps(
            {
                "train": "synthetic:shapes:train",
                "test": "synthetic:shapes:test",
                "n_train": len(x_train),
                "n_test": len(x_test),
            },
            sort_keys=True,
        ),  # fmt: skip
        "dataset": "synthetic:shapes (vision_sae_lens.data.synthetic, regenerated from its seeds)",
        "mean": json.dumps(mean),
        "std": json.dumps(std),
        **{k: f"{v:.4f}" for k, v in measured.items() if not isinstance(v, dict)},
        "concept_auroc_per_factor": json.dumps(
            {k: round(v, 4) for k, v in measured["concept_auroc_per_factor"].items()}
        ),
        "accuracy_definition": "image_to_text_top1 / text_to_image_top1: share of the test images whose full "
        "caption (every object, every factor) is retrieved first among the captions of all test images (an "
        "identical caption counts as right); concept_auroc: mean over factors of the AUROC of "
        "cos(image, factor phrase) for the test images that carry the factor",
        "epochs": str(args.epochs),
        "batch_size": str(args.batch_size),
        "lr": str(args.lr),
        "training_seconds": f"{seconds:.1f}",
        "threads": str(args.threads),
        "torch_version": torch.__version__,
        "open_clip_version": open_clip.__version__,
    }
    path = out / WEIGHTS_FILE
    save_file(state_fp16, str(path), metadata=metadata)
    print(f"wrote {out} ({sum(p.stat().st_size for p in out.iterdir()) / 1e6:.2f} MB)")
    print(
        f"training time {seconds:.1f} s; "
        + "; ".join(f"{k} {v:.4f}" for k, v in measured.items() if not isinstance(v, dict))
    )
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the images, the init, the captions and batches"
    )
    parser.add_argument("--train-images", type=int, default=20000, help="training images (regenerated)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (cosine decay)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=ASSETS, help="the open_clip local-dir folder to write")
    return parser.parse_args(argv)


def _write_tokenizer(out: Path) -> None:
    """A word-level tokenizer over the caption words: ``[SOT] words [EOT]``, padded with ``[PAD]``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *caption_words()])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[SOT] $A [EOT]", special_tokens=[("[SOT]", 1), ("[EOT]", 2)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[SOT]", eos_token="[EOT]",
        model_max_length=CONTEXT_LENGTH,
    )  # fmt: skip
    fast.save_pretrained(out)


def _render(world: ShapesWorld) -> tuple[torch.Tensor, list]:
    scenes = [world.scene(i) for i in tqdm(range(len(world)), desc=f"rendering {world.split}", unit="img")]
    # Same float32 ops as torchvision's ToTensor (HWC uint8 -> CHW / 255), which open_clip's transform ends with.
    x = torch.from_numpy(np.stack([s.image_hw3 for s in scenes])).permute(0, 3, 1, 2).float().div(255)
    return x, scenes


def _normalize(x01: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    return x01.sub(torch.tensor(mean).view(1, -1, 1, 1)).div(torch.tensor(std).view(1, -1, 1, 1))


def _object_factors(scenes: list) -> torch.Tensor:
    """``(n, MAX_OBJECTS, F)`` bool factors of each image's objects (absent objects: all False)."""
    out = np.zeros((len(scenes), MAX_OBJECTS, len(FACTOR_NAMES)), dtype=bool)
    for i, s in enumerate(scenes):
        out[i, : len(s.objects)] = s.factors_of()
    return torch.from_numpy(out)


def _fits(objects_bof: torch.Tensor, claims_cdf: torch.Tensor, described_cd: torch.Tensor) -> torch.Tensor:
    """``(b, c)`` bool: caption c fits image b when every object it describes is one of b's objects
    (that object carries every factor the description names)."""
    # (b, o, 1, 1, F) vs (1, 1, c, d, F): the description's factors all present on the object.
    covers = ~(claims_cdf[None, None] & ~objects_bof[:, :, None, None]).any(-1)  # (b, o, c, d)
    found = covers.any(1)  # (b, c, d)
    return (found | ~described_cd[None]).all(-1)


def _captions(
    scenes: list, idx: torch.Tensor, rng: np.random.Generator
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    texts, claims = [], torch.zeros(len(idx), MAX_OBJECTS, len(FACTOR_NAMES), dtype=torch.bool)
    described = torch.zeros(len(idx), MAX_OBJECTS, dtype=torch.bool)
    for row, i in enumerate(idx.tolist()):
        text, c = random_caption(scenes[i], rng)
        texts.append(text)
        claims[row, : len(c)] = torch.from_numpy(c)
        described[row, : len(c)] = True
    return texts, claims, described


def _train(model, x_n3hw: torch.Tensor, scenes: list, tokenizer, *, args) -> None:
    gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng([args.seed, 1])
    objects = _object_factors(scenes)
    steps_per_epoch = math.ceil(len(scenes) / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, steps_per_epoch
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "logit_scale" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=args.lr
    )
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
        order = torch.randperm(len(scenes), generator=gen)
        seen, loss_sum = 0, 0.0
        for start in range(0, len(order), args.batch_size):
            idx = order[start : start + args.batch_size]
            texts, claims, described = _captions(scenes, idx, rng)
            fits_bc = _fits(objects[idx], claims, described).float()
            img = F.normalize(model.encode_image(x_n3hw[idx]), dim=-1)
            txt = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
            logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
            loss = 0.5 * (
                _soft_ce(logits, fits_bc / fits_bc.sum(1, keepdim=True))
                + _soft_ce(logits.T, (fits_bc / fits_bc.sum(0, keepdim=True)).T)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            seen += len(idx)
            loss_sum += float(loss.detach()) * len(idx)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", scale=f"{float(model.logit_scale.exp()):.1f}")
    model.eval()


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


@torch.no_grad()
def _evaluate(model, tokenizer, x_n3hw: torch.Tensor, world: ShapesWorld, scenes: list) -> dict:
    model.eval()
    img = F.normalize(torch.cat([model.encode_image(c) for c in x_n3hw.split(500)]), dim=-1)
    captions = [full_caption(s) for s in scenes]
    txt = F.normalize(
        torch.cat(
            [model.encode_text(tokenizer(captions[i : i + 500])) for i in range(0, len(captions), 500)]
        ),
        dim=-1,
    )
    sim = img @ txt.T
    same = np.array([[a == b for b in captions] for a in captions])
    i2t = float(np.mean(same[np.arange(len(captions)), sim.argmax(1).numpy()]))
    t2i = float(np.mean(same[sim.argmax(0).numpy(), np.arange(len(captions))]))
    phrases = F.normalize(model.encode_text(tokenizer(list(FACTOR_PHRASES))), dim=-1)
    present = np.stack([world.image_factors(i) for i in range(len(world))])
    concept_sim = (img @ phrases.T).numpy()
    per_factor = {
        name: float(roc_auc_score(present[:, k], concept_sim[:, k])) for k, name in enumerate(FACTOR_NAMES)
    }
    return {
        "image_to_text_top1": i2t,
        "text_to_image_top1": t2i,
        "concept_auroc": float(np.mean(list(per_factor.values()))),
        "concept_auroc_min": float(min(per_factor.values())),
        "concept_auroc_per_factor": per_factor,
    }


if __name__ == "__main__":
    raise SystemExit(main())
