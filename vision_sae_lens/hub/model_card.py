"""The README.md model card written by ``push_to_hub``.

YAML front matter (``library_name: saelens``, tags, ``base_model`` when the backbone maps to a Hub
model), a table of the SAEs (site, tokens, architecture, d_sae, L0, NMSE, explained variance,
downstream fraction recovered, read from each folder's ``eval.json`` when present), the best-detected
latent names of each SAE with a ``names.json`` (how they were made, and a short table of names with
their detection AUROC) and a usage snippet that loads them with plain SAELens. Names are text a user
influences (a concepts file, label names): they are cut to a bounded length and escaped for Markdown
and HTML.
"""

from __future__ import annotations

import html
import re
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from vision_sae_lens.errors import escape_control
from vision_sae_lens.names_format import WEAK_AUROC, display_name

TAGS = ["sparse-autoencoder", "saelens", "vision", "interpretability", "vision_sae_lens"]
NAMED_ROWS = 10
"""Latent names a model card lists per SAE (the best detected; names.json holds every latent's)."""


def build_model_card(repo_id: str, saes: list[dict[str, Any]]) -> str:
    """Model card text for the SAEs about to be published to ``repo_id``."""
    backbones = sorted({s["backbone"] for s in saes if s.get("backbone")})
    base_models = [m for m in (base_model_of(b) for b in backbones) if m]
    data = ModelCardData(
        library_name="saelens",
        tags=TAGS,
        base_model=(base_models[0] if len(base_models) == 1 else base_models) or None,
    )
    datasets = sorted({name for s in saes if (name := _dataset_name(s.get("dataset"))) is not None})
    lines = [
        f"# Vision SAEs: {', '.join(backbones) or 'unknown backbone'}",
        "",
        "Sparse autoencoders trained on vision-transformer activations with "
        "vision_sae_lens and saved in SAELens' format.",
    ]
    if datasets:
        lines += ["", f"Training images: {', '.join(datasets)}."]
    lines += [
        "",
        "| SAE id | site | tokens | architecture | d_in | d_sae | L0 | NMSE | explained var. | downstream frac. recovered |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in saes:
        ev = s.get("eval") or {}
        down = ev.get("downstream") or {}
        lines.append(
            f"| `{s['sae_id']}` | `{s['site']}` | {s.get('tokens') or ''} | {s['architecture']} | {s['d_in']} | "
            f"{s['d_sae']} | {_num(ev.get('l0'))} | {_num(ev.get('nmse'))} | {_num(ev.get('explained_variance'))} | "
            f"{_num(down.get('fraction_recovered') if isinstance(down, dict) else None)} |"
        )
    for s in saes:
        if s.get("names"):
            lines += names_section(s["sae_id"], s["names"])
    example = saes[0]["sae_id"]
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from sae_lens import SAE",
        "",
        f'sae = SAE.from_pretrained("{repo_id}", "{example}")',
        "print(sae.cfg.metadata.backbone, sae.cfg.metadata.hook_name, sae.cfg.metadata.tokens)",
        "",
        "# splice it into the backbone with vision_sae_lens:",
        "from vision_sae_lens import HookedSAEViT",
        "",
        "model = HookedSAEViT.from_pretrained(sae.cfg.metadata.backbone)",
        "logits = model.run_with_saes(images, saes=[sae])",
        "```",
        "",
        "Every SAE's `cfg.json` carries the vision facts (backbone, hook site, token selection, image and "
        "patch size, CLS/registers, preprocessing) in `metadata`; `eval.json` beside it holds the metrics.",
        "",
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def names_section(sae_id: str, doc: dict[str, Any], rows: int = NAMED_ROWS) -> list[str]:
    """Model card lines for one SAE's names.json: how the names were made, and its ``rows`` named latents
    with the highest detection AUROC (ties: the higher score, then the lower latent)."""
    method, concepts, split = doc.get("method") or {}, doc.get("concepts") or {}, doc.get("split") or {}
    if method.get("kind") == "image_text":
        rerank = method.get("rerank") or 1
        how = (
            f"the image-text model {_md(method.get('namer'))} ({_md(method.get('similarity'))} similarity"
            + (f", best {int(rerank)} re-ranked by detection" if rerank > 1 else "")
            + f") over the vocabulary {_md(concepts.get('source'))} ({_md(concepts.get('count'))} concepts)"
        )
    else:
        how = "the dataset's labels (the label the latent fires on with the best F1)"
    named = [e for e in doc["latents"] if e.get("name") is not None]
    summary = doc.get("summary") or {}
    best = sorted(
        (e for e in named if e.get("auroc") is not None),
        key=lambda e: (-e["auroc"], -(e.get("score") or 0.0), e["latent"]),
    )[:rows]
    lines = [
        "",
        f"### Latent names of `{sae_id}`",  # sae ids are checked: letters, digits, . _ - /
        "",
        f"{len(named)} of {len(doc['latents'])} latents named with {how}. Each name's detection AUROC says how "
        f"well it predicts on which of {_md(split.get('heldout_images'))} held-out images the latent fires (0.5 is "
        f"chance; below {WEAK_AUROC} the name is weak); median {_md(_num(summary.get('median_auroc')))}. The "
        f"{len(best)} best detected:",
        "",
        "| latent | name | detection AUROC | score |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {e['latent']} | {_md(e['name'])} | {_num(e['auroc'])} | {_num(e.get('score'))} |" for e in best
    ]
    lines += ["", f"`{sae_id}/names.json` holds every latent's name, runner-ups and detection AUROC."]
    return lines


def base_model_of(backbone: str) -> str | None:
    """The Hub model id behind a backbone id, when there is one (``hf:`` ids, ``timm:`` ids)."""
    if backbone.startswith("hf:"):
        model = backbone[3:]
        return model if model.count("/") == 1 and not model.startswith((".", "/")) else None
    if backbone.startswith("timm:"):
        return f"timm/{backbone[5:]}"
    if backbone.startswith("open_clip:hf-hub:"):
        return backbone[len("open_clip:hf-hub:") :]
    return None


def parse_front_matter(card: str) -> dict[str, Any]:
    """The YAML front matter of a model card as a dict (empty if there is none)."""
    return ModelCard(card).data.to_dict()


def _md(text: object) -> str:
    """``text`` safe in Markdown running text or a table cell (not in a code span, where escapes show):
    one line, bounded, HTML escaped, Markdown's punctuation (table pipes, emphasis, links, code)
    backslash-escaped."""
    one_line = escape_control(display_name(str(text)) or "")
    return re.sub(r"([\\`*_{}\[\]()#+!|~])", r"\\\1", html.escape(one_line, quote=False))


def _num(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, int | float):
        return f"{value:.4g}"
    return str(value)


def _dataset_name(dataset: object) -> str | None:
    if isinstance(dataset, dict):
        return dataset.get("name") or dataset.get("spec") or dataset.get("source")
    return dataset if isinstance(dataset, str) else None
