"""``shuffled(prefetch=0)`` produces the same stream in the caller's thread (one prefetch queue for a
consumer that runs the stream on its own thread, e.g. the trainer)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from vision_sae_lens.layout import TokenLayout
from vision_sae_lens.store import StoreWriter

SITE = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    layout = TokenLayout(image_size=(16, 16), patch_size=(8, 8), has_cls=False)  # 4 patches
    writer = StoreWriter(
        tmp_path_factory.mktemp("s") / "acts", backbone_id="t", sites=[SITE], d_model=6, layout=layout,
        tokens="patches", dtype="float16",
    )  # fmt: skip
    rows = np.arange(400)
    writer.append(
        {SITE: np.random.default_rng(0).standard_normal((400, 6), dtype=np.float32)}, rows // 4, rows % 4
    )
    return writer.finish()


def test_prefetch_zero_gives_the_same_batches_without_a_thread(store, monkeypatch):
    kwargs = dict(seed=3, epochs=2, buffer_rows=64, block_rows=8, subtract_mean=True, skip_batches=2)
    expected = [b.clone() for b in store.shuffled(SITE, 32, **kwargs)]
    started: list[str] = []
    real_start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda t: (started.append(t.name), real_start(t))[1])
    got = list(store.shuffled(SITE, 32, prefetch=0, **kwargs))
    assert not started
    assert len(got) == len(expected) > 0
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_negative_prefetch_is_refused(store):
    with pytest.raises(ValueError, match="prefetch >= 0"):
        store.shuffled(SITE, 32, prefetch=-1)


def test_reading_a_store_imports_no_sae_lens(store):
    """The read path (open, ordered, shuffled with its prefetch thread, gather) never imports SAELens,
    whose import alone takes seconds."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from vision_sae_lens.store import ActivationStore\n"
        f"s = ActivationStore({str(store.path)!r})\n"
        f"assert sum(len(b) for b in s.shuffled({SITE!r}, 32, seed=1)) == 384\n"
        f"assert sum(len(r.acts) for r in s.ordered({SITE!r}, 64)) == 400\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sae_lens', 'transformer_lens')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
