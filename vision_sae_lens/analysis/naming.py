"""Latents that name themselves: a name, its score, runner-ups and a detection AUROC for every latent.

:func:`name_latents` reads the SAE's site from an activation store over a seeded random probe set of
its images (:mod:`~vision_sae_lens.analysis.naming_probe`), then names each latent in one of two ways,
written in the same format:

- **with an image-text namer** (``namer="open_clip:ViT-B-16/openai"``, ``"demo:shapes-clip"``, ...): the
  latent's top naming images (by its max or mean activation over their patches) are compared with each
  concept's image-text similarity (:mod:`~vision_sae_lens.analysis.naming_scores`); the name is the best
  concept;
- **by labels** (no namer, a labelled store or ``labels=``): the label whose images the latent fires on
  with the best F1 (the browser's precision and recall).

Evidence comes with every name: its **detection AUROC** on the held-out probe images, i.e. how well the
name predicts on which images the latent fires (the namer's image-text similarity to the name, or the
label itself). 0.5 is chance; a bad name shows as one. :func:`write_names` stores the result as
``names.json`` beside the SAE's ``eval.json`` (schema in docs/analysis.md); :func:`read_names` reads it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vision_sae_lens.analysis.concepts import Concepts, load_concepts
from vision_sae_lens.analysis.names_file import (
    NAMES_FORMAT,
    NAMES_VERSION,
    read_names,
    write_names,
)
from vision_sae_lens.analysis.naming_patches import PatchLabelCounts, PatchLabels
from vision_sae_lens.analysis.naming_probe import (
    LabelTable,
    ProbeCollector,
    ProbeSplit,
    StoreImages,
    split_probe,
)
from vision_sae_lens.analysis.naming_scores import (
    AUROC_BYTES,
    DEFAULT_BUDGET_BYTES,
    SIMILARITIES,
    auroc_columns,
    rank_concepts,
    rerank_by_detection,
)
from vision_sae_lens.analysis.scan import scan
from vision_sae_lens.analysis.stats import best_f1_labels
from vision_sae_lens.errors import ConfigError, ImageInputError, SAEMismatchError

if TYPE_CHECKING:
    from vision_sae_lens.analysis.namer import ImageTextNamer
    from vision_sae_lens.compat import SAE
    from vision_sae_lens.contracts import ActivationStoreReader

logger = logging.getLogger(__name__)

RERANK_IMAGES = 1000
"""Naming images (a seeded random subset) on which the shortlisted names are re-ranked by detection."""


@dataclass
class LatentNames:
    """Names of every latent of an SAE (tensors are ``(d_sae, r)``: best first, then runner-ups)."""

    concepts: list[str]
    """The vocabulary (or label names) the indices point into."""
    concept_sr: torch.Tensor
    """int64 concept index of each latent's best ``r`` names (-1: no name, the latent never fired)."""
    score_sr: torch.Tensor
    """Their scores (the similarity function's value, or the label's F1), NaN without a name."""
    auroc_s: torch.Tensor
    """Detection AUROC of the best name on the held-out images (NaN when undefined)."""
    naming_fires_s: torch.Tensor
    """Naming images the latent fires on."""
    heldout_fires_s: torch.Tensor
    """Held-out images the latent fires on."""
    method: dict[str, Any]
    """How the names were made (kind, namer, similarity, by, top_k, templates, ...)."""
    split: dict[str, Any]
    """The probe images (seed, counts, method)."""
    context: dict[str, Any] = field(default_factory=dict)
    """The SAE, store and vocabulary records written into names.json."""
    precision_sr: torch.Tensor | None = None
    """Label names only: precision of each label (share of the images fired on that carry it)."""
    recall_sr: torch.Tensor | None = None
    """Label names only: recall (share of the label's images fired on)."""

    def name_of(self, latent: int) -> str | None:
        """The latent's best name (None when it has none)."""
        c = int(self.concept_sr[latent, 0])
        return None if c < 0 else self.concepts[c]

    def summary(self) -> dict[str, Any]:
        """SAE-level figures: latents named, distinct names, median AUROC, share with AUROC >= 0.75."""
        named = self.concept_sr[:, 0] >= 0
        auroc = self.auroc_s[named & ~torch.isnan(self.auroc_s)].double()
        return {
            "latents": int(self.concept_sr.shape[0]),
            "named": int(named.sum()),
            "distinct_names": int(torch.unique(self.concept_sr[named, 0]).numel()),
            "median_auroc": float(auroc.median()) if len(auroc) else None,
            "auroc_at_least_0_75": float((auroc >= 0.75).double().mean()) if len(auroc) else None,
        }

    def to_json(self) -> dict[str, Any]:
        """The names.json document (see docs/analysis.md)."""
        concept, score = self.concept_sr.tolist(), self.score_sr.tolist()
        auroc, naming, heldout = (
            self.auroc_s.tolist(),
            self.naming_fires_s.tolist(),
            self.heldout_fires_s.tolist(),
        )
        labelled = self.precision_sr is not None and self.recall_sr is not None
        precision = self.precision_sr[:, 0].tolist() if self.precision_sr is not None else []
        recall = self.recall_sr[:, 0].tolist() if self.recall_sr is not None else []
        latents = []
        for j, (names_r, scores_r) in enumerate(zip(concept, score, strict=True)):
            name = self.concepts[names_r[0]] if names_r[0] >= 0 else None
            entry: dict[str, Any] = {
                "latent": j, "name": name, "score": _num(scores_r[0]), "auroc": _num(auroc[j]),
                "fires_naming": int(naming[j]), "fires_heldout": int(heldout[j]),
            }  # fmt: skip
            if labelled and name is not None:
                entry["precision"], entry["recall"] = _num(precision[j]), _num(recall[j])
            entry["runner_up"] = [
                {"name": self.concepts[c], "score": _num(v)}
                for c, v in zip(names_r[1:], scores_r[1:], strict=True)
                if c >= 0
            ]
            latents.append(entry)
        return {
            "format": NAMES_FORMAT,
            "version": NAMES_VERSION,
            "method": self.method,
            **self.context,
            "split": self.split,
            "summary": self.summary(),
            "latents": latents,
        }


