"""Latent names in the feature browser: which ``names.json`` to show, and what the pages show of it.

The names come from ``names=`` (a names.json path, its document, or a
:class:`~vision_sae_lens.analysis.naming.LatentNames`), from a namer run while the browser is built
(``namer=`` / ``concepts=``: :func:`~vision_sae_lens.analysis.naming.name_latents`), or, in
``vision-sae-lens analyze``, from the SAE folder's own ``names.json`` when it names that SAE on that
store (:func:`names_beside`). Given names are checked against the SAE (hook, width, weights hash) and
the store (fingerprint) before the scan and refused with :class:`~vision_sae_lens.errors.SAEMismatchError`
when they name another; found ones are then skipped with a warning.

The index shows each latent's best name, its score and detection AUROC (a name with AUROC below
:data:`~vision_sae_lens.names_format.WEAK_AUROC` is marked weak) and searches the names; a latent page
adds the runner-ups and the method. Names are text a user influences (a concepts file, label names):
they are cut to :data:`~vision_sae_lens.names_format.MAX_DISPLAY_CHARS` here, escaped by the
templates and written into ``index.js`` as JSON safe inside a script. Memory: one entry per latent
(best name and up to a few runner-ups, as names.json holds them), never a latents x concepts matrix.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vision_sae_lens.analysis.names_file import write_names
from vision_sae_lens.errors import ConfigError, SAEMismatchError, escape_control
from vision_sae_lens.names_format import (
    NAMES_FILE,
    WEAK_AUROC,
    check_names_doc,
    display_name,
    is_weak,
    names_problems,
    read_names,
)

if TYPE_CHECKING:
    from vision_sae_lens.compat import SAE
    from vision_sae_lens.contracts import ActivationStoreReader

logger = logging.getLogger(__name__)


class BrowserNames:
    """A checked names document, as the index and the latent pages show it."""

    def __init__(self, doc: dict[str, Any], source: str) -> None:
        self.doc, self.source = doc, source
        self.entries: list[dict[str, Any]] = doc["latents"]
        self.heldout = (doc.get("split") or {}).get("heldout_images")

    def index_fields(self, j: int) -> dict[str, Any]:
        """The index row's name columns of latent ``j`` (name, name_score, auroc, weak)."""
        e = self.entries[j]
        named = e.get("name") is not None
        return {
            "name": display_name(e.get("name")),
            "name_score": e.get("score"),
            "auroc": e.get("auroc"),
            "weak": named and is_weak(e.get("auroc")),
        }

    def page(self, j: int) -> dict[str, Any]:
        """What latent ``j``'s page shows: the name and its evidence, the runner-ups, the method."""
        e, m = self.entries[j], self.doc.get("method") or {}
        image_text = m.get("kind") == "image_text"
        score = f"{m.get('similarity')} score" if image_text else "F1"
        rows = [(score, _fmt(e.get("score"))), ("detection AUROC", _fmt(e.get("auroc")))]
        if e.get("precision") is not None:
            rows.append(("precision / recall", f"{_fmt(e.get('precision'))} / {_fmt(e.get('recall'))}"))
        rows.append(
            ("fires on naming / held-out images", f"{e.get('fires_naming')} / {e.get('fires_heldout')}")
        )
        return {
            **self.index_fields(j),
            "rows": rows,
            "score_label": score,
            "runner_up": [
                (display_name(r.get("name")), _fmt(r.get("score"))) for r in e.get("runner_up", [])
            ],
            # the re-ranked shortlist comes first in detection order: its scores need not descend
            "reranked": int(m.get("rerank") or 1) if image_text and (m.get("rerank") or 1) > 1 else None,
        }

    def method(self) -> str:
        """One line saying how the names were made and measured, and where they come from."""
        m, concepts = self.doc.get("method") or {}, self.doc.get("concepts") or {}
        if m.get("kind") == "image_text":
            how = f"image-text namer {m.get('namer')}, {m.get('similarity')} similarity"
            how += f", best {m['rerank']} re-ranked by detection" if (m.get("rerank") or 1) > 1 else ""
            how += f", vocabulary {concepts.get('source')} ({concepts.get('count')} concepts)"
        else:
            level = "patches" if m.get("level") == "patch" else "images"
            how = f"the label whose {level} the latent fires on with the best F1"
        return (
            f"{how}; detection AUROC on {self.heldout} held-out images (below {WEAK_AUROC}: a weak name); "
            f"from {self.source}"
        )

    def summary(self) -> dict[str, Any]:
        """The index's name figures: latents named, names marked weak, median detection AUROC."""
        named = [e for e in self.entries if e.get("name") is not None]
        aurocs = [e["auroc"] for e in named if e.get("auroc") is not None]
        return {
            "named": len(named),
            "weak_names": sum(is_weak(e.get("auroc")) for e in named),
            "median_name_auroc": round(statistics.median(aurocs), 4) if aurocs else None,
        }


