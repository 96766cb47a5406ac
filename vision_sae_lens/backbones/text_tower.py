"""Class text embeddings from a CLIP-like backbone's text tower, for zero-shot accuracy.

Zero-shot classification: each class name is put into prompt templates, the text tower embeds the
prompts, the unit embeddings of one class are averaged and renormalised (open_clip's own
``build_zero_shot_classifier`` does this step for every family here), and an image's class is the
text embedding its image embedding is most cosine-similar to. :func:`class_text_embeddings` returns
those (c, e) unit rows, or None when the backbone has no text tower (timm models, DINOv2, ViT
classifiers; timm CLIP towers are out of scope).

Same weights or nothing. The hooked backbone keeps only what an image needs (open_clip's
``ImageTower`` drops the text tower), so the text side is found or rebuilt here, once:

* a transformers ``CLIPModel`` / ``SiglipModel`` hooked by id keeps its text tower: it is used as is;
* a full open_clip model handed to ``HookedSAEViT.from_module`` likewise;
* an open_clip image tower: the full model is rebuilt from the same id (pretrained tag, ``hf-hub:``,
  ``local-dir:``) or from ``weights=`` (a local file, whose path the hooked model does not record), and
  used only when its image tower equals the hooked one tensor for tensor. Random-init models are
  therefore refused (a ``ConfigError``): their text tower cannot be reproduced from the id.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from vision_sae_lens.errors import ConfigError, UnknownBackboneError

if TYPE_CHECKING:
    from vision_sae_lens.backbones.hooked import HookedSAEViT

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
"""Prompt templates for class names of any dataset (ImageNet's 1000 classes get open_clip's own set)."""

_OPENAI_BPE_VOCAB = 49408  # open_clip's SimpleTokenizer (OpenAI CLIP BPE) vocabulary size
_WNID = re.compile(r"^n\d{8}$")


def class_text_embeddings(
    backbone: str | HookedSAEViT | nn.Module,
    class_names: Sequence[str],
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    templates: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    classes_per_batch: int = 32,
    progress: bool = False,
) -> torch.Tensor | None:
    """(classes, d_embed) L2-normalised text embeddings of ``class_names``, or None without a text tower.

    ``backbone``: a backbone id (``open_clip:ARCH/TAG``, ``open_clip:ARCH`` with ``weights=FILE``,
    ``hf:MODEL_ID_OR_DIR``, a local directory), a :class:`HookedSAEViT`, or a full open_clip / transformers
    CLIP model object. Class ``i`` of the result is ``class_names[i]``; ``templates`` (``str.format``
    strings with one ``{}``) default to :func:`zero_shot_prompts`. A text tower the model holds runs
    where the model is; a rebuilt one runs on ``device`` (default: the hooked model's device, else CPU)
    and is freed before returning. The result is float32 on that device. ``progress``: a progress bar over
    the batches of classes.

    Raises ``ConfigError`` when the text tower cannot be shown to belong to the image tower (random
    weights, ``pretrained=False``, a weights file whose path was not given) and the loading libraries'
    own errors when weights or a tokenizer cannot be loaded (e.g. offline).
    """
    names, templates = zero_shot_prompts(class_names, templates)
    text = _text_side(backbone, pretrained=pretrained, weights=weights, device=device)
    if text is None:
        return None
    from open_clip import build_zero_shot_classifier

    weights_ec = build_zero_shot_classifier(
        text,
        text.tokenize,
        names,
        list(templates),
        num_classes_per_batch=classes_per_batch,
        device=text.device,
        use_tqdm=progress,
    )
    return weights_ec.T.float().contiguous()


def zero_shot_prompts(
    class_names: Sequence[str], templates: Sequence[str] | None = None
) -> tuple[list[str], tuple[str, ...]]:
    """(readable class names, templates) for the prompts.

    ImageNet-1k label names (1000 WordNet ids, or names starting with ``tench``) become open_clip's
    ``IMAGENET_CLASSNAMES`` with its ``SIMPLE_IMAGENET_TEMPLATES``; other names get underscores turned
    into spaces and :data:`DEFAULT_TEMPLATES`. Explicit ``templates`` are kept.
    """
    names = [str(n) for n in class_names]
    if not names:
        raise ConfigError("zero-shot classification needs at least one class name")
    if templates is not None and (not templates or any("{}" not in t for t in templates)):
        raise ConfigError(f"each prompt template needs one '{{}}' for the class name, got {list(templates)}")
    if len(names) == 1000 and (all(_WNID.match(n) for n in names) or names[0].lower().startswith("tench")):
        from open_clip import IMAGENET_CLASSNAMES, SIMPLE_IMAGENET_TEMPLATES

        # open_clip keeps its templates as lambdas; called on "{}" they give the format strings.
        simple = tuple(t("{}") if callable(t) else str(t) for t in SIMPLE_IMAGENET_TEMPLATES)
        return list(IMAGENET_CLASSNAMES), tuple(templates or simple)
    return [n.replace("_", " ") for n in names], tuple(templates or DEFAULT_TEMPLATES)


# ------------------------------------------------------------------------------- finding the text side
def _text_side(
    backbone: Any, *, pretrained: bool, weights: str | Path | None, device: Any
) -> _TextSide | None:
    from vision_sae_lens.backbones.hooked import HookedSAEViT
    from vision_sae_lens.backbones.registry import open_clip_alias

    if isinstance(backbone, str):
        return _from_id(open_clip_alias(backbone), pretrained=pretrained, weights=weights, device=device)
    if isinstance(backbone, HookedSAEViT):
        module, backbone_id = backbone.backbone, open_clip_alias(backbone.backbone_id)
        recorded = backbone.spec.weights
    elif isinstance(backbone, nn.Module):
        module, backbone_id, recorded = backbone, "", None
    else:
        raise UnknownBackboneError(
            f"expected a backbone id, a HookedSAEViT or a model object, got {type(backbone).__name__}"
        )
    if _is_hf_dual(module):  # the text tower came along with the image side: same weights by construction
        source = getattr(module, "name_or_path", "") or backbone_id.removeprefix("hf:")
        return _HFText(module, _hf_tokenizer(source, backbone_id), _family(module))
    if hasattr(module, "encode_text"):  # a full open_clip model object
        return _OpenClipText(module, _open_clip_tokenizer_for(module, backbone_id))
    if hasattr(module, "visual") and backbone_id.startswith("open_clip:"):
        if recorded is not None and weights is None:
            raise ConfigError(
                f"{backbone_id} was loaded from the weights file {recorded.get('file')!r}, whose path is not "
                "recorded: pass class_text_embeddings(model, names, weights=PATH) (or text_embeddings= to "
                "measure_downstream)."
            )
        text = _open_clip_from_id(backbone_id, weights)
        if not _same_weights(text.model.visual, module.visual):
            raise ConfigError(
                f"the open_clip model rebuilt from {backbone_id!r} has other image-tower weights than the hooked "
                "one (random init, or other weights), so its text tower does not belong to this image tower; "
                "load the backbone from a pretrained tag or a weights file."
            )
        return text.without_visual().to(device or _device_of(module))
    return None  # timm, DINOv2, ViT classifiers, the demo ViTs: no text tower


def _from_id(
    backbone_id: str,
    *,
    pretrained: bool,
    weights: str | Path | None,
    device: Any,
) -> _TextSide | None:
    local = Path(backbone_id)
    if local.is_dir():  # the folders the registry loads: open_clip's, transformers' (timm's have no text)
        from vision_sae_lens.backbones.registry import local_dir_family

        family = local_dir_family(local)
        if family == "open_clip":
            backbone_id = f"open_clip:local-dir:{local}"
        elif family == "hf":
            backbone_id = f"hf:{local}"
    prefix, _, rest = backbone_id.partition(":")
    if prefix not in ("open_clip", "hf"):
        if prefix in ("timm", "demo") or local.is_dir():
            return None
        raise UnknownBackboneError(f"unknown backbone id {backbone_id!r} (see list_backbones())")
    if not pretrained:
        raise ConfigError(
            f"{backbone_id} with pretrained=False has random weights: a text tower built from the id would not "
            "be the one that belongs to the image tower. Zero-shot needs pretrained or local weights."
        )
    if prefix == "hf":
        return _hf_from_id(rest, device)
    return _open_clip_from_id(backbone_id, weights).without_visual().to(device or "cpu")


def _open_clip_from_id(backbone_id: str, weights: str | Path | None) -> _OpenClipText:
    """The full open_clip model of ``open_clip:ARCH/TAG`` (or ``ARCH`` + ``weights``), on the CPU."""
    import open_clip

    rest = backbone_id.removeprefix("open_clip:")
    schema = rest.startswith(("hf-hub:", "local-dir:"))
    arch, _, tag = (rest, "", "") if schema else rest.partition("/")
    source = str(weights) if weights is not None else tag
    if not schema and not source:
        raise ConfigError(
            f"{backbone_id} names no pretrained tag or weights file: random weights, whose text tower cannot be "
            f"rebuilt. Use open_clip:{arch}/TAG or weights=FILE."
        )
    model = open_clip.create_model(arch, pretrained=None if schema else source).eval()
    return _OpenClipText(model, open_clip.get_tokenizer(arch))


def _hf_from_id(source: str, device: Any) -> _HFText | None:
    import transformers as tf

    config = tf.AutoConfig.from_pretrained(source)
    archs = getattr(config, "architectures", None) or []
    if config.model_type not in ("clip", "siglip") or any(
        a.endswith("ForImageClassification") for a in archs
    ):
        return None
    dual = tf.CLIPModel if config.model_type == "clip" else tf.SiglipModel
    model = dual.from_pretrained(source, config=config).eval().to(device or "cpu")
    return _HFText(model, _hf_tokenizer(source, f"hf:{source}"), config.model_type)


# ------------------------------------------------------------------------------------- text sides
class _TextSide:
    """What ``open_clip.build_zero_shot_classifier`` needs: ``encode_text`` and a tokenizer."""

    model: Any  # an open_clip or transformers model (their methods are untyped for mypy)

    @property
    def device(self) -> torch.device:
        return _device_of(self.model)

    def tokenize(self, texts: list[str]) -> Any:
        raise NotImplementedError

    def encode_text(self, tokens: Any, normalize: bool = False) -> torch.Tensor:
        raise NotImplementedError


class _OpenClipText(_TextSide):
    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.model.encode_text(tokens, normalize=normalize)

    def without_visual(self) -> _OpenClipText:
        # encode_text never touches the image tower; dropping it halves what moves to the device.
        self.model.visual = nn.Identity()
        return self

    def to(self, device: Any) -> _OpenClipText:
        self.model.to(device)
        return self


class _HFText(_TextSide):
    def __init__(self, model: nn.Module, tokenizer: Any, family: str) -> None:
        self.model, self.tokenizer = model, tokenizer
        # SigLIP was trained on prompts padded to the full length and pools the last position.
        self.padding: bool | str = "max_length" if family == "siglip" else True

    def tokenize(self, texts: list[str]) -> Any:
        return self.tokenizer(texts, padding=self.padding, truncation=True, return_tensors="pt")

    def encode_text(self, tokens: Any, normalize: bool = False) -> torch.Tensor:
        inputs = {k: v for k, v in tokens.items() if k in ("input_ids", "attention_mask", "position_ids")}
        out = self.model.get_text_features(**inputs)
        # transformers 5 returns a model output holding the projected embedding; 4.x the tensor itself.
        features = out if isinstance(out, torch.Tensor) else out.pooler_output
        return F.normalize(features, dim=-1) if normalize else features


# ------------------------------------------------------------------------------------------ helpers
def _is_hf_dual(module: nn.Module) -> bool:
    return hasattr(module, "get_text_features") and hasattr(module, "text_model")


def _family(module: nn.Module) -> str:
    return str(getattr(getattr(module, "config", None), "model_type", "clip"))


def _hf_tokenizer(source: str, backbone_id: str) -> Any:
    import transformers as tf

    if not source:
        raise ConfigError(f"{backbone_id or 'the model'}: no id or folder to load its tokenizer from")
    return tf.AutoTokenizer.from_pretrained(source)


def _open_clip_tokenizer_for(model: nn.Module, backbone_id: str) -> Any:
    import open_clip

    if backbone_id.startswith("open_clip:"):
        rest = backbone_id.removeprefix("open_clip:")
        arch = rest if rest.startswith(("hf-hub:", "local-dir:")) else rest.partition("/")[0]
        return open_clip.get_tokenizer(arch)
    if isinstance(model, open_clip.CLIP) and getattr(model, "vocab_size", None) == _OPENAI_BPE_VOCAB:
        # What get_tokenizer gives every built-in CLIP config without its own tokenizer.
        return open_clip.SimpleTokenizer(context_length=int(model.context_length))
    raise ConfigError(
        f"cannot tell which tokenizer {type(model).__name__} needs; hook it with "
        "HookedSAEViT.from_module(model, backbone_id='open_clip:ARCH/TAG')."
    )


def _same_weights(a: Any, b: Any) -> bool:
    """True when both modules hold the same tensors (``b``'s dtype and device may differ)."""
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return False
    return all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k].to(sb[k].dtype), sb[k].detach().cpu()) for k in sa
    )


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
