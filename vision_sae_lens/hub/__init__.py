"""Hub stage: publish SAEs with model cards, the vision release registry, saev/ViT-Prisma importers.

- ``push_to_hub(dirs, repo_id=...)``: validate SAELens checkpoint folders and publish them in
  SAELens' ``<sae_id>/`` layout with a model card, in one commit.
- ``list_vision_releases()`` / ``get_vision_release()``: the shipped YAML registry of vision releases
  (saev's published SAEs). ``register_vision_releases()`` puts them into SAELens' directory, so
  ``SAE.from_pretrained(release=..., sae_id=...)`` works; importing ``vision_sae_lens`` arranges that
  by itself.
- ``import_saev`` / ``load_saev_checkpoint`` and ``import_prisma``: safe converters of saev
  ``sae.pt`` files and ViT-Prisma pickles into SAELens SAEs with the same latents.

Every name loads its module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "list_vision_releases": "vision_sae_lens.hub.registry",
    "format_release_table": "vision_sae_lens.hub.registry",
    "get_vision_release": "vision_sae_lens.hub.registry",
    "register_vision_releases": "vision_sae_lens.hub.wiring",
    "push_to_hub": "vision_sae_lens.hub.publish",
    "import_saev": "vision_sae_lens.hub.saev_hub",
    "read_saev_manifest": "vision_sae_lens.hub.saev_hub",
    "load_saev_checkpoint": "vision_sae_lens.hub.saev",
    "read_saev_checkpoint": "vision_sae_lens.hub.saev",
    "import_prisma": "vision_sae_lens.hub.prisma",
    "read_saev_shards": "vision_sae_lens.hub.saev_shards",
    "convert_saev_shards": "vision_sae_lens.hub.saev_shards",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vision_sae_lens.hub' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
