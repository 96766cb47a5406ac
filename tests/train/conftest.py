"""Fixtures for the training tests: small real activation stores built from synthetic or model rows."""

from __future__ import annotations

import pytest
import torch
from helpers import D_IN, OTHER_SITE, SITE, synthetic_rows, write_store

# Tiny tensors: more intra-op threads only contend with the prefetch threads on a shared 2-core box.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    """16,384 rows (1,024 images x 16 patches) of d=32 at two sites."""
    rows = synthetic_rows(16384, D_IN)
    other = synthetic_rows(16384, D_IN, seed=1)
    return write_store(tmp_path_factory.mktemp("store") / "acts", {SITE: rows, OTHER_SITE: other})
