"""2-process torchrun recording (gloo, CPU) equals single-process recording, byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SITES, TINY_ID, TINY_KWARGS, build_tiny, make_folder

from vision_sae_lens.store import ActivationStore, cache_activations


@pytest.mark.slow
def test_torchrun_two_processes_equals_single_process(tmp_path):
    folder = make_folder(tmp_path / "images")
    kw = dict(sites=SITES, dtype="float32", batch_size=2, shard_images=3, progress=False)
    single = cache_activations(build_tiny(seed=0), f"imagefolder:{folder}", out_dir=tmp_path / "single", **kw)

    out = tmp_path / "multi"
    cache_args = [
        "cache", "--model", TINY_ID, "--random-init", "--model-kwargs", json.dumps(TINY_KWARGS), "--seed", "0",
        "--images", f"imagefolder:{folder}", "--sites", *SITES, "--dtype", "float32", "--batch-size", "2",
        "--shard-images", "3", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "vision_sae_lens",
        *cache_args,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2]
    )
    assert done.returncode == 0, done.stderr[-3000:]

    multi = ActivationStore(out)
    multi.verify()
    assert multi.fingerprint == single.fingerprint
    assert multi.n_rows == single.n_rows == 10 * 16 and multi.metadata["n_skipped"] == 1
    # Both ranks wrote shards (4 shards: 0 and 2 on rank 0, 1 and 3 on rank 1), merged in image order.
    assert [s["image_start"] for s in multi.manifest["shards"]] == [0, 3, 6, 9]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(single.path).as_posix() for p in single.path.rglob("*") if p.is_file()
    )
    for rel in files:
        assert (out / rel).read_bytes() == (single.path / rel).read_bytes(), rel
    for site in SITES:
        for a, b in zip(multi.ordered(site, 50), single.ordered(site, 50), strict=True):
            assert a.acts.equal(b.acts) and a.image_idx.equal(b.image_idx) and a.token_idx.equal(b.token_idx)
