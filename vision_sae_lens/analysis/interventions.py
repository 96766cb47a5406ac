"""Interventions on SAE latents inside the model: ablation, clamping, steering, and their effect.

The SAE is spliced at its site with the error term kept by default, so the site carries
``x - x_hat + decode(f')``: with no latent edited the model output is the clean output bit for bit,
and an edit changes the model only through the edited latents. Edits run as a hook on
``{site}.hook_sae_acts_post`` (SAELens' name) and touch only the chosen latents at the chosen
patches (default: every token the SAE covers). The result compares the edited output with the clean
run: logits/probabilities (KL, top-1 changes) for a classifier, cosine similarity for an embedding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from vision_sae_lens.analysis._common import check_latents, image_batches, sae_view
from vision_sae_lens.analysis.images import encode_images
from vision_sae_lens.errors import ConfigError, OutOfRangeError

if TYPE_CHECKING:
    from vision_sae_lens.backbones import HookedSAEViT
    from vision_sae_lens.compat import SAE

EditFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(latents_bts, token_mask_t) -> edited latents_bts."""


@dataclass
class InterventionResult:
    """Model outputs with and without an intervention, for the same images."""

    clean: torch.Tensor
    """(b, ...) output tensor of the unedited model (logits or embedding)."""
    edited: torch.Tensor
    """(b, ...) output tensor with the intervention."""
    output_kind: str
    """"logits" or "embedding"."""

    @property
    def delta(self) -> torch.Tensor:
        """edited - clean."""
        return self.edited - self.clean

    def metrics(self) -> dict[str, Any]:
        """Per-image effect sizes (lists) and their means; logits get KL and top-1 changes, embeddings cosine."""
        clean, edited = self.clean.flatten(1).float(), self.edited.flatten(1).float()
        out: dict[str, Any] = {"max_abs_change": float(self.delta.abs().max())}
        if self.output_kind == "logits":
            logp, logq = F.log_softmax(clean, -1), F.log_softmax(edited, -1)
            kl_b = (logp.exp() * (logp - logq)).sum(-1)
            top_b = clean.argmax(-1)
            drop_b = logp.exp().gather(1, top_b[:, None]) - logq.exp().gather(1, top_b[:, None])
            out.update(
                kl=kl_b.tolist(),
                mean_kl=float(kl_b.mean()),
                clean_top1=top_b.tolist(),
                edited_top1=edited.argmax(-1).tolist(),
                top1_changed=float((edited.argmax(-1) != top_b).float().mean()),
                top1_prob_drop=drop_b.squeeze(1).tolist(),
            )
        else:
            cos_b = F.cosine_similarity(clean, edited, dim=-1)
            out.update(cosine=cos_b.tolist(), mean_cosine=float(cos_b.mean()))
        return out


def ablate(
    model: HookedSAEViT,
    sae: SAE,
    images: Any,
    *,
    latents: int | Sequence[int],
    mode: str = "zero",
    value: float | None = None,
    means: Any = None,
    patches: Sequence[int] | torch.Tensor | None = None,
    keep_error: bool = True,
    batch_size: int = 32,
) -> InterventionResult:
    """Set ``latents`` to zero (``mode="zero"``), their mean (``"mean"``) or ``value`` (``"clamp"``).

    ``means``: a (d_sae,) tensor or :class:`FeatureStats` (its ``mean_activation``); default: the mean
    over these images' covered tokens. ``patches``: patch indices (or a (grid_h, grid_w) bool mask)
    to edit; default all tokens the SAE covers. ``keep_error=False`` replaces the site by the SAE's
    reconstruction (the edited latents and the reconstruction error both change the model).
    """
    idx = check_latents(sae, latents)
    if mode == "zero":
        target = torch.zeros(len(idx))
    elif mode == "clamp":
        if value is None:
            raise ConfigError("mode='clamp' needs value=... (the activation to hold the latents at)")
        target = torch.full((len(idx),), float(value))
    elif mode == "mean":
        target = _latent_means(model, sae, images, means, batch_size)[idx]
    else:
        raise ConfigError(f"unknown mode {mode!r}; choose 'zero', 'mean' or 'clamp'")

    def edit(acts_bts: torch.Tensor, mask_t: torch.Tensor) -> torch.Tensor:
        tok, lat = mask_t.nonzero().flatten(), idx.to(acts_bts.device)
        acts_bts[:, tok[:, None], lat[None, :]] = target.to(acts_bts)
        return acts_bts

    return edit_latents(
        model, sae, images, edit, patches=patches, keep_error=keep_error, batch_size=batch_size
    )


