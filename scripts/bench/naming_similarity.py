"""Benchmark: which way of choosing names names the shapes world's latents right most often.

For every SAE of a ``vision-sae-lens bench synthetic --out DIR`` folder (``DIR/saes/*``, scored on
``DIR/acts-test-*``), and for an *oracle* SAE whose latents are exactly the 19 factor indicators (on a store
of the test images' patch factor labels), it names every latent with ``demo:shapes-clip`` and the
``builtin:shapes`` vocabulary four ways (similarity ``contrast`` or CLIP-Dissect's ``soft_wpmi``; with or
without re-ranking the best 3 by detection on the naming images), plus by the images' factor labels and
by the factors' patch masks (patch-level naming), and counts, over the factors each SAE recovers (patch-level best F1 >= 0.5) with their best-F1 latent, how
often the name is the factor.

    .venv/bin/python scripts/bench/naming_similarity.py --bench-dir bench_out [--oracle-images 1000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from sae_lens import SAE

from vision_sae_lens.analysis.namer import ImageTextNamer
from vision_sae_lens.analysis.naming import name_latents
from vision_sae_lens.benchmark.naming import write_oracle
from vision_sae_lens.benchmark.suite import DEFAULT_SITE
from vision_sae_lens.benchmark.truth import SyntheticTruth
from vision_sae_lens.data.shapes_captions import FACTOR_PHRASES
from vision_sae_lens.data.synthetic import FACTOR_NAMES, ShapesWorld
from vision_sae_lens.store import ActivationStore

VARIANTS = {
    "contrast": dict(similarity="contrast", rerank=1),
    "contrast, re-ranked": dict(similarity="contrast", rerank=3),
    "soft-WPMI": dict(similarity="soft_wpmi", rerank=1),
    "soft-WPMI, re-ranked": dict(similarity="soft_wpmi", rerank=3),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bench-dir", type=Path, required=True, help="output folder of `bench synthetic`")
    parser.add_argument("--oracle-images", type=int, default=1000, help="test images of the oracle's store")
    args = parser.parse_args()
    namer = ImageTextNamer("demo:shapes-clip")
    store = ActivationStore(args.bench_dir / f"acts-test-{DEFAULT_SITE}")
    world = ShapesWorld("test", n_images=int(store.n_images))
    cases = []
    for folder in sorted(p for p in (args.bench_dir / "saes").iterdir() if (p / "cfg.json").is_file()):
        report = json.loads((args.bench_dir / "reports" / folder.name / "report.json").read_text())
        per_factor = report["recovery"]["patch"]["per_factor"]
        pairs = [
            # "f1_latent": the key of reports written before it was renamed
            (k, per_factor[f].get("factor_f1_latent", per_factor[f].get("f1_latent")))
            for k, f in enumerate(FACTOR_NAMES)
            if per_factor[f]["recovered"]
        ]
        cases.append((folder.name, SAE.load_from_disk(str(folder)), store, world, pairs))
    with tempfile.TemporaryDirectory() as tmp:
        oracle_world = ShapesWorld("test", n_images=args.oracle_images)
        oracle_store, oracle = write_oracle(oracle_world, Path(tmp) / "oracle")
        cases.append(
            ("oracle", oracle, oracle_store, oracle_world, [(k, k) for k in range(len(FACTOR_NAMES))])
        )
        print("| SAE | recovered factors | " + " | ".join(VARIANTS) + " | labels | labels (patch masks) |")
        print("|---|---|" + "---|" * (len(VARIANTS) + 2))
        totals = np.zeros(len(VARIANTS) + 2)
        trained_pairs = 0
        for name, sae, case_store, case_world, pairs in cases:
            common = dict(images=case_world, max_images=None, progress=False)
            hits = []
            for variant in VARIANTS.values():
                names = name_latents(
                    sae, case_store, namer=namer, concepts=list(FACTOR_PHRASES), **variant, **common
                )
                hits.append(sum(int(names.concept_sr[j, 0]) == k for k, j in pairs))
            labels = np.stack([case_world.image_factors(i) for i in range(len(case_world))])
            names = name_latents(sae, case_store, labels=labels, label_names=list(FACTOR_NAMES), **common)
            hits.append(sum(int(names.concept_sr[j, 0]) == k for k, j in pairs))
            masks = SyntheticTruth(case_world, patch_size=case_store.layout.patch_size[0]).patch_factors
            names = name_latents(
                sae, case_store, patch_labels=masks, label_names=list(FACTOR_NAMES), **common
            )
            hits.append(sum(int(names.concept_sr[j, 0]) == k for k, j in pairs))
            print(f"| {name} | {len(pairs)} | " + " | ".join(str(h) for h in hits) + " |")
            if name != "oracle":
                totals += hits
                trained_pairs += len(pairs)
        print(
            f"| trained SAEs, accuracy | {trained_pairs} | "
            + " | ".join(f"{t / max(trained_pairs, 1):.3f}" for t in totals)
            + " |"
        )


if __name__ == "__main__":
    main()
