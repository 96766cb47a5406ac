"""glibc allocator settings, each measured in a fresh interpreter (they are process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Free one 24 MiB (mmapped) block, which raises glibc's mmap threshold, then allocate 24 blocks of 12 MiB
# and free all but the newest: without return_freed_memory they sit in the heap below a block still in
# use, so glibc cannot give them back; with it each was its own mapping and went back to the OS.
SCRIPT = """
import json, sys, torch
from vision_sae_lens import cpu_memory
applied = cpu_memory.return_freed_memory() if sys.argv[1] == "on" else False
def anon():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon:")) / 1024
big = torch.ones(6 * 2**20); del big  # 24 MiB: glibc raises its threshold to it
before = anon()
blocks = [torch.ones(3 * 2**20) for _ in range(24)]
blocks = blocks[-1:]
print(json.dumps({"applied": applied, "kept_mib": anon() - before}))
"""


def _run(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_return_freed_memory_gives_freed_tensors_back_to_the_os():
    off, on = _run("off"), _run("on")
    assert on["applied"] is True
    assert off["kept_mib"] > 200  # glibc's default: 23 freed blocks of 12 MiB still resident
    assert on["kept_mib"] < 50
