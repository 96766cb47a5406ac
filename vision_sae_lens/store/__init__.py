"""Activation store: record sites of a hooked ViT to checksummed disk shards and stream them back.

``cache_activations(model, images, sites=..., out_dir=...)`` records (resumable, ``torchrun``-aware);
``ActivationStore(dir)`` reads: ``shuffled()`` for training, ``ordered()`` / ``read_rows()`` for analysis
with provenance, ``verify()`` for checksums. ``StoreWriter`` builds a store from arrays you already have.
The format is specified in docs/shard_format.md.
"""

from typing import TYPE_CHECKING

from vision_sae_lens._lazy import lazy_exports

__all__ = [
    "ActivationStore",
    "Rows",
    "StoreWriter",
    "cache_activations",
    "FORMAT_VERSION",
]

if TYPE_CHECKING:
    from vision_sae_lens.store.format import FORMAT_VERSION
    from vision_sae_lens.store.reader import ActivationStore, Rows
    from vision_sae_lens.store.recorder import cache_activations
    from vision_sae_lens.store.writer import StoreWriter

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "ActivationStore": "vision_sae_lens.store.reader",
        "Rows": "vision_sae_lens.store.reader",
        "StoreWriter": "vision_sae_lens.store.writer",
        "cache_activations": "vision_sae_lens.store.recorder",
        "FORMAT_VERSION": "vision_sae_lens.store.format",
    },
)
