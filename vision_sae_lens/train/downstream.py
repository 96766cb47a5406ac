"""The downstream metric: splice the SAE into the backbone and see how much behaviour survives.

For each image batch the model runs four times: clean, with the SAE spliced in at its site
(``run_with_saes``), with the site's SAE tokens zeroed, and with them replaced by their mean
activation. The metric follows the model's own ``output_kind`` (decided by the backbone adapter from the
model's metadata, never from a head's shape): a classifier (``logits``) is compared on its logits
(top-1 agreement with the clean model, KL of the clean distribution to the other, logit difference
of the clean top class, top-1 accuracy when the images have labels); an embedding model
(``embedding``: CLIP, SigLIP, DINOv2 towers) on its embedding (cosine similarity to the clean one
and, with labels, nearest-prototype accuracy: each class's prototype is the mean normalised clean
embedding of its images). ``fraction_recovered`` puts the SAE between zero-ablation (0) and the
clean model (1): ``(D_zero - D_sae) / D_zero`` with D the KL (classifier) or ``1 - cosine``
(embedding), the vision analogue of SAELens' "CE loss recovered". Above 1 it is noise (the SAE
cannot beat the clean model): ``recovered_above_one`` flags it.
The images are a seeded random, label-stratified draw of ``n_images``, never the first ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from sae_lens import SAE

from vision_sae_lens.splice import sae_token_mask

if TYPE_CHECKING:
    from vision_sae_lens.backbones import HookedSAEViT


@torch.no_grad()
def measure_downstream(
    model: HookedSAEViT,
    sae: SAE,
    images: Any,
    *,
    mean_d: torch.Tensor | None = None,
    n_images: int = 64,
    batch_size: int = 32,
    use_error_term: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Spliced-SAE vs clean model on ``images`` (a pixel tensor, a list of images or an ImageSource).

    A labelled ImageSource (``(image, label)`` items) adds ``accuracy`` for the clean model
    (``clean_accuracy``), the spliced one and both ablations. ``mean_d`` is the site's mean activation for mean-ablation (from the store); without it the mean
    over these images' own activations is used. ``use_error_term=True`` splices the SAE with its
    error added back (the output must then equal the clean model's).
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
        outs["clean"].append(clean.float())
        spliced = model.run_with_saes(pixels, saes=[sae], use_error_term=use_error_term)
        outs["sae"].append(model.output_tensor(spliced).float())
        for name, value in (("zero", torch.zeros_like(fill_d)), ("mean", fill_d)):
            hook = _replace_hook(mask_t, value.to(acts.device, acts.dtype))
            ablated = model.run_with_hooks(pixels, fwd_hooks=[(site, hook)])
            outs[name].append(model.output_tensor(ablated).float())
    clean, sae_out, zero, mean = (torch.cat(outs[k]) for k in ("clean", "sae", "zero", "mean"))
    labels_n = torch.tensor(labels) if labels and None not in labels else None
    protos = _prototypes(clean, labels_n) if kind == "embedding" and labels_n is not None else None
    res_sae, res_zero, res_mean = (_compare(kind, clean, o, labels_n, protos) for o in (sae_out, zero, mean))
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
) -> dict[str, float | None]:
    cos = F.cosine_similarity(clean.flatten(1), other.flatten(1), dim=-1).mean().item()
    acc = _accuracy(kind, other, labels_n, protos_cd)
    if kind != "classifier":
        return {
            "top1_agreement": None,
            "kl": None,
            "logit_diff": None,
            "cosine": cos,
            "one_minus_cosine": max(0.0, 1.0 - cos),
            "accuracy": acc,
        }
    logp, logq = clean.log_softmax(-1), other.log_softmax(-1)
    kl = (logp.exp() * (logp - logq)).sum(-1).mean().item()
    top_n = clean.argmax(-1)
    top1 = (top_n == other.argmax(-1)).float().mean().item()
    # Logit difference of the clean top class over the runner-up, as the other run sees them.
    runner_n = clean.topk(2, dim=-1).indices[:, 1] if clean.shape[-1] > 1 else top_n
    rows = torch.arange(len(top_n))
    diff = (other[rows, top_n] - other[rows, runner_n]).mean().item()
    return {"top1_agreement": top1, "kl": max(0.0, kl), "logit_diff": diff, "cosine": cos, "accuracy": acc}


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
    def hook(acts: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001
        out = acts.clone()
        if mask_t is None:
            out[...] = value_d
        else:
            out[:, mask_t] = value_d
        return out

    return hook


def _pick_images(images: Any, n_images: int, seed: int) -> list[int]:
    """Indices of a seeded random draw of ``n_images`` (stratified by label when the source has labels)."""
    from vision_sae_lens.data.sources import source_labels, subset_indices

    total = images.shape[0] if isinstance(images, torch.Tensor) else len(images)
    n = min(n_images, total)
    if n >= total:
        return list(range(total))
    labels = None if isinstance(images, torch.Tensor) else source_labels(images)
    return subset_indices(total, n, labels=labels, seed=seed).tolist()


def _pixel_batches(model: HookedSAEViT, images: Any, picked: list[int], batch_size: int):
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
