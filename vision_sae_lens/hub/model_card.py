"""The README.md model card written by ``push_to_hub``.

YAML front matter (``library_name: saelens``, tags, ``base_model`` when the backbone maps to a Hub
model), a table of the SAEs (site, tokens, architecture, d_sae, L0, NMSE, explained variance,
downstream fraction recovered, read from each folder's ``eval.json`` when present) and a usage
snippet that loads them with plain SAELens.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import ModelCard, ModelCardData

TAGS = ["sparse-autoencoder", "saelens", "vision", "interpretability", "vision_sae_lens"]


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
