"""The vision release registry: a YAML file shipped with the package, registered into SAELens.

SAELens resolves ``SAE.from_pretrained(release, sae_id)`` through two seams: the cached directory
``get_pretrained_saes_directory()`` (release -> repo, ids -> folders, conversion function name) and
the name -> loader tables ``NAMED_PRETRAINED_SAE_LOADERS`` / ``NAMED_PRETRAINED_SAE_CONFIG_GETTERS``.
:func:`register_vision_releases` adds our releases to the first and our converters to the second,
under names SAELens does not use, so SAELens' own releases behave exactly as before. SAELens'
``get_pretrained_saes_directory.cache_clear()`` drops added releases; calling the function again
puts them back (it is idempotent and cheap: yaml + a dict update).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from sae_lens.loading import pretrained_sae_loaders as _loaders
from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup, get_pretrained_saes_directory

from vision_sae_lens.errors import HubError

logger = logging.getLogger(__name__)

SAEV_CONVERSION = "vision_sae_lens.saev"
"""Name of the saev converter in SAELens' named-loader tables."""

_RELEASES: dict[str, VisionRelease] = {}
_SHIPPED_LOADED = False


@dataclass(frozen=True)
class VisionRelease:
    """One release of the registry (one Hub repo, one or more SAEs)."""

    name: str
    """Release name passed to ``SAE.from_pretrained(release=...)``."""
    repo_id: str
    """Hugging Face repo that holds the SAEs."""
    model: str
    """Backbone id in this package's syntax (``timm:``, ``open_clip:``, ``hf:``)."""
    conversion_func: str | None
    """SAELens named loader; None means SAELens' default loader (SAELens folders)."""
    source: str
    """Project that trained and published the SAEs (saev, vision_sae_lens, ...)."""
    vision: dict[str, Any]
    """Backbone, image and patch size, CLS and registers, token selection, dataset."""
    saes: list[dict[str, Any]]
    """One entry per SAE: id, path, architecture, d_in, d_sae, l0, ..."""
    manifest: str | None = None
    """File in the repo listing the published checkpoints (saev's DINOv3 repos), if any."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Any other keys of the YAML entry."""

    def sae(self, sae_id: str) -> dict[str, Any]:
        """The entry of one SAE id (KeyError naming the valid ids)."""
        for entry in self.saes:
            if entry["id"] == sae_id:
                return entry
        ids = [e["id"] for e in self.saes]
        raise HubError(f"SAE id {sae_id!r} is not in release {self.name!r}; valid ids include {ids[:5]}")

    def locate(self, folder: str) -> dict[str, Any] | None:
        """The SAE entry stored at ``folder`` in the repo, if any."""
        for entry in self.saes:
            if str(entry.get("path", "")).strip("/") == folder.strip("/"):
                return entry
        return None


def register_vision_releases(path: str | Path | None = None) -> list[str]:
    """Register the vision releases (the shipped YAML, or ``path``) with SAELens; returns their names.

    Idempotent; call it again after ``get_pretrained_saes_directory.cache_clear()``. Releases whose
    name SAELens already knows (one of its own) are skipped with a warning, never replaced.
    """
    global _SHIPPED_LOADED
    if not _SHIPPED_LOADED:
        _RELEASES.update(
            _read_releases(files("vision_sae_lens.hub").joinpath("vision_releases.yaml").read_text())
        )
        _SHIPPED_LOADED = True
    if path is not None:
        _RELEASES.update(_read_releases(Path(path).read_text()))
    _register_loaders()
    directory = get_pretrained_saes_directory()
    names = []
    for release in _RELEASES.values():
        existing = directory.get(release.name)
        if existing is not None and not _is_ours(existing):
            logger.warning("SAELens already has a release named %r; keeping SAELens' entry.", release.name)
            continue
        directory[release.name] = _to_lookup(release)
        names.append(release.name)
    return names


def get_vision_release(name: str) -> VisionRelease:
    """A registered vision release by name (HubError with close matches when unknown)."""
    from vision_sae_lens.errors import close_matches

    if not _RELEASES:
        register_vision_releases()
    if name not in _RELEASES:
        raise HubError(
            f"unknown vision release {name!r}.{close_matches(name, _RELEASES)} See list_vision_releases()."
        )
    return _RELEASES[name]


