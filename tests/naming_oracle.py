"""The naming oracle of ``vision_sae_lens.benchmark.naming`` in the shape the tests use it."""

from __future__ import annotations

from vision_sae_lens.benchmark.naming import ORACLE_LAYOUT as LAYOUT
from vision_sae_lens.benchmark.naming import oracle_sae, write_oracle
from vision_sae_lens.benchmark.suite import DEFAULT_SITE as SITE
from vision_sae_lens.data.synthetic import FACTOR_NAMES

N_FACTORS = len(FACTOR_NAMES)

__all__ = ["LAYOUT", "N_FACTORS", "SITE", "oracle_sae", "write_oracle_store"]


def write_oracle_store(world, folder):
    """The oracle's store (labels: each image's main shape, as the world labels it)."""
    return write_oracle(world, folder)[0]
