"""Hub stage: publish SAEs with model cards, the vision release registry, saev/ViT-Prisma importers.

- ``push_to_hub(dirs, repo_id=...)``: validate SAELens checkpoint folders and publish them in
  SAELens' ``<sae_id>/`` layout with a model card, in one commit.
- ``register_vision_releases()`` / ``list_vision_releases()``: the shipped YAML registry of vision
  releases (saev's published SAEs), registered into SAELens so ``SAE.from_pretrained(release=...,
  sae_id=...)`` works.
- ``import_saev`` / ``load_saev_checkpoint`` and ``import_prisma``: safe converters of saev
  ``sae.pt`` files and ViT-Prisma pickles into SAELens SAEs with the same latents.

Importing this package only reads yaml and touches SAELens' registry; the rest loads on use.
"""

from __future__ import annotations

from typing import Any

from vision_sae_lens.hub.registry import (
    format_release_table,
    get_vision_release,
    list_vision_releases,
    register_vision_releases,
)

__all__ = [
    "register_vision_releases",
    "list_vision_releases",
    "format_release_table",
    "get_vision_release",
    "push_to_hub",
    "import_saev",
    "load_saev_checkpoint",
    "read_saev_checkpoint",
    "read_saev_manifest",
    "import_prisma",
    "read_saev_shards",
    "convert_saev_shards",
]

_LAZY = {
    "push_to_hub": "vision_sae_lens.hub.publish",
    "import_saev": "vision_sae_lens.hub.saev_hub",
    "read_saev_manifest": "vision_sae_lens.hub.saev_hub",
    "load_saev_checkpoint": "vision_sae_lens.hub.saev",
    "read_saev_checkpoint": "vision_sae_lens.hub.saev",
    "import_prisma": "vision_sae_lens.hub.prisma",
    "read_saev_shards": "vision_sae_lens.hub.saev_shards",
    "convert_saev_shards": "vision_sae_lens.hub.saev_shards",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vision_sae_lens.hub' has no attribute {name!r}")
