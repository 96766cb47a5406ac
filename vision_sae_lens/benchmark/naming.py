"""Naming accuracy: for the latents the benchmark says recover a factor, does the latent's name name it?

The pairs are the recovered factors of the patch-level recovery (best F1 >= the threshold) with their
best-F1 latent. Each latent of the SAE is named on the scored store's images three ways, and a pair
counts as right when the latent's name is the factor's phrase (:data:`FACTOR_PHRASES`, in factor order):

- **namer**: ``demo:shapes-clip`` (an image-text model trained on the world's captions) against the
  vocabulary of one phrase per factor, with each similarity function (CLIP-Dissect's soft-WPMI and
  ``contrast``);
- **labels**: the factor whose image-level labels the latent's firing matches with the best F1 (the
  world's exact labels: what naming by labels gives when the labels are the concepts);
- **shuffled**: the namer's names dealt to the pairs' latents at random (mean over seeded permutations):
  the accuracy names would have if they said nothing about their own latent.

Top-3 accuracy (the factor among the three best names) and the median detection AUROC of the names
come with each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from vision_sae_lens.data.shapes_captions import FACTOR_PHRASES
from vision_sae_lens.data.synthetic import FACTOR_NAMES, ShapesWorld

if TYPE_CHECKING:
    from vision_sae_lens.analysis.naming import LatentNames
    from vision_sae_lens.compat import SAE
    from vision_sae_lens.contracts import ActivationStoreReader

NAMER_ID = "demo:shapes-clip"
SHUFFLES = 1000


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
    from vision_sae_lens.analysis.naming_scores import SIMILARITIES

    factors = list(report["factors"])
    assert factors == list(FACTOR_NAMES), "a synthetic report's factors are the world's, in order"
    per_factor = report["recovery"]["patch"]["per_factor"]
    every = [(k, int(per_factor[f]["f1_latent"])) for k, f in enumerate(factors)]
    recovered = [(k, j) for k, j in every if per_factor[factors[k]]["recovered"]]
    common = dict(images=world, max_images=None, seed=seed, progress=progress)
    text_namer = namer if isinstance(namer, ImageTextNamer) else ImageTextNamer(namer)
    methods: dict[str, LatentNames] = {
        f"namer ({sim})": name_latents(
            sae, store, namer=text_namer, concepts=list(FACTOR_PHRASES), similarity=sim, **common
        )
        for sim in SIMILARITIES
    }
    image_labels = np.stack([world.image_factors(i) for i in range(len(world))])
    methods["labels"] = name_latents(sae, store, labels=image_labels, label_names=factors, **common)
    out: dict[str, Any] = {
        "namer": text_namer.id, "recovered_factors": len(recovered), "factors": len(every), "methods": {},
        "per_factor": {},
    }  # fmt: skip
    for method, names in methods.items():
        out["methods"][method] = {
            **_accuracy(names, recovered),
            "accuracy_all": _accuracy(names, every)["accuracy"],
        }
    first = methods[f"namer ({SIMILARITIES[0]})"]
    out["methods"]["shuffled"] = {
        **_shuffled(first, recovered, seed=seed),
        "accuracy_all": _shuffled(first, every, seed=seed)["accuracy"],
    }
    for k, j in every:
        entry = {
            "latent": j,
            "f1": per_factor[factors[k]]["f1"],
            "recovered": per_factor[factors[k]]["recovered"],
        }
        out["per_factor"][factors[k]] = {**entry, **{m: _readable(n.name_of(j)) for m, n in methods.items()}}
    return out


def naming_headline(report: dict[str, Any]) -> float | None:
    """The comparison table's figure: the default namer's accuracy on the recovered factors."""
    from vision_sae_lens.analysis.naming_scores import SIMILARITIES

    method = report.get("naming", {}).get("methods", {}).get(f"namer ({SIMILARITIES[0]})", {})
    return method.get("accuracy")


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
