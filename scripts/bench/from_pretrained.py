"""Benchmark: ``SAE.from_pretrained`` of a 24K-latent SAE (d_in 768) served by the local Hub.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench/from_pretrained.py``. Reports the cold
download, the warm-cache load online, and the warm-cache load with HF_HUB_OFFLINE, for a SAELens
folder (repo id) and for a saev ``sae.pt`` behind a registered release (conversion included).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The local Hub-compatible server of the test suite (tests/hub/local_hub.py) serves the files.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "hub"))

import huggingface_hub.constants as C  # noqa: E402
import torch  # noqa: E402
from local_hub import LocalHub  # noqa: E402
from sae_lens import SAE, StandardSAE, StandardSAEConfig  # noqa: E402

import vision_sae_lens.hub as vhub  # noqa: E402


def timed(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(2)
    hub = LocalHub().start()
    tmp = Path(tempfile.mkdtemp())
    C.ENDPOINT = hub.url
    C.HUGGINGFACE_CO_URL_TEMPLATE = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    C.HF_HUB_CACHE = str(tmp / "cache")
    C.HF_HUB_OFFLINE = False
    vhub.register_vision_releases()

    sae = StandardSAE(StandardSAEConfig(d_in=768, d_sae=24576))
    folder = tmp / "sae"
    sae.save_model(str(folder))
    hub.commit(
        "bench/vision-24k", {f"blocks.10.hook_resid_post/{p.name}": p.read_bytes() for p in folder.iterdir()}
    )
    saev_path = tmp / "sae.pt"
    with open(saev_path, "wb") as fd:
        fd.write((json.dumps({"d_vit": 768, "exp_factor": 32}) + "\n").encode())
        torch.save({k: v.detach() for k, v in sae.state_dict().items()}, fd)
    hub.commit("osunlp/SAE_CLIP_24K_ViT-B-16_IN1K", {"sae.pt": saev_path.read_bytes()})

    cases = {
        "SAELens folder (repo id)": lambda: SAE.from_pretrained(
            "bench/vision-24k", "blocks.10.hook_resid_post"
        ),
        "saev release (converted)": lambda: SAE.from_pretrained(
            release="saev-clip-vit-b-16-in1k", sae_id="blocks.10.hook_resid_post"
        ),
    }
    print(f"SAE: d_in=768 d_sae=24576 ({sum(p.numel() for p in sae.parameters()) * 4 / 2**20:.0f} MiB fp32)")
    for name, fn in cases.items():
        cold = timed(fn, repeats=1)
        warm = timed(fn)
        C.HF_HUB_OFFLINE = True
        offline = timed(fn)
        loaded = fn()
        assert torch.equal(loaded.W_enc, sae.W_enc) and torch.equal(loaded.b_dec, sae.b_dec)
        C.HF_HUB_OFFLINE = False
        print(
            f"{name:28s} cold (download) {cold:6.3f} s | warm cache {warm:6.3f} s | warm + HF_HUB_OFFLINE=1 {offline:6.3f} s"
        )
    hub.stop()


if __name__ == "__main__":
    main()