def name_latents(
    sae: SAE,
    store: ActivationStoreReader,
    *,
    namer: str | ImageTextNamer | Any = None,
    concepts: str | Path | list[str] | Concepts | None = None,
    images: Any = None,
    labels: np.ndarray | None = None,
    label_names: list[str] | None = None,
    similarity: str = SIMILARITIES[0],
    rerank: int = 3,
    by: str = "max",
    top_k: int = 50,
    runner_ups: int = 5,
    max_images: int | None = 5000,
    heldout_fraction: float = 0.2,
    seed: int = 0,
    templates: tuple[str, ...] | None = None,
    batch_size: int = 4096,
    image_batch_size: int = 64,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    progress: bool = True,
    patch_labels: PatchLabels | None = None,
) -> LatentNames:
    """Name every latent of ``sae`` on the images of ``store`` (see the module docstring).

    ``namer``: an image-text model id or object (or an :class:`ImageTextNamer`); None names by labels.
    ``concepts``: a file, ``"labels"``, ``"builtin:general"`` / ``"builtin:shapes"`` or a list (see
    :func:`~vision_sae_lens.analysis.concepts.load_concepts`). ``rerank``: the best this many names by
    ``similarity`` are re-ordered by how well each detects where the latent fires on the naming images
    (1: the similarity alone decides). ``images``: the store's images (default:
    re-opened from its description, as the browser does). ``labels``: ``(n_images,)`` ints (-1 unlabelled)
    or ``(n_images, L)`` bool with ``label_names`` (default: the store's). ``by``: rank a latent's images by
    its ``max`` or ``mean`` activation over their tokens; ``top_k`` images name it; ``runner_ups`` more
    names are kept. ``max_images``: probe images drawn from the store (None: all), ``heldout_fraction``
    of them measure the names. ``budget_bytes`` bounds each working tensor (see ``naming_scores``).
    ``patch_labels``: where per-patch masks exist, ``patch_labels(image)`` gives an image's
    ``(n_patches, L)`` bool masks (``label_names``: one per column), and latents are named by the mask
    their firing patches match with the best F1, measured on held-out patches
    (:mod:`~vision_sae_lens.analysis.naming_patches`).
    """
    if by not in ("max", "mean"):
        raise ConfigError(f"by must be 'max' or 'mean', got {by!r}")
    if top_k < 1 or runner_ups < 0 or rerank < 1:
        raise ConfigError(
            f"top_k and rerank must be >= 1 and runner_ups >= 0, got {top_k}, {rerank} and {runner_ups}"
        )
    check_sae_matches_store(sae, store)
    n_images = int(store.n_images)
    mask_names = None
    if patch_labels is not None:
        if namer is not None or labels is not None or not label_names:
            raise ConfigError(
                "patch_labels names latents by per-patch masks: pass label_names (one per mask column), "
                "and neither a namer nor image labels"
            )
        mask_names, label_names = list(label_names), None  # the store's labels still stratify the split
    if labels is None and store.labels is not None:
        labels, label_names = store.labels, label_names or store.label_names
    table = None if labels is None else LabelTable(labels, label_names, n_images)
    vocab: Concepts | None = None
    if namer is not None:
        vocab = load_concepts(
            concepts if concepts is not None else "builtin:general",
            label_names=table.names if table is not None else None,
        )
    elif table is None:
        raise ConfigError(
            "naming by labels needs labels, and this store has none: pass a namer (an image-text model such as "
            "open_clip:ViT-B-16/openai) with concepts, or labels=..."
        )
    split = split_probe(
        n_images, labels=None if table is None else table.single, max_images=max_images,
        heldout_fraction=heldout_fraction, seed=seed,
    )  # fmt: skip
    source = _image_source(store, images) if namer is not None else None
    text_namer = _as_namer(namer, templates) if namer is not None else None  # bad ids fail before the scan
    probe_images = np.concatenate([split.naming, split.heldout])
    view = store if len(probe_images) == n_images else StoreImages(store, probe_images)
    collector = ProbeCollector(
        int(sae.cfg.d_sae),
        split,
        k=top_k,
        by=by,
        labels=table if namer is None and mask_names is None else None,
    )
    consumers: list[Any] = [collector]
    if patch_labels is not None and mask_names is not None:
        lay = store.layout
        consumers.append(PatchLabelCounts(
            int(sae.cfg.d_sae), split, patch_labels, n_labels=len(mask_names), n_prefix=lay.n_prefix,
            n_patches=lay.n_patches,
        ))  # fmt: skip
    scan(sae, view, consumers, batch_size=batch_size, progress=progress)
    heldout_fires = torch.cat(
        [collector.heldout_fires.get(slice(a, a + 4096)).sum(0) for a in range(0, int(sae.cfg.d_sae), 4096)]
    )
    common: dict[str, Any] = dict(
        naming_fires_s=collector.naming_fires_s, heldout_fires_s=heldout_fires,
        split=split.describe(n_images), context=_context(sae, store, vocab),
    )  # fmt: skip
    if text_namer is not None and vocab is not None:
        concept_sr, score_sr, auroc_s = _name_with_text(
            text_namer, source, vocab, collector, split, similarity=similarity, n_best=max(runner_ups + 1, rerank),
            rerank=rerank, image_batch_size=image_batch_size, budget_bytes=budget_bytes, progress=progress,
        )  # fmt: skip
        concept_sr, score_sr = concept_sr[:, : runner_ups + 1], score_sr[:, : runner_ups + 1]
        method = {"kind": "image_text", "namer": text_namer.id, "similarity": similarity, "rerank": rerank,
                  "by": by, "top_k": top_k, "templates": list(text_namer.templates)}  # fmt: skip
        return LatentNames(vocab.names, concept_sr, score_sr, auroc_s, method=method, **common)
    if mask_names is not None:
        best = consumers[1].names(runner_ups + 1)
        method = {"kind": "labels", "level": "patch", "namer": None, "similarity": "best F1 of the patch mask",
                  "by": by, "top_k": top_k}  # fmt: skip
        common["context"]["concepts"] = {"source": "patch masks", "count": len(mask_names)}
        return LatentNames(
            mask_names, best["label_sr"], best["f1_sr"], best["auroc_s"], method=method,
            precision_sr=best["precision_sr"], recall_sr=best["recall_sr"], **common,
        )  # fmt: skip
    assert table is not None  # checked above
    return _name_with_labels(
        collector,
        split,
        table,
        n_best=runner_ups + 1,
        by=by,
        top_k=top_k,
        budget_bytes=budget_bytes,
        **common,
    )


