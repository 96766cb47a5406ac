"""The one place where training reaches into SAELens internals (pinned sae-lens range; tested per seam).

* ``quiet_norm_estimate``: SAELens' ``ActivationScaler`` estimates shows a tqdm bar that takes no
  ``disable`` argument; with ``progress=False`` every bar must stay hidden, so the module's ``tqdm``
  name is swapped for a disabled one while the estimate runs, and restored afterwards.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

from sae_lens.training import activation_scaler


@contextmanager
def quiet_norm_estimate(progress: bool) -> Iterator[None]:
    """Hide the bars of ``ActivationScaler.estimate_*`` inside the block unless ``progress``."""
    if progress:
        yield
        return
    original = activation_scaler.tqdm
    activation_scaler.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        activation_scaler.tqdm = original
