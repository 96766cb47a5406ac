"""Checked site names: TransformerLens' hook API on a hooked ViT, where a typo never passes silently.

TransformerLens returns an empty cache for an unknown ``names_filter`` and raises a bare ``KeyError``
from ``run_with_hooks``. :class:`CheckedSitesMixin` checks every string name given to
``run_with_cache``, ``run_with_hooks``, ``hooks`` and ``add_hook`` (and so the ``*_with_saes`` variants,
which call them with the SAEs attached, SAE-internal names included) before the forward runs, raising
:class:`UnknownSiteError` with the close matches. Callable filters are left as TransformerLens has them.
The returned cache is a :class:`SiteCache`, whose missing keys name the close cached names.

A toggled site (``attn.hook_result``, ``hook_attn_in``, ``hook_q_input``, ``hook_mlp_in``, ...) whose
``set_use_*`` toggle is off raises :class:`SiteDisabledError` when named, and is left out of
"cache everything". ``pos_slice`` slices each cached tensor's token axis, and only that: the pooled
image vector ``hook_pooled`` (batch, d) has none and is cached whole (TransformerLens slices axis -2
of everything, which for it is the batch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from vision_sae_lens.backbones.config import SiteCache
from vision_sae_lens.backbones.hook_tree import ATTENTION_SITES, TOGGLED_SITES
from vision_sae_lens.compat import Slice
from vision_sae_lens.errors import ImageInputError, SiteDisabledError, UnknownSiteError, close_matches

EAGER_ONLY_SITES = (
    *ATTENTION_SITES,
    "hook_result",
    "hook_attn_in",
    "hook_q_input",
    "hook_k_input",
    "hook_v_input",
)
"""Sites that need the inside of attention, so exist only with ``attention="eager"``."""

if TYPE_CHECKING:
    from vision_sae_lens.compat import HookedRootModule, HookPoint

    _Host = HookedRootModule  # the class the mixin is combined with; its methods are what super() reaches
else:
    _Host = object


class CheckedSitesMixin(_Host):
    """Name-checked ``run_with_cache`` / ``run_with_hooks`` / ``hooks`` / ``add_hook`` for a ``HookedRootModule``
    host that has ``hook_dict``, ``_acts_to_saes``, ``attention``, ``backbone_id`` and ``preprocess``."""

    # Provided by the host class (annotations only: nothing is set here).
    hook_dict: dict[str, HookPoint]
    _acts_to_saes: dict[str, Any]
    attention: str
    backbone_id: str
    preprocess: Callable[[Any], torch.Tensor]
    toggles: Any

    def check_site(self, site: str) -> None:
        """Raise :class:`UnknownSiteError` (with close names) unless ``site`` is a hook of this model,
        and :class:`SiteDisabledError` when it is a toggled site whose toggle is off."""
        toggle = self.toggle_of(site)
        if toggle is not None:
            raise SiteDisabledError(f"{site} runs only after model.set_{toggle}(True).")
        if site in self.hook_dict or site in self._acts_to_saes:
            return
        hint = ""
        if self.attention != "eager" and site.rsplit(".", 1)[-1] in EAGER_ONLY_SITES:
            hint = " Attention internals are sites only with HookedSAEViT.from_pretrained(..., attention='eager')."
        raise UnknownSiteError(
            f"{self.backbone_id} has no site {site!r}.{close_matches(site, self.hook_dict)}{hint} "
            f"See model.site_names() for all {len(self.hook_dict)} sites."
        )

    def toggle_of(self, site: str) -> str | None:
        """The ``set_use_*`` toggle that ``site`` waits for, or None when it runs (or is not toggled)."""
        toggle = TOGGLED_SITES.get(site.rsplit(".", 1)[-1])
        return (
            toggle
            if toggle is not None and site in self.hook_dict and not getattr(self.toggles, toggle)
            else None
        )

    def check_names(self, names: Any) -> None:
        """Check every site name in ``names`` (a name, a list of names, or a callable, which is left alone)."""
        if names is None or callable(names):
            return
        for name in [names] if isinstance(names, str) else names:
            if isinstance(name, str):
                self.check_site(name)

    # Images come first (TransformerLens takes them in *model_args): a narrower signature on purpose.
    def run_with_cache(  # type: ignore[override]
        self,
        images: Any,
        *model_args: Any,
        names_filter: Any = None,
        remove_batch_dim: bool = False,
        return_cache_object: bool = True,
        **kwargs: Any,
    ):
        """TransformerLens' ``run_with_cache`` plus ``stop_at_layer``; returns ``(output, cache)``.

        ``names_filter``: None (every site), a site name, a list of names (each checked: a typo raises
        :class:`UnknownSiteError`) or a callable on names. ``remove_batch_dim=True`` needs one image and
        caches every site without its batch axis (``cache.has_batch_dim`` is then False).
        ``pos_slice`` (an int, a list of positions, a slice or TransformerLens' ``Slice``) keeps those
        tokens of every per-token site; an int keeps its axis, as in TransformerLens.
        """
        self.check_names(names_filter)
        if remove_batch_dim:
            images = self.preprocess(images)
            if images.shape[0] != 1:
                raise ImageInputError(
                    f"remove_batch_dim=True needs a batch of one image, got {images.shape[0]}; "
                    "pass one image or keep the batch dimension."
                )
        out, cache_dict = super().run_with_cache(images, *model_args, names_filter=names_filter, **kwargs)
        if remove_batch_dim:
            # After the run, not in TransformerLens' hook: its pos_slice would then index the (d,) pooled
            # vector's missing token axis.
            cache_dict = {name: act[0] for name, act in cache_dict.items()}
        if not return_cache_object:
            return out, cache_dict
        return out, SiteCache(cache_dict, self, has_batch_dim=not remove_batch_dim)

    def get_caching_hooks(
        self,
        names_filter: Any = None,
        incl_bwd: bool = False,
        device: Any = None,
        remove_batch_dim: bool = False,
        cache: dict | None = None,
        pos_slice: Any = None,
    ):
        """TransformerLens' caching hooks, without switched-off toggled sites, slicing only token axes:
        axis 1 of (batch, pos, ...) sites, the query axis 2 of ``hook_pattern`` / ``hook_attn_scores``."""
        wanted = _names_filter(names_filter)
        cache, fwd, bwd = super().get_caching_hooks(
            lambda name: wanted(name) and self.toggle_of(name) is None,
            incl_bwd,
            device,
            remove_batch_dim=remove_batch_dim,
            cache=cache,
        )
        positions = Slice.unwrap(pos_slice)
        if positions.mode == "identity":
            return cache, fwd, bwd

        def sliced(save):
            def hook(tensor: torch.Tensor, hook: HookPoint):
                return save(_slice_tokens(tensor, hook.name, positions), hook)

            return hook

        return cache, [(n, sliced(h)) for n, h in fwd], [(n, sliced(h)) for n, h in bwd]

    def run_with_hooks(
        self, *model_args: Any, fwd_hooks: Sequence = (), bwd_hooks: Sequence = (), **kwargs: Any
    ):
        """TransformerLens' ``run_with_hooks``; every string hook name is checked before the forward."""
        self.check_names([name for name, _ in [*fwd_hooks, *bwd_hooks]])
        return super().run_with_hooks(
            *model_args, fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks), **kwargs
        )

    def hooks(self, fwd_hooks: Sequence = (), bwd_hooks: Sequence = (), *args: Any, **kwargs: Any):
        """TransformerLens' ``hooks`` context manager; string hook names are checked before any is added."""
        self.check_names([name for name, _ in [*fwd_hooks, *bwd_hooks]])
        return super().hooks(list(fwd_hooks), list(bwd_hooks), *args, **kwargs)

    def add_hook(self, name: Any, hook: Any, *args: Any, **kwargs: Any) -> None:
        """TransformerLens' ``add_hook``; a string name must be a site (else :class:`UnknownSiteError`)."""
        self.check_names(name)
        super().add_hook(name, hook, *args, **kwargs)


def _names_filter(names_filter: Any) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda name: True
    if isinstance(names_filter, str):
        return lambda name: name == names_filter
    if callable(names_filter):
        return names_filter
    names = set(names_filter)
    return lambda name: name in names


def _slice_tokens(tensor: torch.Tensor, name: str | None, positions: Slice) -> torch.Tensor:
    """The tokens ``positions`` of a batch-first site; sites without a token axis are left whole."""
    if tensor.ndim < 3:
        return tensor  # (batch, d): hook_pooled and SAEs on it
    axis = 2 if name is not None and name.endswith(("hook_pattern", "hook_attn_scores")) else 1
    return positions.apply(tensor, dim=axis)
