"""Tiny CLIP models with a working text side (tokenizer included), built offline with random weights.

open_clip: an architecture registered from a config (vocabulary = open_clip's own BPE, so its
SimpleTokenizer's ids fit), its weights saved to a file and, for the id form ``open_clip:ARCH/TAG``,
a pretrained tag that points at that file. transformers: a ``CLIPModel`` saved with ``save_pretrained``
plus the same BPE vocabulary written as a CLIP tokenizer (``vocab.json`` / ``merges.txt``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

ARCH = "tiny-zs-clip"
TAG = "local"
OPEN_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    # 49408 = open_clip's BPE vocabulary: its default tokenizer's ids must index the embedding table.
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
CLASS_NAMES = ["cat", "golden_retriever", "airplane", "3"]


def save_tiny_open_clip(tmp_dir: Path, seed: int = 0):
    """Register ``ARCH`` with open_clip and save a random full CLIP's state dict; (model, weights path)."""
    import open_clip

    cfg_dir = tmp_dir / "open_clip_cfg"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / f"{ARCH}.json").write_text(json.dumps(OPEN_CLIP_CONFIG))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(seed)
    model = open_clip.create_model(ARCH).eval()
    path = tmp_dir / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return model, path


def register_pretrained_tag(monkeypatch, weights: Path) -> None:
    """Make ``open_clip:ARCH/TAG`` a pretrained id whose weights are ``weights``.

    open_clip has no public way to add a pretrained tag; its table maps tags to download configs and
    a ``file`` entry is used as is (``open_clip.pretrained.download_pretrained``), so a test patches it.
    """
    import open_clip.pretrained as oc_pretrained

    monkeypatch.setitem(oc_pretrained._PRETRAINED, ARCH, {TAG: {"file": str(weights)}})


def save_tiny_hf_clip(folder: Path, seed: int = 0) -> Path:
    """A random transformers ``CLIPModel`` and a CLIP tokenizer saved into ``folder``."""
    import open_clip
    import transformers as tf

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = tf.CLIPConfig(
        vision_config=dict(small, image_size=32, patch_size=8),
        text_config=dict(small, num_hidden_layers=1),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    tf.CLIPModel(config).eval().save_pretrained(folder)
    bpe = open_clip.SimpleTokenizer()
    # open_clip renamed OpenAI's special tokens; transformers' CLIP tokenizer uses the original names.
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    (folder / "vocab.json").write_text(json.dumps({rename.get(k, k): v for k, v in bpe.encoder.items()}))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return folder


def solid_images(n: int, seed: int = 0):
    """``n`` 32x32 images of one random colour each: a random tiny CLIP's zero-shot prediction varies
    across them, where noise images all look alike to it (one class for all)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (n, 1, 1, 3), dtype=np.uint8)
    return [Image.fromarray(np.broadcast_to(c, (32, 32, 3)).copy()) for c in colours]
