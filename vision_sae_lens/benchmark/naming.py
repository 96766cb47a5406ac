"""Naming accuracy: for the latents the benchmark says recover a factor, does the latent's name name it?

The pairs are the recovered factors of the patch-level recovery (best F1 >= the threshold) with their
best-F1 latent. Each latent of the SAE is named on the scored store's images three ways, and a pair
counts as right when the latent's name is the factor's phrase (:data:`FACTOR_PHRASES`, in factor order):

- **namer**: ``demo:shapes-clip`` (an image-text model trained on the world's captions) against the
  vocabulary of one phrase per factor, with ``name_latents``' defaults (``contrast``, the best three
  re-ranked by detection) and with CLIP-Dissect's soft-WPMI alone (the baseline);
- **labels**: the factor whose image-level labels the latent's firing matches with the best F1 (the
  world's exact labels: what naming by labels gives when the labels are the concepts);
- **labels (patch masks)**: the factor whose patch masks (the world's pixel masks on the store's patch
  grid, as the benchmark's truth) the latent's firing *patches* match with the best F1: naming at
  patch level where masks exist (:mod:`vision_sae_lens.analysis.naming_patches`). The recovered pairs
  are chosen by patch-level F1 too, so this method shares the benchmark's own yardstick;
- **shuffled**: the namer's names dealt to the pairs' latents at random (mean over seeded permutations):
  the accuracy names would have if they said nothing about their own latent.

Top-3 accuracy (the factor among the three best names) and the median detection AUROC of the names
come with each. :func:`write_oracle` builds an SAE whose latents are exactly the factors, to check a
namer apart from any SAE's own quality.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vision_sae_lens.benchmark.truth import BACKBONE_ID, DEFAULT_SITE, SyntheticTruth
from vision_sae_lens.data.shapes_captions import FACTOR_PHRASES
from vision_sae_lens.data.synthetic import FACTOR_NAMES, ShapesWorld
from vision_sae_lens.layout import TokenLayout

if TYPE_CHECKING:
    from vision_sae_lens.analysis.naming import LatentNames
    from vision_sae_lens.compat import SAE
    from vision_sae_lens.contracts import ActivationStoreReader

NAMER_ID = "demo:shapes-clip"
ORACLE_LAYOUT = TokenLayout(image_size=(32, 32), patch_size=(4, 4), has_cls=True)
"""The oracle store's layout: the shapes world at 32 px in patches of 4 (CLS, not stored)."""
SHUFFLES = 1000
DEFAULT_METHOD = "namer (contrast, re-ranked)"
"""``name_latents``' defaults: the contrast similarity, the best 3 re-ranked by detection."""
BASELINE_METHOD = "namer (soft-WPMI)"
"""CLIP-Dissect's soft-WPMI alone."""
PATCH_METHOD = "labels (patch masks)"
"""The factor whose patch masks the latent's firing patches match best (patch-level naming)."""