def check_sae_matches_store(sae: SAE, store: ActivationStoreReader) -> None:
    """Raise SAEMismatchError when the SAE was not trained on the store's backbone, site and width."""
    from vision_sae_lens.metadata import vision_facts_of

    site = sae.cfg.metadata.hook_name
    facts = vision_facts_of(sae)
    problems = []
    if facts is not None and facts.backbone and facts.backbone != store.backbone_id:
        problems.append(
            f"the SAE was trained on {facts.backbone!r} activations, the store holds {store.backbone_id!r}"
        )
    if site not in store.sites:
        problems.append(f"the SAE reads {site!r}, the store holds {list(store.sites)}")
    elif int(store.site_dim(site)) != int(sae.cfg.d_in):
        problems.append(
            f"the SAE reads d_in={sae.cfg.d_in}, the store's {site} rows have width {store.site_dim(site)}"
        )
    if problems:
        raise SAEMismatchError(
            "the SAE does not match the store: "
            + "; ".join(problems)
            + ". Name it on a store recorded from its "
            "backbone and site (vision-sae-lens cache ...)."
        )


# ------------------------------------------------------------------------------------ helpers
def _name_with_text(
    namer: ImageTextNamer, source: Any, vocab: Concepts, collector: ProbeCollector, probe: ProbeSplit, *,
    similarity: str, n_best: int, rerank: int, image_batch_size: int, budget_bytes: int, progress: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    text_ce = namer.text_embeddings(vocab.names, progress=progress)
    naming_ne = namer.image_embeddings(source, probe.naming, batch_size=image_batch_size, progress=progress)
    held_he = namer.image_embeddings(source, probe.heldout, batch_size=image_batch_size, progress=progress)
    top_image, top_value = collector.top_naming_images()
    score_sr, concept_sr = rank_concepts(
        top_image, top_value, naming_ne, text_ce, similarity=similarity, n_best=n_best,
        budget_bytes=budget_bytes, progress=progress,
    )  # fmt: skip
    if rerank > 1:
        # A seeded random subset of the naming images is enough to order a few names (and sorts less).
        rng = np.random.default_rng(probe.seed + 2)
        pick = torch.from_numpy(np.sort(rng.permutation(len(probe.naming))[:RERANK_IMAGES]))
        score_sr, concept_sr, _ = rerank_by_detection(
            score_sr, concept_sr, naming_ne[pick], text_ce, lambda sl: collector.naming_fires.get(sl)[pick],
            shortlist=rerank, budget_bytes=budget_bytes,
        )  # fmt: skip
    best_s = concept_sr[:, 0]
    auroc = _detection_auroc(
        lambda a, b: held_he @ text_ce[best_s[a:b].clamp(min=0)].T, collector, budget_bytes
    )
    auroc[best_s < 0] = math.nan
    return concept_sr, score_sr, auroc


def _detection_auroc(
    scores: Callable[[int, int], torch.Tensor], collector: ProbeCollector, budget_bytes: int
) -> torch.Tensor:
    """``(d_sae,)`` AUROC of ``scores(a, b)`` (held-out images x latents a..b-1) for where each latent fires."""
    d_sae = collector.d_sae
    step = max(1, budget_bytes // (AUROC_BYTES * max(collector.heldout_fires.n_images, 1)))
    return torch.cat(
        [auroc_columns(scores(a, min(a + step, d_sae)), collector.heldout_fires.get(slice(a, a + step)))
         for a in range(0, d_sae, step)]
    )  # fmt: skip


def _name_with_labels(
    collector: ProbeCollector, probe: ProbeSplit, table: LabelTable, *, n_best: int, by: str, top_k: int,
    budget_bytes: int, **common: Any,
) -> LatentNames:  # fmt: skip
    per_label = torch.from_numpy(table.rows(probe.naming).sum(0).astype(np.int64))
    best = best_f1_labels(collector.label_counts_sl, collector.naming_fires_s, per_label, n_best=n_best)
    label_s = best["label_sr"][:, 0]
    held_labels = torch.from_numpy(table.rows(probe.heldout).astype(np.float32))
    auroc = _detection_auroc(lambda a, b: held_labels[:, label_s[a:b].clamp(min=0)], collector, budget_bytes)
    auroc[label_s < 0] = math.nan
    method = {"kind": "labels", "level": "image", "namer": None, "similarity": "best F1 of the label", "by": by,
              "top_k": top_k}  # fmt: skip
    return LatentNames(
        table.names, best["label_sr"], best["f1_sr"], auroc, method=method, precision_sr=best["precision_sr"],
        recall_sr=best["recall_sr"], **common,
    )  # fmt: skip


def _as_namer(namer: Any, templates: tuple[str, ...] | None) -> ImageTextNamer:
    from vision_sae_lens.analysis.namer import DEFAULT_TEMPLATES, ImageTextNamer

    if isinstance(namer, ImageTextNamer):
        return namer
    return ImageTextNamer(namer, templates=templates or DEFAULT_TEMPLATES)


def _image_source(store: ActivationStoreReader, images: Any) -> Any:
    from vision_sae_lens.analysis.store_images import store_images

    source, why = store_images(store, images)
    if source is None:
        raise ImageInputError(
            f"naming with an image-text model needs the store's images: {why}; pass images=..."
        )
    if len(source) < int(store.n_images):
        raise ImageInputError(f"{len(source)} images given for a store of {store.n_images} images")
    return source


def _context(sae: SAE, store: ActivationStoreReader, vocab: Concepts | None) -> dict[str, Any]:
    from vision_sae_lens.backbones.recorded import weights_sha256
    from vision_sae_lens.metadata import vision_facts_of

    facts = vision_facts_of(sae)
    return {
        "sae": {"hook_name": sae.cfg.metadata.hook_name, "d_sae": int(sae.cfg.d_sae),
                "architecture": sae.cfg.architecture(), "backbone": facts.backbone if facts else None,
                "weights_sha256": weights_sha256(sae)},
        "store": {"backbone": store.backbone_id, "fingerprint": store.fingerprint, "images": int(store.n_images),
                  "dataset": dict(store.dataset or {})},
        "concepts": vocab.describe() if vocab is not None else {"source": "labels"},
    }  # fmt: skip


def _num(v: Any) -> float | None:
    x = float(v)
    return None if math.isnan(x) or math.isinf(x) else round(x, 6)


__all__ = ["LatentNames", "check_sae_matches_store", "name_latents", "read_names", "write_names"]
