"""``scripts/bench/gpu.sh --quick --device cpu``: the GPU benchmark's whole code path runs on a CPU (as CI runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


@pytest.mark.slow
def test_gpu_benchmark_runs_quick_on_a_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    cmd = [str(REPO / "scripts" / "bench" / "gpu.sh"), "--quick", "--device", "cpu", "--json", str(out),
           "--refpkgs", str(tmp_path / "no-saev")]  # fmt: skip
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["quick"] and r["saev"] is None and "saev 0.1.0 not in" in done.stdout
    assert r["recording"]["float32_images_per_s"] > 0 and r["recording"]["bfloat16_images_per_s"] > 0
    runs = {(t["architecture"], t["batch"], t["autocast"]) for t in r["training"]}
    assert runs == {(a, b, False) for a in ("standard", "topk", "batchtopk") for b in (256, 1024)} | {
        ("topk", 1024, True)
    }
    assert all(
        t["patches_per_s"] > 0 and t["d_sae"] == 1536 and t["peak_gpu_mib"] is None for t in r["training"]
    )
    assert [f["batch"] for f in r["reader"]] == [256, 1024] and all(f["rows_per_s"] > 0 for f in r["reader"])
    assert "patches/s" in done.stdout and "reader at batch 1024" in done.stdout  # the table
