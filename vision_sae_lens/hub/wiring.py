"""The vision releases inside SAELens' own pretrained-SAE directory, whenever SAELens reads it.

SAELens resolves ``SAE.from_pretrained(release, sae_id)`` through two seams, both fenced in
:mod:`vision_sae_lens.compat`: the cached directory of named releases (release -> repo, ids -> folders,
conversion function name) and the name -> loader tables. Our releases are added to whatever directory
SAELens' getter returns, also after its ``cache_clear()`` (:func:`~vision_sae_lens.compat.add_to_pretrained_directory`);
our converter goes into the loader tables under a name SAELens does not use. SAELens' own releases are
never replaced.

Importing ``vision_sae_lens`` must not import SAELens (it is what makes start-up slow), so
:func:`register_when_sae_lens_loads` only installs import hooks: the wiring happens right after
``sae_lens`` (and ``vision_sae_lens.compat``, through which it goes) is imported, or at once if it already is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

from vision_sae_lens.hub.registry import SAEV_CONVERSION, VisionRelease, add_releases, vision_releases

logger = logging.getLogger(__name__)

_WARNED: set[str] = set()


def register_vision_releases(path: str | None = None) -> list[str]:
    """Put the vision releases (the shipped ones, plus those of the YAML file ``path``) into SAELens.

    Returns the names registered. Idempotent; the releases stay registered after SAELens'
    ``get_pretrained_saes_directory.cache_clear()``. A release whose name SAELens already uses for
    one of its own is skipped with a warning, never replaced.
    """
    if path is not None:
        add_releases(path)
    _wire_sae_lens()
    from vision_sae_lens import compat

    directory = compat.named_releases()
    return [name for name in vision_releases() if _is_ours(directory.get(name), vision_releases()[name])]


def register_when_sae_lens_loads() -> None:
    """Wire the releases into SAELens now if it is imported, else right after its import (cheap)."""
    if "sae_lens" in sys.modules:
        _wire_sae_lens()
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        # The wiring goes through vision_sae_lens.compat, which imports SAELens itself: it runs once compat
        # is complete, whether compat was what imported SAELens or a user's `import sae_lens` (which then
        # imports compat).
        sys.meta_path.insert(0, _AfterImport(_COMPAT, _wire_sae_lens))
        sys.meta_path.insert(0, _AfterImport("sae_lens", _import_compat))


_COMPAT = "vision_sae_lens.compat"


def _import_compat() -> None:
    if _COMPAT not in sys.modules:  # else compat is the module importing SAELens; its own hook wires
        importlib.import_module(_COMPAT)


# --- wiring (the SAELens names it touches are compat's seams) ---------------------------------------


def _wire_sae_lens() -> None:
    from vision_sae_lens import compat

    compat.register_pretrained_loader(SAEV_CONVERSION, _saev_loader, _saev_config_getter)
    compat.add_to_pretrained_directory(_add_releases)


def _add_releases(directory: dict[str, Any]) -> None:
    for release in vision_releases().values():
        existing = directory.get(release.name)
        if existing is None:
            directory[release.name] = _to_lookup(release)
        elif not _is_ours(existing, release) and release.name not in _WARNED:
            logger.warning("SAELens already has a release named %r; keeping SAELens' entry.", release.name)
            _WARNED.add(release.name)


def _to_lookup(release: VisionRelease) -> Any:
    from vision_sae_lens import compat

    return compat.pretrained_sae_lookup(
        release=release.name,
        repo_id=release.repo_id,
        model=release.model,
        conversion_func=release.conversion_func,
        saes_map={e["id"]: str(e.get("path", "")) for e in release.saes},
        expected_var_explained={e["id"]: e.get("variance_explained", 1.0) for e in release.saes},
        expected_l0={e["id"]: e.get("l0", 0.0) for e in release.saes},
        neuronpedia_id={e["id"]: e.get("neuronpedia") for e in release.saes},
        norm_scaling_factor={},
        config_overrides=None,
    )


def _is_ours(lookup: Any, release: VisionRelease) -> bool:
    return lookup is not None and lookup.repo_id == release.repo_id and lookup.model == release.model


# The converter loads on first use: wiring stays cheap and the registry never imports a converter.
def _saev_loader(**kwargs: Any) -> Any:
    from vision_sae_lens.hub.saev_hub import saev_huggingface_loader

    return saev_huggingface_loader(**kwargs)


def _saev_config_getter(**kwargs: Any) -> Any:
    from vision_sae_lens.hub.saev_hub import saev_config_from_hf

    return saev_config_from_hf(**kwargs)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``callback`` once, right after the module ``name`` has been imported."""

    def __init__(self, name: str, callback: Callable[[], None]) -> None:
        self.name = name
        self.callback = callback

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # find the real spec with the other finders, and fire only once
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module
        callback = self.callback

        def exec_then_wire(module: ModuleType) -> None:
            exec_module(module)
            callback()

        spec.loader.exec_module = exec_then_wire  # type: ignore[method-assign]
        return spec