def steer(
    model: HookedSAEViT,
    sae: SAE,
    images: Any,
    *,
    latent: int,
    scale: float,
    max_activation: Any = None,
    patches: Sequence[int] | torch.Tensor | None = None,
    keep_error: bool = True,
    batch_size: int = 32,
) -> InterventionResult:
    """Add ``scale`` x the latent's max activation to ``latent`` (at ``patches``, default all covered tokens).

    ``max_activation``: a float or :class:`FeatureStats` (its ``max_activation``); default: the max over
    these images. Adding to a latent moves the site along that latent's decoder direction.
    """
    idx = int(check_latents(sae, latent)[0])
    if hasattr(max_activation, "max_activation"):
        max_activation = float(max_activation.max_activation[idx])
    if max_activation is None:
        feats = encode_images(model, sae, images, batch_size=batch_size, progress=False)
        max_activation = float(feats.tokens_bts()[..., idx].max())
        if max_activation <= 0:
            raise ConfigError(
                f"latent {idx} never fires on these images, so its max activation is 0; "
                "pass max_activation=... (e.g. from feature_stats over a dataset)."
            )
    delta = float(scale) * float(max_activation)

    def edit(acts_bts: torch.Tensor, mask_t: torch.Tensor) -> torch.Tensor:
        acts_bts[:, mask_t, idx] += delta
        return acts_bts

    return edit_latents(
        model, sae, images, edit, patches=patches, keep_error=keep_error, batch_size=batch_size
    )


def edit_latents(
    model: HookedSAEViT,
    sae: SAE,
    images: Any,
    edit: EditFn,
    *,
    patches: Sequence[int] | torch.Tensor | None = None,
    keep_error: bool = True,
    batch_size: int = 32,
) -> InterventionResult:
    """Run images clean and with ``edit(latents_bts, token_mask_t)`` applied to the SAE's latents.

    The general form behind :func:`ablate` and :func:`steer`; ``token_mask_t`` marks the tokens chosen
    by ``patches`` (intersected with those the SAE covers).
    """
    view = sae_view(sae, model)
    mask_t = _token_mask(view, patches).to(model.device)
    hook_name = f"{view.site}.hook_sae_acts_post"

    def hook(acts_bts: torch.Tensor, hook: Any) -> torch.Tensor:
        return edit(acts_bts.clone(), mask_t)

    clean, edited = [], []
    with torch.no_grad():
        for _, batch, _ in image_batches(images, batch_size):
            pixels = model.preprocess(batch)
            clean.append(model.output_tensor(model(pixels)))
            with model.saes(saes=[sae], use_error_term=keep_error):
                out = model.run_with_hooks(pixels, fwd_hooks=[(hook_name, hook)])
            edited.append(model.output_tensor(out))
    return InterventionResult(torch.cat(clean), torch.cat(edited), model.output_kind)


def _token_mask(view: Any, patches: Any) -> torch.Tensor:
    """(tokens,) bool: covered tokens, restricted to ``patches`` when given."""
    lay = view.layout
    covered = lay.token_mask(view.tokens)
    if patches is None:
        return covered
    p = torch.as_tensor(patches)
    if p.dtype == torch.bool:
        if tuple(p.shape) not in (tuple(lay.grid), (lay.n_patches,)):
            raise ConfigError(f"a patch mask must be {lay.grid} or ({lay.n_patches},), got {tuple(p.shape)}")
        p = p.flatten().nonzero().flatten()
    p = p.long().flatten()
    if p.numel() and (int(p.min()) < 0 or int(p.max()) >= lay.n_patches):
        raise OutOfRangeError(f"patch indices must be in 0..{lay.n_patches - 1} for a {lay.grid} grid")
    chosen = torch.zeros(lay.n_tokens, dtype=torch.bool)
    chosen[p + lay.n_prefix] = True
    if not bool((chosen & covered).any()):
        raise ConfigError(f"none of the chosen patches is covered by this SAE (it covers {view.tokens})")
    return chosen & covered


def _latent_means(model: HookedSAEViT, sae: SAE, images: Any, means: Any, batch_size: int) -> torch.Tensor:
    if hasattr(means, "mean_activation"):
        means = means.mean_activation
    if means is not None:
        means = torch.as_tensor(means, dtype=torch.float32).flatten()
        if means.numel() != sae.cfg.d_sae:
            raise ConfigError(f"means has {means.numel()} entries, the SAE has d_sae={sae.cfg.d_sae}")
        return means
    feats = encode_images(model, sae, images, batch_size=batch_size, progress=False)
    return feats.tokens_bts().flatten(0, 1).float().mean(0)
