"""Benchmark: time and peak memory of naming latents against a concept vocabulary.

Synthetic inputs of the sizes a real run has after its one scan of the store: unit image embeddings of
``--naming-images`` naming and ``--heldout-images`` held-out images, unit text embeddings of each
vocabulary size (``--concepts``, default 1,000 and 20,000), every latent's top ``--top-k`` naming images
with positive activations, random held-out firing bits. For ``--latents`` latents (default 4,096) it
times, in a fresh child process per case (so peaks do not mix):

* choosing every latent's best names with each similarity (``rank_concepts``: contrast, soft-WPMI);
* re-ranking each latent's best 3 names by detection on 1,000 of the naming images (``rerank_by_detection``);
* the detection AUROC of the best names on the held-out images (in the package's chunks);
* ``browser``: what the feature browser does with the names.json of that many latents (best name and
  ``--runner-ups`` from the vocabulary, every name ``--name-chars`` characters long): read and check it,
  every latent's index row, the index data as script-safe JSON, ``--pages`` latent pages (the last
  column then gives the size of names.json);

and samples the peak anonymous memory (RssAnon every 5 ms) each adds over the process holding the
inputs, next to what one dense ``latents x concepts`` float32 matrix would take.

    .venv/bin/python scripts/bench/naming.py [--latents 4096] [--concepts 1000 20000] [--embed 512]
        [--steps contrast soft_wpmi rerank auroc browser] [--name-chars 40] [--runner-ups 5]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from analysis import PeakAnon, rss_anon  # scripts/bench/analysis.py: the RssAnon sampler

from vision_sae_lens.analysis.naming import RERANK_IMAGES
from vision_sae_lens.analysis.naming_scores import (
    AUROC_BYTES,
    DEFAULT_BUDGET_BYTES,
    SIMILARITIES,
    auroc_columns,
    chunk_sizes,
    rank_concepts,
    rerank_by_detection,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latents", type=int, default=4096)
    parser.add_argument("--concepts", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--embed", type=int, default=512, help="embedding width (CLIP ViT-B/16: 512)")
    parser.add_argument("--naming-images", type=int, default=4000)
    parser.add_argument("--heldout-images", type=int, default=1000)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", nargs="+", default=[*SIMILARITIES, "rerank", "auroc", "browser"])
    parser.add_argument(
        "--name-chars", type=int, default=40, help="browser: characters per name (concepts: <= 200)"
    )
    parser.add_argument("--runner-ups", type=int, default=5, help="browser: runner-up names per latent")
    parser.add_argument("--pages", type=int, default=200, help="browser: latent pages")
    args = parser.parse_args()
    print(
        f"{args.latents} latents, {args.naming_images} naming + {args.heldout_images} held-out images, "
        f"embedding {args.embed}, top-{args.top_k}, budget {DEFAULT_BUDGET_BYTES / 2**20:.0f} MiB, {args.threads} threads"
    )
    print(
        "| concepts | step | seconds | peak extra memory (MiB) | dense latents x concepts (MiB) | chunks (concepts, latents) |"
    )
    print("|---|---|---|---|---|---|")
    ctx = multiprocessing.get_context("spawn")
    for c in args.concepts:
        for step in args.steps:
            with ctx.Pool(1) as pool:
                seconds, peak, file_bytes = pool.apply(_measure, (args, c, step))
            dense = 4 * args.latents * c / 2**20
            chunks = chunk_sizes(
                n_images=args.naming_images, d_sae=args.latents, n_concepts=c, top_k=args.top_k
            )
            if step == "browser":
                chunks = f"names.json: {file_bytes / 2**20:.1f} MiB"
            print(f"| {c:,} | {step} | {seconds:.1f} | {peak / 2**20:.0f} | {dense:.0f} | {chunks} |")


def _measure(args: argparse.Namespace, n_concepts: int, step: str) -> tuple[float, int, int]:
    torch.set_num_threads(args.threads)
    if step == "browser":
        return _measure_browser(args, n_concepts)
    gen = torch.Generator().manual_seed(0)
    s, k = args.latents, args.top_k
    naming = F.normalize(torch.randn(args.naming_images, args.embed, generator=gen), dim=-1)
    held = F.normalize(torch.randn(args.heldout_images, args.embed, generator=gen), dim=-1)
    text = F.normalize(torch.randn(n_concepts, args.embed, generator=gen), dim=-1)
    top_image = torch.randint(0, args.naming_images, (s, k), generator=gen)
    top_value = torch.rand(s, k, generator=gen) + 0.01
    fires = torch.rand(args.heldout_images, s, generator=gen) < 0.05
    naming_fires = torch.rand(args.naming_images, s, generator=gen) < 0.05
    best = torch.randint(0, n_concepts, (s, 6), generator=gen)
    scores = torch.rand(s, 6, generator=gen).sort(dim=1, descending=True).values
    with PeakAnon(rss_anon()) as peak:
        start = time.perf_counter()
        if step == "auroc":
            chunk = max(1, DEFAULT_BUDGET_BYTES // (AUROC_BYTES * args.heldout_images))
            for a in range(0, s, chunk):
                auroc_columns(held @ text[best[a : a + chunk, 0]].T, fires[:, a : a + chunk])
        elif step == "rerank":
            pick = torch.randperm(args.naming_images, generator=gen)[:RERANK_IMAGES]  # as name_latents does
            rerank_by_detection(
                scores, best, naming[pick], text, lambda sl: naming_fires[pick, sl], shortlist=3
            )
        else:
            rank_concepts(top_image, top_value, naming, text, similarity=step, n_best=6)
        seconds = time.perf_counter() - start
    return seconds, peak.peak_delta, 0


def _measure_browser(args: argparse.Namespace, n_concepts: int) -> tuple[float, int, int]:
    """The browser's use of a names.json written beforehand (by the package's writer), measured alone."""
    from vision_sae_lens.analysis.browser_names import BrowserNames
    from vision_sae_lens.analysis.browser_pages import script_json
    from vision_sae_lens.analysis.names_file import NAMES_FORMAT, NAMES_VERSION, write_names
    from vision_sae_lens.names_format import read_names

    gen = torch.Generator().manual_seed(0)
    vocab = [(f"concept {i} " + "x" * args.name_chars)[: args.name_chars] for i in range(n_concepts)]
    picks = torch.randint(0, n_concepts, (args.latents, args.runner_ups + 1), generator=gen).tolist()
    latents = [
        {"latent": j, "name": vocab[p[0]], "score": 0.5, "auroc": 0.75, "fires_naming": 40, "fires_heldout": 9,
         "runner_up": [{"name": vocab[c], "score": 0.4} for c in p[1:]]}
        for j, p in enumerate(picks)
    ]  # fmt: skip
    doc = {
        "format": NAMES_FORMAT, "version": NAMES_VERSION, "method": {"kind": "image_text", "namer": "bench"},
        "sae": {"hook_name": "blocks.0.hook_resid_post", "d_sae": args.latents}, "store": {},
        "concepts": {"source": "bench", "count": n_concepts}, "split": {"heldout_images": 1000}, "latents": latents,
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = write_names(doc, Path(tmp) / "names.json")
        del doc, latents, picks, vocab
        gc.collect()
        with PeakAnon(rss_anon()) as peak:
            start = time.perf_counter()
            names = BrowserNames(read_names(path), source="names.json")
            rows = [names.index_fields(j) for j in range(args.latents)]
            script_json({"summary": names.summary(), "latents": rows})
            for j in range(min(args.pages, args.latents)):
                names.page(j)
            seconds = time.perf_counter() - start
        return seconds, peak.peak_delta, path.stat().st_size


if __name__ == "__main__":
    main()
