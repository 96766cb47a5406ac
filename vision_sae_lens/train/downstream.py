"""The downstream metric: splice the SAE into the backbone and see how much behaviour survives.

For each image batch the model runs four times: clean, with the SAE spliced in at its site
(``run_with_saes``), with the site's SAE tokens zeroed, and with them replaced by their mean
activation. A classifier is compared on its logits (top-1 agreement with the clean model, KL of
the clean distribution to the other, and top-1 accuracy when the images come with labels), an
encoder on its final embedding (cosine similarity).
``fraction_recovered`` puts the SAE between zero-ablation (0) and the clean model (1):
``(D_zero - D_sae) / D_zero`` with D the KL (classifier) or ``1 - cosine`` (encoder), the
vision analogue of SAELens' "CE loss recovered".
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from sae_lens import SAE

from vision_sae_lens.splice import sae_token_mask


@torch.no_grad()
def measure_downstream(
    model: Any,
    sae: SAE,
    images: Any,
    *,
    mean_d: torch.Tensor | None = None,
    n_images: int = 64,
    batch_size: int = 32,
    use_error_term: bool = False,
) -> dict[str, Any]:
    """Spliced-SAE vs clean model on ``images`` (a pixel tensor, a list of images or an ImageSource).

    A labelled ImageSource (``(image, label)`` items) adds ``accuracy`` for the clean model
    (``clean_accuracy``), the spliced one and both ablations. ``mean_d`` is the site's mean activation for mean-ablation (from the store); without it the mean
    over these images' own activations is used. ``use_error_term=True`` splices the SAE with its
    error added back (the output must then equal the clean model's).
    """
    site = sae.cfg.metadata.hook_name
    model.check_sae(sae)
    kind = "classifier" if model.output_kind == "logits" else "encoder"
    outs: dict[str, list[torch.Tensor]] = {"clean": [], "sae": [], "zero": [], "mean": []}
    labels: list[int | None] = []
    for pixels, batch_labels in _pixel_batches(model, images, n_images, batch_size):
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
    labels_n = torch.tensor(labels) if labels and None not in labels and kind == "classifier" else None
    res_sae, res_zero, res_mean = (_compare(kind, clean, o, labels_n) for o in (sae_out, zero, mean))
    div = "kl" if kind == "classifier" else "one_minus_cosine"
    return {
        "kind": kind,
        "n_images": int(clean.shape[0]),
        "clean_accuracy": _accuracy(clean, labels_n),
        "use_error_term": use_error_term,
        "fraction_recovered": _recovered(res_zero[div], res_sae[div]),
        "fraction_recovered_vs_mean": _recovered(res_mean[div], res_sae[div]),
        **res_sae,
        "zero_ablation": res_zero,
        "mean_ablation": res_mean,
    }


def _compare(
    kind: str, clean: torch.Tensor, other: torch.Tensor, labels_n: torch.Tensor | None
) -> dict[str, float | None]:
    cos = F.cosine_similarity(clean.flatten(1), other.flatten(1), dim=-1).mean().item()
    if kind != "classifier":
        return {"top1_agreement": None, "kl": None, "cosine": cos, "one_minus_cosine": max(0.0, 1.0 - cos)}
    logp, logq = clean.log_softmax(-1), other.log_softmax(-1)
    kl = (logp.exp() * (logp - logq)).sum(-1).mean().item()
    top1 = (clean.argmax(-1) == other.argmax(-1)).float().mean().item()
    return {"top1_agreement": top1, "kl": max(0.0, kl), "cosine": cos, "accuracy": _accuracy(other, labels_n)}


def _accuracy(logits_nc: torch.Tensor, labels_n: torch.Tensor | None) -> float | None:
    if labels_n is None:
        return None
    return (logits_nc.argmax(-1).cpu() == labels_n).float().mean().item()


def _recovered(ablated: float, spliced: float) -> float | None:
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


def _pixel_batches(model: Any, images: Any, n_images: int, batch_size: int):
    """(preprocessed pixels, labels) batches of the first ``n_images`` images (labels None if unknown)."""
    if isinstance(images, torch.Tensor):
        items: Any = images[:n_images]
        for i in range(0, items.shape[0], batch_size):
            chunk = items[i : i + batch_size]
            yield model.preprocess(chunk), [None] * len(chunk)
        return
    n = min(n_images, len(images))
    for i in range(0, n, batch_size):
        chunk = [images[j] for j in range(i, min(n, i + batch_size))]
        # An ImageSource yields (image, label) pairs.
        labels = [c[1] if isinstance(c, tuple) else None for c in chunk]
        yield model.preprocess([c[0] if isinstance(c, tuple) else c for c in chunk]), labels