def naming_accuracy(
    sae: SAE,
    store: ActivationStoreReader,
    world: ShapesWorld,
    report: dict[str, Any],
    *,
    namer: Any = NAMER_ID,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """The naming accuracy section of a benchmark ``report`` (which holds the patch-level recovery)."""
    from vision_sae_lens.analysis.namer import ImageTextNamer
    from vision_sae_lens.analysis.naming import name_latents

    factors = list(report["factors"])
    assert factors == list(FACTOR_NAMES), "a synthetic report's factors are the world's, in order"
    per_factor = report["recovery"]["patch"]["per_factor"]
    every = [(k, int(per_factor[f]["factor_f1_latent"])) for k, f in enumerate(factors)]
    recovered = [(k, j) for k, j in every if per_factor[factors[k]]["recovered"]]
    common: dict[str, Any] = dict(images=world, max_images=None, seed=seed, progress=progress)
    text_namer = namer if isinstance(namer, ImageTextNamer) else ImageTextNamer(namer)
    phrases = list(FACTOR_PHRASES)
    methods: dict[str, LatentNames] = {
        DEFAULT_METHOD: name_latents(sae, store, namer=text_namer, concepts=phrases, **common),
        BASELINE_METHOD: name_latents(
            sae, store, namer=text_namer, concepts=phrases, similarity="soft_wpmi", rerank=1, **common
        ),
    }
    image_labels = np.stack([world.image_factors(i) for i in range(len(world))])
    methods["labels"] = name_latents(sae, store, labels=image_labels, label_names=factors, **common)
    truth = SyntheticTruth(world, patch_size=store.layout.patch_size[0])  # the masks recovery is scored on
    methods[PATCH_METHOD] = name_latents(
        sae, store, patch_labels=truth.patch_factors, label_names=factors, **common
    )
    out: dict[str, Any] = {
        "namer": text_namer.id, "recovered_factors": len(recovered), "factors": len(every), "methods": {},
        "per_factor": {},
    }  # fmt: skip
    for method, names in methods.items():
        out["methods"][method] = {
            **_accuracy(names, recovered),
            "accuracy_all": _accuracy(names, every)["accuracy"],
        }
    first = methods[DEFAULT_METHOD]
    out["methods"]["shuffled"] = {
        **_shuffled(first, recovered, seed=seed),
        "accuracy_all": _shuffled(first, every, seed=seed)["accuracy"],
    }
    for k, j in every:
        entry = {
            "latent": j,
            "factor_f1": per_factor[factors[k]]["factor_f1"],
            "recovered": per_factor[factors[k]]["recovered"],
        }
        out["per_factor"][factors[k]] = {**entry, **{m: _readable(n.name_of(j)) for m, n in methods.items()}}
    return out


def write_oracle(world: ShapesWorld, folder: str | Path, *, site: str | None = None) -> tuple[Any, SAE]:
    """An oracle of naming: a store of ``world`` whose patch rows are the patches' factor indicators
    (``(n_patches, 19)``, 25% coverage), written into ``folder``, and an identity SAE over it, so latent
    ``j`` fires exactly on the patches carrying factor ``j``. Returns ``(store, sae)``."""
    from vision_sae_lens.store import StoreWriter

    site = site or DEFAULT_SITE
    writer = StoreWriter(
        folder, backbone_id=BACKBONE_ID, sites=[site], d_model=len(FACTOR_NAMES), layout=ORACLE_LAYOUT,
        tokens="patches", dtype="float32", dataset=world.description, label_names=list(world.label_names),
    )  # fmt: skip
    tokens = ORACLE_LAYOUT.token_indices("patches").numpy()
    for i in range(len(world)):
        rows = world.patch_factors(i, patch_size=ORACLE_LAYOUT.patch_size[0]).astype(np.float32)
        writer.append({site: rows}, np.full(len(tokens), i), tokens)
    store = writer.finish(labels=[world[i][1] for i in range(len(world))])
    return store, oracle_sae(site=site)


def oracle_sae(*, d_in: int = len(FACTOR_NAMES), site: str | None = None, backbone: str = BACKBONE_ID) -> SAE:
    """The identity SAE of :func:`write_oracle` (``d_in``, ``site``, ``backbone`` as given)."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig

    from vision_sae_lens.metadata import VisionFacts, apply_vision_facts

    f = len(FACTOR_NAMES)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=f))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d_in, f))
        sae.W_dec.copy_(torch.eye(f, d_in))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    facts = VisionFacts(
        backbone=backbone, hook_name=site or DEFAULT_SITE, tokens="patches", layout=ORACLE_LAYOUT
    )
    apply_vision_facts(sae, facts)
    return sae


def naming_headline(report: dict[str, Any]) -> float | None:
    """The comparison table's figure: the default namer's accuracy on the recovered factors."""
    return report.get("naming", {}).get("methods", {}).get(DEFAULT_METHOD, {}).get("accuracy")


def naming_table(report: dict[str, Any]) -> tuple[str, list[str], list[list[Any]]] | None:
    """The report's naming-accuracy table (caption, header, rows), or None without a naming section."""
    naming = report.get("naming")
    if not naming:
        return None
    header = ["names", "accuracy (recovered)", "top-3 (recovered)", "accuracy (all factors)", "median AUROC"]
    rows = [
        [method, *(_fmt(m.get(key)) for key in ("accuracy", "top3", "accuracy_all", "median_auroc"))]
        for method, m in naming["methods"].items()
    ]
    caption = (
        f"Naming accuracy: does the name of a factor's best-F1 latent name the factor? ({naming['recovered_factors']} "
        f"recovered factors of {naming['factors']}; namer {naming['namer']}; shuffled: the namer's names dealt at random)"
    )
    return caption, header, rows


def _accuracy(names: LatentNames, pairs: list[tuple[int, int]]) -> dict[str, Any]:
    if not pairs:
        return {"accuracy": None, "top3": None, "median_auroc": None}
    best = names.concept_sr[[j for _, j in pairs]]
    truth = np.asarray([k for k, _ in pairs])
    auroc = names.auroc_s[[j for _, j in pairs]].numpy()
    auroc = auroc[~np.isnan(auroc)]
    return {
        "accuracy": float(np.mean(best[:, 0].numpy() == truth)),
        "top3": float(np.mean((best[:, :3].numpy() == truth[:, None]).any(1))),
        "median_auroc": float(np.median(auroc)) if len(auroc) else None,
    }


def _shuffled(names: LatentNames, pairs: list[tuple[int, int]], *, seed: int) -> dict[str, Any]:
    if not pairs:
        return {"accuracy": None, "top3": None, "median_auroc": None}
    given = names.concept_sr[[j for _, j in pairs], 0].numpy()
    truth = np.asarray([k for k, _ in pairs])
    rng = np.random.default_rng(seed)
    hits = [np.mean(rng.permutation(given) == truth) for _ in range(SHUFFLES)]
    return {"accuracy": float(np.mean(hits)), "accuracy_std": float(np.std(hits)), "permutations": SHUFFLES}


def _readable(name: str | None) -> str | None:
    """A factor phrase as its factor name (``"a red shape"`` -> ``color=red``); label names pass through."""
    if name in FACTOR_PHRASES:
        return FACTOR_NAMES[FACTOR_PHRASES.index(name)]
    return name


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"
