"""``train``'s flags, generated from the dataclasses: every ``TrainConfig`` field and every field of
SAELens' training SAE configs (all registered architectures), with their docstrings and defaults.

Flags default to ``None`` in argparse so the command knows what was given; the help shows the
dataclass default (or the architecture's, where they differ). Docstrings are read with
``simple_parsing`` (SAELens' own config parser), which understands both attribute docstrings and
the ``Args:`` sections of SAELens' classes.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from simple_parsing.docstring import get_attribute_docstring

from vision_sae_lens.train.config import ARCHITECTURE_DEFAULTS, TrainConfig

# Given positionally or by their own dedicated flags, or managed by the package.
_TRAIN_SKIP = {"store", "site", "sae"}
_SAE_SKIP = {"d_in", "metadata", "device"}
# SAELens' base SAE config documents these in a form simple_parsing does not read.
_BASE_DOCS = {
    "d_sae": "Number of latents of the SAE.",
    "dtype": "Parameter dtype of the SAE.",
    "apply_b_dec_to_input": "Subtract the decoder bias from the input before encoding.",
    "normalize_activations": "none, expected_average_only_in (scale rows to norm sqrt(d_in); folded into the "
    "saved weights), constant_norm_rescale, layer_norm or covariance_whitening.",
    "reshape_activations": "none or hook_z (attention heads flattened).",
}


def add_train_config_arguments(parser: argparse.ArgumentParser) -> list[str]:
    """Add ``--<field>`` for every TrainConfig field; returns the field names."""
    group = parser.add_argument_group("training (TrainConfig fields)")
    names = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in _TRAIN_SKIP:
            continue
        _add(group, TrainConfig, f, default_text=_default_text(f))
        names.append(f.name)
    return names


def add_sae_config_arguments(parser: argparse.ArgumentParser) -> list[str]:
    """Add ``--<field>`` for every field of every SAELens training SAE config; returns the names."""
    from vision_sae_lens.compat import SAE_TRAINING_CLASS_REGISTRY

    group = parser.add_argument_group(
        "SAE (SAELens *TrainingSAEConfig fields; each applies to the architectures that have it)"
    )
    seen: dict[str, tuple[type, dataclasses.Field, dict[str, str]]] = {}
    for arch, (_, cfg_cls) in sorted(SAE_TRAINING_CLASS_REGISTRY.items()):
        for f in dataclasses.fields(cfg_cls):
            if f.name in _SAE_SKIP:
                continue
            cls, field, defaults = seen.setdefault(f.name, (cfg_cls, f, {}))
            if not _doc(cls, f.name) and _doc(cfg_cls, f.name):
                seen[f.name] = (cfg_cls, f, defaults)
            value = ARCHITECTURE_DEFAULTS.get(arch, {}).get(f.name, _default_text(f))
            defaults[arch] = str(value)
    for cls, field, defaults in seen.values():
        values = sorted(set(defaults.values()))
        if len(values) == 1:
            text = values[0] + ("" if len(defaults) > 3 else f" ({', '.join(sorted(defaults))})")
        else:
            text = "; ".join(
                f"{v} for {', '.join(a for a, dv in sorted(defaults.items()) if dv == v)}" for v in values
            )
        _add(group, cls, field, default_text=text)
    return list(seen)


def _add(group: Any, cls: type, f: dataclasses.Field, *, default_text: str) -> None:
    kind, optional = _base_type(cls, f)
    text = " ".join((_doc(cls, f.name) or f.name).replace("``", "").replace("%", "%%").split())
    help_text = f"{text} (default: {default_text.replace('%', '%%')})"
    flag = "--" + f.name.replace("_", "-")
    if kind is bool:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        return
    parse = _parser(kind, optional)
    group.add_argument(flag, type=parse, default=None, metavar=f.name.upper(), dest=f.name, help=help_text)


def _doc(cls: type, name: str) -> str:
    doc = get_attribute_docstring(cls, name)
    text = (
        doc.docstring_below or doc.desc_from_cls_docstring or doc.comment_inline or _BASE_DOCS.get(name, "")
    )
    return text.strip()


def _base_type(cls: type, f: dataclasses.Field) -> tuple[Any, bool]:
    hint = typing.get_type_hints(cls).get(f.name, str)
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return (inner[0] if len(inner) == 1 else str), type(None) in args
    if origin is typing.Literal:
        return str, False
    if origin in (list, tuple) and args:
        return (list, args[0]), False
    return (hint if hint in (int, float, str, bool) else str), False


def _parser(kind: Any, optional: bool):
    def parse(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        if isinstance(kind, tuple):  # list[int] and the like: comma-separated
            return [_parser(kind[1], False)(part) for part in text.split(",") if part.strip()]
        if kind is int:
            return int(float(text)) if "e" in text.lower() else int(text)
        if kind is float:
            return float(text)
        return text

    parse.__name__ = "list" if isinstance(kind, tuple) else getattr(kind, "__name__", "value")
    return parse


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return str(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return str(f.default_factory())  # type: ignore[misc]
    return "required"
