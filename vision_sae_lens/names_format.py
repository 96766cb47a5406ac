"""``names.json`` as a file format: reading it, and checking that it names the SAE at hand.

``explain`` writes the file (:mod:`vision_sae_lens.analysis.names_file`); the feature browser and the
model card of ``publish`` read it, so the format lives below both. A names file says which SAE it
names (``sae``: hook name, width, ``weights_sha256`` of its state dict) and over which store
(``store.fingerprint``): :func:`names_problems` lists every way it does not fit an SAE and store, and a
reader shows names only when that list is empty. Names are user-influenced text (a concepts file, a
dataset's label names): :func:`display_name` bounds the length of what is shown; escaping is the job
of whatever renders it (HTML, JavaScript, Markdown). Schema: docs/analysis.md (``names.json``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from vision_sae_lens.errors import ConfigError
from vision_sae_lens.fsutil import read_json

NAMES_FILE = "names.json"
NAMES_FORMAT = "vision_sae_lens.latent_names"
NAMES_VERSION = 1
MAX_DISPLAY_CHARS = 120
"""Longest name shown in a browser or model card (a longer one is cut, with an ellipsis)."""
MAX_NAMES_BYTES = 512 * 2**20
"""Largest names.json read: 65,536 latents with six names of 200 characters (a concept's limit) take
about 100 MB, the 64 MiB cap of other JSON files would refuse them."""
WEAK_AUROC = 0.7
"""Detection AUROC below which a name is shown as weak: it predicts poorly where the latent fires."""


def read_names(path: str | Path) -> dict[str, Any]:
    """The names.json document at ``path`` (a file, or a folder holding one), checked for format,
    version and the shape of its per-latent entries (ConfigError otherwise)."""
    target = Path(path)
    if target.is_dir():
        target = target / NAMES_FILE
    try:
        doc = read_json(target, max_bytes=MAX_NAMES_BYTES)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read latent names from {target}: {exc}") from exc
    return check_names_doc(doc, where=str(target))


def check_names_doc(doc: Any, *, where: str) -> dict[str, Any]:
    """``doc`` when it is a names document of a version this package reads, with well-formed
    per-latent entries; ConfigError naming ``where`` (its file) otherwise."""
    if not isinstance(doc, dict) or doc.get("format") != NAMES_FORMAT:
        raise ConfigError(f"{where} is not a vision_sae_lens names file (format {NAMES_FORMAT!r})")
    version = doc.get("version")
    if not isinstance(version, int) or version > NAMES_VERSION:
        raise ConfigError(f"{where} has names format version {version!r}; upgrade vision_sae_lens to read it")
    bad = _entries_problem(doc.get("latents"))
    if bad:
        raise ConfigError(
            f"{where} is not a valid names file: {bad}. Write it again (vision-sae-lens explain)."
        )
    return doc


def names_problems(
    doc: dict[str, Any],
    *,
    hook_name: str,
    d_sae: int,
    weights_sha256: str | None = None,
    store_fingerprint: str | None = None,
) -> list[str]:
    """Every way the names ``doc`` does not name this SAE (and, with ``store_fingerprint``, this store).

    A names file without the SAE's weights hash (written before it was recorded) is checked on hook
    name and width only.
    """
    sae, store = doc.get("sae") or {}, doc.get("store") or {}
    problems = []
    if sae.get("hook_name") != hook_name:
        problems.append(f"it names an SAE at {sae.get('hook_name')!r}, this SAE reads {hook_name!r}")
    n_named = len(doc.get("latents") or [])
    if sae.get("d_sae") != d_sae or n_named != d_sae:
        problems.append(f"it names {n_named} latents, this SAE has {d_sae}")
    recorded = sae.get("weights_sha256")
    if weights_sha256 is not None and recorded is not None and recorded != weights_sha256:
        problems.append("it names an SAE with other weights (weights_sha256 differs)")
    if store_fingerprint is not None and store.get("fingerprint") != store_fingerprint:
        problems.append(
            f"it was made on the store with fingerprint {store.get('fingerprint')!r}, this store's is "
            f"{store_fingerprint!r}"
        )
    return problems


def display_name(name: str | None, limit: int = MAX_DISPLAY_CHARS) -> str | None:
    """``name`` cut to ``limit`` characters (an ellipsis marks the cut); None stays None."""
    if name is None:
        return None
    return name if len(name) <= limit else name[: limit - 1] + "…"


def is_weak(auroc: float | None) -> bool:
    """Whether a name with this detection AUROC is weak (below :data:`WEAK_AUROC`, or not measured)."""
    return auroc is None or not auroc >= WEAK_AUROC


def _entries_problem(latents: Any) -> str | None:
    """What is wrong with the ``latents`` list of a names document (None when nothing is)."""
    if not isinstance(latents, list):
        return "'latents' must be a list with one entry per latent"
    for j, e in enumerate(latents):
        if not isinstance(e, dict) or e.get("latent") != j:
            return f'entry {j} of "latents" must be an object with "latent": {j}'
        runner = e.get("runner_up", [])
        if not isinstance(runner, list) or not all(isinstance(r, dict) for r in runner):
            return f'latent {j}: "runner_up" must be a list of {{"name", "score"}} objects'
        if not all(isinstance(t, str | None) for t in [e.get("name"), *(r.get("name") for r in runner)]):
            return f"latent {j}: names must be strings (or null)"
        numbers = [e.get("score"), e.get("auroc"), *(r.get("score") for r in runner)]
        if not all(v is None or (isinstance(v, int | float) and math.isfinite(v)) for v in numbers):
            return f"latent {j}: scores and AUROC must be finite numbers or null"
    return None