def browser_names(
    sae: SAE,
    store: ActivationStoreReader,
    names: Any = None,
    *,
    namer: Any = None,
    concepts: Any = None,
    images: Any = None,
    progress: bool = True,
) -> BrowserNames | None:
    """The names to show (None without ``names`` or ``namer``), checked against ``sae`` and ``store``.

    ``names``: a names.json path (or a folder holding one), its document or a ``LatentNames``.
    ``namer`` / ``concepts`` name the latents now (``images``: the store's images for the namer).
    """
    if names is not None and namer is not None:
        raise ConfigError("pass names= (a names.json) or namer= (name now), not both")
    if namer is not None:
        from vision_sae_lens.analysis.naming import name_latents

        made = name_latents(sae, store, namer=namer, concepts=concepts, images=images, progress=progress)
        return BrowserNames(made.to_json(), source=f"named while building with {made.method['namer']}")
    if names is None:
        return None
    if isinstance(names, str | Path):
        path = Path(names) / NAMES_FILE if Path(names).is_dir() else Path(names)
        doc, source = read_names(path), f"{path.parent.name}/{path.name}"  # no absolute path in the pages
    else:
        source = "names given in Python"
        doc = check_names_doc(names.to_json() if hasattr(names, "to_json") else names, where=source)
    problems = _problems(doc, sae, store)
    if problems:
        raise SAEMismatchError(
            f"the latent names of {source} do not name this SAE on this store: {'; '.join(problems)}. "
            "Name this SAE on this store: vision-sae-lens explain SAE --store STORE."
        )
    if not (doc.get("sae") or {}).get("weights_sha256"):
        logger.warning(
            "%s records no weights hash of its SAE: checked on hook and width only", escape_control(source)
        )
    return BrowserNames(doc, source=source)


def names_beside(sae_folder: str | Path, sae: SAE, store: ActivationStoreReader) -> str | None:
    """The SAE folder's own ``names.json`` when it names this SAE on this store, else None (with a
    warning saying why it is not shown)."""
    path = Path(sae_folder) / NAMES_FILE
    if not path.is_file():
        return None
    try:
        problems = _problems(read_names(path), sae, store, need_hash=True)
    except ValueError as exc:  # ConfigError: unreadable or not a names file
        problems = [str(exc)]
    if problems:
        logger.warning(
            "not showing the names of %s: %s (pass --names or --namer to name this SAE on this store)",
            escape_control(str(path)),
            escape_control("; ".join(problems)),
        )
        return None
    return str(path)


def save_names(names: BrowserNames, out: Path) -> None:
    """Keep names made while building beside the browser (``out/names.json``): nowhere else holds them."""
    if names.source.startswith("named while building"):
        write_names(names.doc, out / NAMES_FILE)


def _problems(
    doc: dict[str, Any], sae: SAE, store: ActivationStoreReader, *, need_hash: bool = False
) -> list[str]:
    from vision_sae_lens.backbones.recorded import weights_sha256

    problems = names_problems(
        doc, hook_name=sae.cfg.metadata.hook_name, d_sae=int(sae.cfg.d_sae),
        weights_sha256=weights_sha256(sae), store_fingerprint=store.fingerprint,
    )  # fmt: skip
    if need_hash and not (doc.get("sae") or {}).get("weights_sha256"):
        problems.append("it records no weights hash of the SAE it names")
    return problems


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}"
