"""SAEs in the forward pass of a hooked ViT, with SAELens' own API and semantics.

``add_sae``, ``run_with_saes``, ``run_with_cache_with_saes``, ``run_with_hooks_with_saes``, ``saes``,
``reset_saes`` and ``use_error_term`` are SAELens' ``HookedSAETransformer`` methods themselves
(borrowed, not copied), so an SAE behaves on images exactly as on text. What vision adds:

* validation before anything is attached: unknown site (with close names), d_in mismatch, a token
  layout that does not fit, and a warning when the SAE's metadata names another backbone;
* token selection: an SAE trained on patches only is applied to patches only. CLS and register
  tokens bypass it untouched, through SAELens' per-position bypass mask (``_SAEWrapper.set_token_mask``);
* ``exclude_special_tokens``: ``True`` bypasses the prefix tokens (CLS and registers, the image
  counterpart of BOS); a list bypasses those sequence positions;
* an exact error term: SAELens returns ``x_hat + (x - x_hat_clean)``, which differs from ``x`` by float
  rounding; :class:`ExactErrorSAEWrapper` returns ``x + (x_hat - x_hat_clean)``, the same sum, which is
  ``x`` bit for bit when no latent was edited. Gradients are SAELens' own: the error term is a constant,
  so they reach the site's input only through the reconstruction;
* an SAE in another dtype than the model is run in its own dtype and its output cast back to the model's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from vision_sae_lens.compat import SAE, SAEWrapper, borrowed, disable_sae_hooks, set_deep_attr
from vision_sae_lens.errors import BackboneMismatchWarning, SAEMismatchError
from vision_sae_lens.metadata import vision_facts_of

if TYPE_CHECKING:
    from vision_sae_lens.compat import HookedRootModule
    from vision_sae_lens.layout import TokenLayout

    _Host = HookedRootModule  # the class the mixin is combined with
else:
    _Host = object


class SAESpliceMixin(_Host):
    """SAELens' SAE splicing API for a ``HookedRootModule`` whose hook points can be swapped.

    The host keeps ``_acts_to_saes`` and ``_transcoder_output_hooks`` dicts (as HookedSAETransformer
    does), offers ``check_site``/``site_dim``/``layout``/``backbone_id``, and wraps its forward in
    :meth:`_sae_token_masks`.
    """

    # Provided by the host class (annotations only: nothing is set here).
    _acts_to_saes: dict[str, Any]
    backbone_id: str
    layout: TokenLayout
    check_site: Callable[[str], None]
    site_dim: Callable[[str], int | None]

    if TYPE_CHECKING:

        @property
        def device(self) -> torch.device: ...

    # Borrowed unchanged from SAELens: identical behaviour, one implementation.
    acts_to_saes = borrowed("acts_to_saes")
    _reset_sae = borrowed("_reset_sae")
    reset_saes = borrowed("reset_saes")
    saes = borrowed("saes")
    run_with_saes = borrowed("run_with_saes")
    run_with_cache_with_saes = borrowed("run_with_cache_with_saes")
    run_with_hooks_with_saes = borrowed("run_with_hooks_with_saes")

    def add_sae(
        self,
        sae: SAE[Any],
        use_error_term: bool | None = None,
        exclude_special_tokens: bool | list[int] = False,
    ) -> None:
        """Attach ``sae`` at its ``cfg.metadata.hook_name`` until :meth:`reset_saes` (SAELens semantics).

        With ``use_error_term=True`` the model output is unchanged (the SAE error is added back) while
        the SAE's latents are cached and editable. Tokens outside the SAE's ``metadata.tokens`` (e.g. CLS
        for a patches-only SAE) bypass it, and so do the positions ``exclude_special_tokens`` names
        (``True``: CLS and registers). Raises :class:`UnknownSiteError` or :class:`SAEMismatchError`
        instead of SAELens' warn-and-skip.
        """
        self.check_sae(sae)
        site = sae.cfg.metadata.hook_name
        self.special_token_positions(exclude_special_tokens, site=site)  # validate before attaching
        out_site = sae.cfg.metadata.hook_name_out
        if out_site not in (None, site):  # transcoders: SAELens' own path
            self.check_site(out_site)
            borrowed("add_sae")(self, sae, use_error_term, exclude_special_tokens)
            return
        wrapper = ExactErrorSAEWrapper(
            sae,
            use_error_term=sae.use_error_term if use_error_term is None else use_error_term,
            exclude_special_tokens=exclude_special_tokens,
        )
        self._acts_to_saes[site] = wrapper
        set_deep_attr(self, site, wrapper)
        self.setup()

    def check_sae(self, sae: SAE[Any]) -> None:
        """Raise a clear error when ``sae`` cannot be spliced into this model; warn on a backbone mismatch."""
        site = sae.cfg.metadata.hook_name
        if not site:
            raise SAEMismatchError(
                "the SAE has no cfg.metadata.hook_name; set it to a site of this model, "
                "e.g. sae.cfg.metadata.hook_name = 'blocks.0.hook_resid_post'."
            )
        self.check_site(site)
        dim = self.site_dim(site)
        if dim is not None and sae.cfg.d_in != dim:
            raise SAEMismatchError(
                f"the SAE reads d_in={sae.cfg.d_in} but {site} of {self.backbone_id} has width {dim}; "
                "use an SAE trained on this backbone and site."
            )
        sae_device = sae.W_dec.device
        if sae_device.type != self.device.type or (
            sae_device.index is not None and self.device.index is not None and sae_device != self.device
        ):
            raise SAEMismatchError(
                f"the SAE is on {sae_device} but the model is on {self.device}; move one of them, "
                f"e.g. sae.to({str(self.device)!r})."
            )
        facts = vision_facts_of(sae)
        if facts is None:
            return
        if facts.backbone and facts.backbone != self.backbone_id:
            warnings.warn(
                f"SAE metadata names backbone {facts.backbone!r} but it is spliced into "
                f"{self.backbone_id!r}. Silence with warnings.simplefilter('ignore', BackboneMismatchWarning).",
                BackboneMismatchWarning,
                stacklevel=3,
            )
        if facts.tokens != "all" and facts.layout.n_tokens != self.layout.n_tokens:
            raise SAEMismatchError(
                f"the SAE was trained on {facts.tokens} of a {facts.layout.grid} grid with "
                f"{facts.layout.n_prefix} prefix tokens ({facts.layout.n_tokens} tokens), but this model has "
                f"{self.layout.n_tokens} tokens; run the model at the SAE's image size "
                f"{tuple(facts.layout.image_size)}."
            )

    def special_token_positions(self, exclude: bool | list[int], *, site: str | None = None) -> list[int]:
        """Sequence positions ``exclude_special_tokens`` bypasses: ``True`` -> the prefix tokens (CLS and
        registers), a list -> those positions (negative counts from the end), ``False`` -> none."""
        if exclude is False or (isinstance(exclude, list) and not exclude):
            return []
        if site is not None and not _is_token_site(site):
            raise SAEMismatchError(
                f"exclude_special_tokens needs a site with a token axis at dim 1; {site} has none. "
                "Leave exclude_special_tokens=False for this SAE."
            )
        n_tokens = self.layout.n_tokens
        if exclude is True:
            return list(range(self.layout.n_prefix))
        if not isinstance(exclude, (list, tuple)) or not all(isinstance(p, int) for p in exclude):
            raise SAEMismatchError(
                f"exclude_special_tokens must be a bool or a list of token positions, got {exclude!r}"
            )
        bad = [p for p in exclude if not -n_tokens <= p < n_tokens]
        if bad:
            raise SAEMismatchError(
                f"exclude_special_tokens positions {bad} are outside 0..{n_tokens - 1} "
                f"({self.layout.n_prefix} prefix tokens + {self.layout.n_patches} patches)."
            )
        return sorted({p % n_tokens for p in exclude})

    @contextmanager
    def _sae_token_masks(self, batch_size: int) -> Iterator[None]:
        """For one forward: SAEs bypass the tokens outside their token selection and the positions
        their ``exclude_special_tokens`` names."""
        masked = []
        for site, wrapper in self._acts_to_saes.items():
            if not _is_token_site(site):
                continue
            bypass_t = torch.zeros(self.layout.n_tokens, dtype=torch.bool)
            facts = vision_facts_of(wrapper.sae)
            if facts is not None and facts.tokens != "all":
                bypass_t |= ~self.layout.token_mask(facts.tokens)
            bypass_t[self.special_token_positions(wrapper.exclude_special_tokens)] = True
            if not bypass_t.any():
                continue
            wrapper.set_token_mask(bypass_t.to(self.device).unsqueeze(0).expand(batch_size, -1))
            masked.append(wrapper)
        try:
            yield
        finally:
            for wrapper in masked:
                wrapper.set_token_mask(None)


class _ValueWithGradOf(torch.autograd.Function):
    """Forward: ``value`` exactly. Backward: the incoming gradient goes to ``grad_source`` unchanged.

    Lets the wrapper return ``x + (x_hat - x_hat_clean)`` (bit-exact ``x`` when nothing was edited) while
    differentiating like SAELens' ``x_hat + constant``."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor, grad_source: torch.Tensor) -> torch.Tensor:
        ctx.source_dtype = grad_source.dtype
        return value.view_as(value)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, grad.to(ctx.source_dtype)


