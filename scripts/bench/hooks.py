"""Benchmark: cost of the hook points, as ratios to the plain timm model.

Forward time of vit_small_patch16_224 (random weights, batch 32, CPU) for: the plain timm model, the
hooked model with no hooks active (the default, fused path: it should stay within 1.02x of plain timm),
a full ``run_with_cache`` (every site, norm scales and the embedding split included), one SAE spliced
(d_sae = 8 x d_model at blocks.6.hook_resid_post), the opt-in eager attention path (``attention="eager"``)
with no hooks, ``run_with_cache`` of every attention site on it, and ``run_with_cache`` of everything on
it with every toggled site switched on (``attn.hook_result``, ``hook_q/k/v_input``, ``hook_mlp_in``).
Ratios are to plain timm; the eager runs are also given as ratios to the fused (default) hooked model.
Runs are interleaved; medians are reported.
By default glibc is told to keep freed memory (``vision_sae_lens.cpu_memory.keep_freed_memory``) for
every run alike; ``--raw-malloc`` measures without it.

    .venv/bin/python scripts/bench/hooks.py [--repeats 5] [--batch 32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from vision_sae_lens.backbones import HookedSAEViT
from vision_sae_lens.cpu_memory import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument(
        "--raw-malloc",
        action="store_true",
        help="skip keep_freed_memory() (glibc returns freed memory at once)",
    )
    args = parser.parse_args()
    tuned = not args.raw_malloc and keep_freed_memory()
    torch.manual_seed(0)
    plain = timm.create_model(args.model, pretrained=False).eval()
    hooked_source = timm.create_model(args.model, pretrained=False).eval()
    hooked_source.load_state_dict(plain.state_dict())
    hooked = HookedSAEViT.from_module(hooked_source, backbone_id=f"timm:{args.model}")
    eager_source = timm.create_model(args.model, pretrained=False).eval()
    eager_source.load_state_dict(plain.state_dict())
    eager = HookedSAEViT.from_module(eager_source, backbone_id=f"timm:{args.model}", attention="eager")
    toggled_source = timm.create_model(args.model, pretrained=False).eval()
    toggled_source.load_state_dict(plain.state_dict())
    toggled = HookedSAEViT.from_module(toggled_source, backbone_id=f"timm:{args.model}", attention="eager")
    for switch in (toggled.set_use_attn_result, toggled.set_use_split_qkv_input, toggled.set_use_hook_mlp_in):
        switch(True)

    def attention_sites(name: str) -> bool:
        return ".attn." in name

    sae = StandardSAE(StandardSAEConfig(d_in=hooked.d_model, d_sae=8 * hooked.d_model))
    sae.cfg.metadata.hook_name = "blocks.6.hook_resid_post"
    pixels = torch.randn(args.batch, 3, *hooked.layout.image_size)

    runs = {
        "plain timm": lambda: plain(pixels),
        "hooked, no hooks": lambda: hooked(pixels),
        "run_with_cache (all sites)": lambda: hooked.run_with_cache(pixels),
        "run_with_saes (1 SAE)": lambda: hooked.run_with_saes(pixels, saes=[sae]),
        "eager attention, no hooks": lambda: eager(pixels),
        "eager, cache attn sites": lambda: eager.run_with_cache(pixels, names_filter=attention_sites),
        "eager+toggles, cache all": lambda: toggled.run_with_cache(pixels),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain timm"])
    print(
        f"{args.model}, batch {args.batch}, {torch.get_num_threads()} threads, {args.repeats} repeats (medians), "
        f"allocator tuned: {tuned}"
    )
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<28} {med * 1000:8.1f} ms   ratio {med / base:5.3f}")
    fused = statistics.median(times["hooked, no hooks"])
    print(f"  default (fused) path, no hooks / plain timm: {fused / base:5.3f} (target <= 1.02)")
    print(f"  eager / fused forward: {statistics.median(times['eager attention, no hooks']) / fused:5.3f}")
    print(
        f"  eager cache of all attention sites / fused forward: "
        f"{statistics.median(times['eager, cache attn sites']) / fused:5.3f}"
    )
    print(
        f"  eager, every toggled site on, cache everything / fused forward: "
        f"{statistics.median(times['eager+toggles, cache all']) / fused:5.3f}"
    )


if __name__ == "__main__":
    main()