def find_release(repo_id: str, folder: str) -> tuple[VisionRelease, dict[str, Any]] | None:
    """The registered release and SAE entry stored at ``repo_id``/``folder`` (None if not ours)."""
    if not _RELEASES:
        register_vision_releases()
    for release in _RELEASES.values():
        if release.repo_id == repo_id:
            entry = release.locate(folder)
            if entry is not None:
                return release, entry
    return None


def list_vision_releases() -> list[dict[str, Any]]:
    """One row per registered SAE: release, sae_id, backbone, site, architecture, d_in, d_sae, source.

    The rows print well with ``pandas.DataFrame(rows)``; ``vision-sae-lens releases`` prints them.
    """
    if not _RELEASES:
        register_vision_releases()
    rows = []
    for release in _RELEASES.values():
        for entry in release.saes:
            rows.append(
                {
                    "release": release.name,
                    "sae_id": entry["id"],
                    "backbone": release.vision.get("backbone", release.model),
                    "site": entry.get("hook_name") or entry["id"].split("/")[0],
                    "tokens": release.vision.get("tokens"),
                    "architecture": entry.get("architecture"),
                    "d_in": entry.get("d_in"),
                    "d_sae": entry.get("d_sae"),
                    "source": release.source,
                    "repo_id": release.repo_id,
                }
            )
    return rows


def format_release_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`list_vision_releases` rows, one line per release (ids counted)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["release"], []).append(row)
    cols = ["release", "backbone", "sites", "architecture", "d_sae", "source"]
    lines = []
    for name, group in grouped.items():
        sites = sorted({r["site"] for r in group}, key=lambda s: (len(s), s))
        site_txt = sites[0] if len(sites) == 1 else f"{sites[0]} .. {sites[-1]} ({len(group)} SAEs)"
        d_sae = {r["d_sae"] for r in group}
        lines.append(
            [
                name,
                group[0]["backbone"],
                site_txt,
                str(group[0]["architecture"]),
                str(d_sae.pop()) if len(d_sae) == 1 else "varies",
                group[0]["source"],
            ]
        )
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*cols), *(fmt.format(*line) for line in lines)])


# --- helpers -------------------------------------------------------------------------------------


def _read_releases(text: str) -> dict[str, VisionRelease]:
    data = yaml.safe_load(text) or {}
    releases = {}
    known = {"repo_id", "model", "conversion_func", "source", "vision", "saes", "manifest"}
    for name, value in data.items():
        missing = [k for k in ("repo_id", "model", "saes") if k not in value]
        if missing:
            raise HubError(f"release {name!r} in the vision release registry lacks {missing}")
        releases[name] = VisionRelease(
            name=name,
            repo_id=value["repo_id"],
            model=value["model"],
            conversion_func=value.get("conversion_func"),
            source=value.get("source", "unknown"),
            vision=dict(value.get("vision") or {}),
            saes=list(value["saes"]),
            manifest=value.get("manifest"),
            extra={k: v for k, v in value.items() if k not in known},
        )
    return releases


def _to_lookup(release: VisionRelease) -> PretrainedSAELookup:
    saes_map = {e["id"]: str(e.get("path", "")) for e in release.saes}
    return PretrainedSAELookup(
        release=release.name,
        repo_id=release.repo_id,
        model=release.model,
        conversion_func=release.conversion_func,
        saes_map=saes_map,
        expected_var_explained={e["id"]: e.get("variance_explained", 1.0) for e in release.saes},
        expected_l0={e["id"]: e.get("l0", 0.0) for e in release.saes},
        neuronpedia_id={e["id"]: e.get("neuronpedia") for e in release.saes},
        norm_scaling_factor={},
        config_overrides=None,
    )


def _is_ours(lookup: PretrainedSAELookup) -> bool:
    ours = _RELEASES.get(lookup.release)
    return ours is not None and ours.repo_id == lookup.repo_id


def _register_loaders() -> None:
    # Imported lazily by the loader itself, so registering stays cheap.
    if SAEV_CONVERSION not in _loaders.NAMED_PRETRAINED_SAE_LOADERS:
        from vision_sae_lens.hub import saev_hub

        _loaders.NAMED_PRETRAINED_SAE_LOADERS[SAEV_CONVERSION] = saev_hub.saev_huggingface_loader
        _loaders.NAMED_PRETRAINED_SAE_CONFIG_GETTERS[SAEV_CONVERSION] = saev_hub.saev_config_from_hf