class ExactErrorSAEWrapper(SAEWrapper):
    """SAELens' ``_SAEWrapper`` (same hooks, same cache names, same gradients) with an exact error term."""

    def forward(self, original_output: torch.Tensor) -> torch.Tensor:
        mask = self._token_mask
        if mask is not None:
            mask = mask.reshape(*mask.shape, *([1] * (original_output.dim() - mask.dim())))
        feature_acts = self.sae.encode(original_output)
        sae_out = self.sae.decode(feature_acts)
        if self.use_error_term:
            with torch.no_grad():
                with disable_sae_hooks(self.sae):
                    sae_out_clean = self.sae.decode(self.sae.encode(original_output))
                error = original_output - sae_out_clean
                if mask is not None:
                    error = torch.where(mask, torch.zeros_like(error), error)
                version = error._version  # bumped by any in-place edit, even under no_grad
                hooked_error = self.hook_sae_error(error)
                edited = hooked_error is not error or error._version != version
                if not edited:
                    # Same value as sae_out + error, but exactly original_output when no latent changed.
                    value = original_output + (sae_out.detach() - sae_out_clean)
            sae_out = sae_out + hooked_error if edited else _ValueWithGradOf.apply(value, sae_out)
        if mask is not None:
            sae_out = torch.where(mask, original_output, sae_out)
        return self.hook_sae_output(sae_out).to(original_output.dtype)


def _is_token_site(site: str) -> bool:
    """Sites with the token axis at dim 1; the pooled vector has none, attention scores and patterns
    are (batch, head, query, key)."""
    return site != "hook_pooled" and not site.endswith(("hook_attn_scores", "hook_pattern"))


def sae_token_mask(sae: SAE[Any], n_tokens: int) -> torch.Tensor | None:
    """Boolean (tokens,) mask of the positions an SAE applies to, or None for all positions."""
    facts = vision_facts_of(sae)
    if facts is None or facts.tokens == "all":
        return None
    if facts.layout.n_tokens != n_tokens:
        raise SAEMismatchError(f"SAE layout has {facts.layout.n_tokens} tokens, activations have {n_tokens}")
    return facts.layout.token_mask(facts.tokens)
