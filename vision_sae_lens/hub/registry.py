"""The vision release registry: the data of a YAML file shipped with the package (and any the user adds).

This module only reads and answers questions about releases (:func:`get_vision_release`,
:func:`find_release`, :func:`list_vision_releases`); it imports neither SAELens nor a converter.
Putting the releases into SAELens' own directory is :mod:`vision_sae_lens.hub.wiring`'s job.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from vision_sae_lens.errors import ConfigError, HubError, ReleaseNotFoundError, close_matches, escape_control
from vision_sae_lens.fsutil import read_capped

logger = logging.getLogger(__name__)

SAEV_CONVERSION = "vision_sae_lens.saev"
"""Name of the saev converter in SAELens' named-loader tables."""

_RELEASES: dict[str, VisionRelease] = {}
_SHIPPED_LOADED = False
_SHIPPED_FILE = "vision_releases.yaml"


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
        raise ReleaseNotFoundError(
            f"SAE id {sae_id!r} is not in release {self.name!r}; valid ids include {ids[:5]}"
        )

    def locate(self, folder: str) -> dict[str, Any] | None:
        """The SAE entry stored at ``folder`` in the repo, if any."""
        for entry in self.saes:
            if str(entry.get("path", "")).strip("/") == folder.strip("/"):
                return entry
        return None


def vision_releases() -> dict[str, VisionRelease]:
    """Every known vision release by name: the shipped ones, then any added with :func:`add_releases`."""
    global _SHIPPED_LOADED
    if not _SHIPPED_LOADED:
        text = files("vision_sae_lens.hub").joinpath(_SHIPPED_FILE).read_text()
        shipped = _read_releases(text, where="the shipped vision release registry")
        _RELEASES.update({k: v for k, v in shipped.items() if k not in _RELEASES})
        _SHIPPED_LOADED = True
    return _RELEASES


def add_releases(path: str | os.PathLike[str]) -> list[str]:
    """Add the releases of a YAML file in the shipped file's format; returns their names.

    The file must be a regular file of at most :data:`~vision_sae_lens.fsutil.MAX_JSON_BYTES` (a FIFO,
    a device or a huge file is refused with UnsafePathError before it is parsed).
    """
    where = escape_control(path)
    try:
        text = read_capped(path).decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not a UTF-8 text file; pass a YAML release file") from None
    added = _read_releases(text, where=where)
    vision_releases().update(added)
    return list(added)


def get_vision_release(name: str) -> VisionRelease:
    """A known vision release by name (HubError with close matches when unknown)."""
    releases = vision_releases()
    if name not in releases:
        raise ReleaseNotFoundError(
            f"unknown vision release {name!r}.{close_matches(name, releases)} See list_vision_releases()."
        )
    return releases[name]


def release_for(source: str) -> VisionRelease | None:
    """The release named ``source``, or the one published in Hub repo ``source``; None if neither."""
    releases = vision_releases()
    if source in releases:
        return releases[source]
    return next((r for r in releases.values() if r.repo_id == source), None)


def find_release(repo_id: str, folder: str) -> tuple[VisionRelease, dict[str, Any]] | None:
    """The release and SAE entry stored at ``repo_id``/``folder`` (None if not ours)."""
    for release in vision_releases().values():
        if release.repo_id == repo_id:
            entry = release.locate(folder)
            if entry is not None:
                return release, entry
    return None


def list_vision_releases() -> list[dict[str, Any]]:
    """One row per registered SAE: release, sae_id, backbone, site, architecture, d_in, d_sae, source.

    The rows print well with ``pandas.DataFrame(rows)``; ``vision-sae-lens releases`` prints them.
    """
    rows = []
    for release in vision_releases().values():
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
        cells = [
            name,
            group[0]["backbone"],
            site_txt,
            group[0]["architecture"],
            d_sae.pop() if len(d_sae) == 1 else "varies",
            group[0]["source"],
        ]
        lines.append([escape_control(cell) for cell in cells])  # a release file may name anything
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*cols), *(fmt.format(*line) for line in lines)])


# --- helpers -------------------------------------------------------------------------------------


def _read_releases(text: str, *, where: str) -> dict[str, VisionRelease]:
    import yaml  # only when releases are first read: keeps `import vision_sae_lens` cheap

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {escape_control(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must map release names to releases, not hold a {type(data).__name__}")
    releases = {}
    known = {"repo_id", "model", "conversion_func", "source", "vision", "saes", "manifest"}
    for name, value in data.items():
        if not isinstance(value, dict):
            raise ConfigError(f"release {name!r} in {where} is a {type(value).__name__}, not a mapping")
        missing = [k for k in ("repo_id", "model", "saes") if k not in value]
        if missing:
            raise HubError(f"release {name!r} in {where} lacks {missing}")
        releases[str(name)] = VisionRelease(
            name=str(name),
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
