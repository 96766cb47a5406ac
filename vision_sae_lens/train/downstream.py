"""The downstream metric: splice the SAE into the backbone and see how much behaviour survives.

For each image batch the model runs four times: clean, with the SAE spliced in at its site
(``run_with_saes``), with the site's SAE tokens zeroed, and with them replaced by their mean
activation. The metric follows the model's own ``output_kind`` (decided by the backbone adapter from the
model's metadata, never from a head's shape): a classifier (``logits``) is compared on its logits
(top-1 agreement with the clean model, KL of the clean distribution to the other, logit difference
of the clean top class, top-1 accuracy when the images have labels); an embedding model
(``embedding``: CLIP, SigLIP, DINOv2 towers) on its embedding (cosine similarity to the clean one
and, with labels, nearest-prototype accuracy: each class's prototype is the mean normalised clean
embedding of its images) and zero-shot accuracy through the model's text tower (CLIP, SigLIP: the
class names in prompt templates, embedded once by
:func:`vision_sae_lens.backbones.text_tower.class_text_embeddings`; an image's class is the prompt
embedding closest in cosine; null with ``zero_shot_reason`` when there is no text tower, no class
names, or the text tower cannot be shown to match the image tower). ``fraction_recovered`` puts
the SAE between zero-ablation (0) and the clean model (1): ``(D_zero - D_sae) / D_zero`` with D
the KL (classifier) or ``1 - cosine`` (embedding), the vision analogue of SAELens' "CE loss
recovered". Above 1 it is noise (the SAE cannot beat the clean model): ``recovered_above_one``
flags it.
The images are a seeded random, label-stratified draw of ``n_images``, never the first ones.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import torch
import torch.nn.functional as F
from sae_lens import SAE

from vision_sae_lens.errors import ConfigError
from vision_sae_lens.splice import sae_token_mask

if TYPE_CHECKING:
    from PIL import Image

    from vision_sae_lens.backbones import HookedSAEViT
    from vision_sae_lens.compat import HookPoint
    from vision_sae_lens.contracts import ImageSource

DownstreamImages: TypeAlias = (
    "torch.Tensor | Sequence[Image.Image | tuple[Image.Image, int | None]] | ImageSource"
)
"""Images for the downstream metric: uint8 / preprocessed pixels, a list of images or of ``(image, label)``
pairs, or an image source (``data.open_images``)."""

logger = logging.getLogger(__name__)

# Class text embeddings per model and class list: a sweep evaluates many SAEs on one backbone, and the
# text tower (rebuilt for open_clip) is built once, its failure logged once. Weak keys: no model is kept alive.
_TEXT_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple[str, ...], tuple[Any, str | None]]] = (
    weakref.WeakKeyDictionary()
)


@torch.no_grad()
def measure_downstream(
    model: HookedSAEViT,
    sae: SAE,
    images: DownstreamImages,
    *,
    mean_d: torch.Tensor | None = None,
    n_images: int = 64,
    batch_size: int = 32,
    use_error_term: bool = False,
    seed: int = 0,
    text_embeddings: torch.Tensor | Literal["auto"] | None = "auto",
) -> dict[str, Any]:
    """Spliced-SAE vs clean model on ``images`` (a pixel tensor, a list of images or an ImageSource).

    A labelled ImageSource (``(image, label)`` items) adds ``accuracy`` for the clean model
    (``clean_accuracy``), the spliced one and both ablations. ``mean_d`` is the site's mean activation for mean-ablation (from the store); without it the mean
    over these images' own activations is used. ``use_error_term=True`` splices the SAE with its
    error added back (the output must then equal the clean model's).

    ``text_embeddings`` (embedding models): (classes, d_embed) class text embeddings, class ``i`` being
    label ``i``, for ``zero_shot_accuracy``; ``"auto"`` builds them from the images' ``label_names``
    with the model's text tower (:func:`zero_shot_text`); None skips zero-shot.
    """
    site = sae.cfg.metadata.hook_name
    model.check_sae(sae)
    kind = "classifier" if model.output_kind == "logits" else "embedding"
    outs: dict[str, list[torch.Tensor]] = {"clean": [], "sae": [], "zero": [], "mean": []}
    labels: list[int | None] = []
    picked = _pick_images(images, n_images, seed)
    for pixels, batch_labels in _pixel_batches(model, images, picked, batch_size):
        labels += batch_labels
        clean_out = model.run_with_cache(pixels, names_filter=[site])
        clean, acts = model.output_tensor(clean_out[0]), clean_out[1][site]
        mask_t = _mask(sae, acts)
        fill_d = mean_d if mean_d is not None else _masked_mean(acts, mask_t)
        outs["clean"].append(clean.float().cpu())
        spliced = model.run_with_saes(pixels, saes=[sae], use_error_term=use_error_term)
        outs["sae"].append(model.output_tensor(spliced).float().cpu())
        for name, value in (("zero", torch.zeros_like(fill_d)), ("mean", fill_d)):
            hook = _replace_hook(mask_t, value.to(acts.device, acts.dtype))
            ablated = model.run_with_hooks(pixels, fwd_hooks=[(site, hook)])
            outs[name].append(model.output_tensor(ablated).float().cpu())
    clean, sae_out, zero, mean = (torch.cat(outs[k]) for k in ("clean", "sae", "zero", "mean"))
    labels_n = torch.tensor(labels) if labels and None not in labels else None
    protos = _prototypes(clean, labels_n) if kind == "embedding" and labels_n is not None else None
    text_cd, zs_reason, templates = _zero_shot_setup(model, images, kind, labels_n, text_embeddings)
    if text_cd is not None:
        _check_text(text_cd, clean, labels_n)
    res_sae, res_zero, res_mean = (
        _compare(kind, clean, o, labels_n, protos, text_cd) for o in (sae_out, zero, mean)
    )
    div = "kl" if kind == "classifier" else "one_minus_cosine"
    recovered = _recovered(res_zero[div], res_sae[div])
    return {
        "kind": kind,
        "n_images": int(clean.shape[0]),
        "images": {"method": "seeded random images, stratified by label when labelled", "seed": seed},
        "clean_accuracy": _accuracy(kind, clean, labels_n, protos),
        "accuracy_metric": None
        if labels_n is None
        else ("top-1" if kind == "classifier" else "nearest prototype"),
        "clean_zero_shot_accuracy": _zero_shot_accuracy(clean, labels_n, text_cd),
        "zero_shot_reason": zs_reason,
        "zero_shot_templates": templates,
        "use_error_term": use_error_term,
        "fraction_recovered": recovered,
        "recovered_above_one": recovered is not None and recovered > 1.0,
        "fraction_recovered_vs_mean": _recovered(res_mean[div], res_sae[div]),
        **res_sae,
        "zero_ablation": res_zero,
        "mean_ablation": res_mean,
    }


def _compare(
    kind: str,
    clean: torch.Tensor,
    other: torch.Tensor,
    labels_n: torch.Tensor | None,
    protos_cd: torch.Tensor | None,
    text_cd: torch.Tensor | None,
) -> dict[str, float | None]:
    cos = F.cosine_similarity(clean.flatten(1), other.flatten(1), dim=-1).mean().item()
    acc = _accuracy(kind, other, labels_n, protos_cd)
    zero_shot = _zero_shot_accuracy(other, labels_n, text_cd)
    if kind != "classifier":
        return {
            "top1_agreement": None,
            "kl": None,
            "logit_diff": None,
            "cosine": cos,
            "one_minus_cosine": max(0.0, 1.0 - cos),
            "accuracy": acc,
            "zero_shot_accuracy": zero_shot,
        }
    logp, logq = clean.log_softmax(-1), other.log_softmax(-1)
    kl = (logp.exp() * (logp - logq)).sum(-1).mean().item()
    top_n = clean.argmax(-1)
    top1 = (top_n == other.argmax(-1)).float().mean().item()
    # Logit difference of the clean top class over the runner-up, as the other run sees them.
    runner_n = clean.topk(2, dim=-1).indices[:, 1] if clean.shape[-1] > 1 else top_n
    rows = torch.arange(len(top_n))
    diff = (other[rows, top_n] - other[rows, runner_n]).mean().item()
    return {
        "top1_agreement": top1,
        "kl": max(0.0, kl),
        "logit_diff": diff,
        "cosine": cos,
        "accuracy": acc,
        "zero_shot_accuracy": zero_shot,
    }


def _prototypes(clean_nd: torch.Tensor, labels_n: torch.Tensor) -> torch.Tensor:
    """(classes, d) mean normalised clean embedding per label (zero rows for absent labels)."""
    unit = F.normalize(clean_nd.flatten(1), dim=-1)
    protos = torch.zeros(int(labels_n.max()) + 1, unit.shape[1])
    protos.index_add_(0, labels_n, unit)
    return F.normalize(protos, dim=-1)


def _accuracy(
    kind: str, out: torch.Tensor, labels_n: torch.Tensor | None, protos_cd: torch.Tensor | None
) -> float | None:
    if labels_n is None:
        return None
    if kind == "classifier":
        return (out.argmax(-1).cpu() == labels_n).float().mean().item()
    if protos_cd is None:
        return None
    pred = (F.normalize(out.flatten(1), dim=-1) @ protos_cd.T).argmax(-1)
    return (pred.cpu() == labels_n).float().mean().item()


def zero_shot_text(model: HookedSAEViT, images: DownstreamImages) -> tuple[torch.Tensor | None, str | None]:
    """(class text embeddings for ``images.label_names`` through ``model``'s text tower, None) or
    (None, the reason there are none). Built once per model and class list; a failure to build the
    text tower is logged once and reported as a reason, never raised."""
    names = _label_names(images)
    if not names:
        return None, "the images have no label_names to put into prompts"
    from vision_sae_lens.backbones.text_tower import class_text_embeddings

    per_model = _TEXT_CACHE.setdefault(model, {})
    key = tuple(str(n) for n in names)
    if key not in per_model:
        try:
            text_cd = class_text_embeddings(model, list(key))
            reason = None if text_cd is not None else f"{model.backbone_id} has no text tower"
        except Exception as exc:
            # Any failure means "not available" (offline tokenizer, random weights, an odd model): zero-shot
            # is an extra column of the report, never a reason to lose the evaluation.
            text_cd, reason = None, f"text tower not available: {str(exc).splitlines()[0][:300]}"
            logger.warning("zero-shot accuracy skipped for %s: %s", model.backbone_id, reason)
        per_model[key] = (None if text_cd is None else text_cd.cpu(), reason)
    return per_model[key]


def _zero_shot_setup(
    model: HookedSAEViT,
    images: DownstreamImages,
    kind: str,
    labels_n: torch.Tensor | None,
    text_embeddings: torch.Tensor | Literal["auto"] | None,
) -> tuple[torch.Tensor | None, str | None, list[str] | None]:
    """(class text embeddings, reason when there are none, prompt templates when built here)."""
    if kind == "classifier":
        return None, "a classifier is scored by top-1 accuracy on its own logits", None
    if labels_n is None:
        return None, "the images have no labels", None
    if text_embeddings is None:
        return None, "no class text embeddings given (text_embeddings=None)", None
    if isinstance(text_embeddings, str):
        if text_embeddings != "auto":
            raise ConfigError(f'text_embeddings must be a tensor, "auto" or None, got {text_embeddings!r}')
        text_cd, reason = zero_shot_text(model, images)
        if text_cd is None:
            return None, reason, None
        from vision_sae_lens.backbones.text_tower import zero_shot_prompts

        return text_cd, None, list(zero_shot_prompts(_label_names(images))[1])
    return F.normalize(text_embeddings.detach().float().cpu(), dim=-1), None, None


def _check_text(text_cd: torch.Tensor, clean: torch.Tensor, labels_n: torch.Tensor | None) -> None:
    if text_cd.dim() != 2 or text_cd.shape[1] != clean.flatten(1).shape[1]:
        raise ConfigError(
            f"text_embeddings must be (classes, {clean.flatten(1).shape[1]}) like the image embeddings, "
            f"got {tuple(text_cd.shape)}"
        )
    if labels_n is not None and int(labels_n.max()) >= text_cd.shape[0]:
        raise ConfigError(
            f"label {int(labels_n.max())} has no text embedding: text_embeddings holds {text_cd.shape[0]} classes"
        )


def _zero_shot_accuracy(
    out: torch.Tensor, labels_n: torch.Tensor | None, text_cd: torch.Tensor | None
) -> float | None:
    if labels_n is None or text_cd is None:
        return None
    pred = (F.normalize(out.flatten(1), dim=-1) @ text_cd.T).argmax(-1)
    return (pred == labels_n).float().mean().item()


def _recovered(ablated: float | None, spliced: float | None) -> float | None:
    if ablated is None or spliced is None:
        return None
    if ablated <= 1e-12:
        return None  # the site does not matter for the output: nothing to recover
    return (ablated - spliced) / ablated


def _mask(sae: SAE, acts: torch.Tensor) -> torch.Tensor | None:
    """(tokens,) positions the SAE applies to (None: every position, or a site with no token axis)."""
    if acts.dim() < 3:
        return None
    mask = sae_token_mask(sae, acts.shape[1])
    return None if mask is None else mask.to(acts.device)


def _masked_mean(acts: torch.Tensor, mask_t: torch.Tensor | None) -> torch.Tensor:
    if acts.dim() < 3:
        return acts.float().mean(0)
    sel = acts if mask_t is None else acts[:, mask_t]
    return sel.float().reshape(-1, acts.shape[-1]).mean(0)


def _replace_hook(mask_t: torch.Tensor | None, value_d: torch.Tensor):
    def hook(acts: torch.Tensor, hook: HookPoint) -> torch.Tensor:  # noqa: ARG001
        out = acts.clone()
        if mask_t is None:
            out[...] = value_d
        else:
            out[:, mask_t] = value_d
        return out

    return hook


def _pick_images(images: DownstreamImages, n_images: int, seed: int) -> list[int]:
    """Indices of a seeded random draw of ``n_images`` (stratified by label when the source has labels)."""
    from vision_sae_lens.data.subsets import source_labels, subset_indices

    total = images.shape[0] if isinstance(images, torch.Tensor) else len(images)
    n = min(n_images, total)
    if n >= total:
        return list(range(total))
    # Only an image source knows its labels before its images are read; a tensor or a list does not.
    labels = None if isinstance(images, (torch.Tensor, Sequence)) else source_labels(images)
    return subset_indices(total, n, labels=labels, seed=seed).tolist()


def _label_names(images: DownstreamImages) -> list[str]:
    names = None if isinstance(images, (torch.Tensor, Sequence)) else images.label_names
    return list(names or [])


def _pixel_batches(
    model: HookedSAEViT, images: DownstreamImages, picked: list[int], batch_size: int
) -> Iterator[tuple[torch.Tensor, list[int | None]]]:
    """(preprocessed pixels, labels) batches of the ``picked`` images (labels None if unknown)."""
    for i in range(0, len(picked), batch_size):
        idx = picked[i : i + batch_size]
        if isinstance(images, torch.Tensor):
            yield model.preprocess(images[idx]), [None] * len(idx)
            continue
        chunk = [images[j] for j in idx]
        # An ImageSource yields (image, label) pairs.
        labels = [c[1] if isinstance(c, tuple) else None for c in chunk]
        yield model.preprocess([c[0] if isinstance(c, tuple) else c for c in chunk]), labels
