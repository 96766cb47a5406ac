"""Captions of the synthetic shapes world, built from each object's exact factors.

An object described by every family reads ``"a large red striped disc at the top left"``; a *partial*
description keeps some families and says ``shape`` for a missing shape (``"a red shape"``,
``"a shape at the left"``, ``"a small striped triangle"``). A caption joins object descriptions with
``" and "``. :data:`FACTOR_PHRASES` names each factor with the one-family description, so the phrases a
namer is asked about are the same sentences the image-text model ``demo:shapes-clip`` was trained on
(``scripts/train_shapes_clip.py``). :func:`random_caption` returns, beside the text, what it claims
(one ``(F,)`` factor row per described object), so a trainer knows exactly which images a caption fits.
"""

from __future__ import annotations

import numpy as np

from vision_sae_lens.data.synthetic import FACTOR_INDEX, FACTOR_NAMES, FAMILIES, Scene, ShapeObject

_ORDER = ("size", "color", "texture", "shape", "x", "y")
"""Families in the order an English description puts them."""


def describe(values: dict[str, str]) -> str:
    """The description of one object from ``{family: value}`` (any non-empty subset of the families)."""
    words = ["a"]
    words += [values[f] for f in ("size", "color", "texture") if f in values]
    words.append(values.get("shape", "shape"))
    place = " ".join(values[f] for f in ("y", "x") if f in values)
    if place:
        words += ["at", "the", place]
    return " ".join(words)


FACTOR_PHRASES: tuple[str, ...] = tuple(describe({n.split("=")[0]: n.split("=")[1]}) for n in FACTOR_NAMES)
"""One phrase per factor, in :data:`~vision_sae_lens.data.synthetic.FACTOR_NAMES` order
(``shape=disc`` -> ``"a disc"``, ``color=red`` -> ``"a red shape"``, ``x=left`` -> ``"a shape at the left"``)."""


def object_values(obj: ShapeObject) -> dict[str, str]:
    """``{family: value}`` of an object (its position from its centre, as the factor labels)."""
    return dict(name.split("=") for name in obj.factors)


def full_caption(scene: Scene) -> str:
    """Every object of ``scene`` with every family, in drawing order."""
    return " and ".join(describe(object_values(o)) for o in scene.objects)


def random_caption(scene: Scene, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """A partial caption of ``scene`` and its claims: ``(n_described, F)`` bool, one row per described
    object holding the factors its description names.

    A random non-empty subset of the objects (random order), each with a random number (1 to 6,
    uniform) of random families, so one-family phrases (:data:`FACTOR_PHRASES`) are as common as full
    descriptions.
    """
    objects = list(scene.objects)
    keep = rng.random(len(objects)) < 0.5
    keep[rng.integers(len(objects))] = True
    order = rng.permutation(np.flatnonzero(keep))
    parts, claims = [], np.zeros((len(order), len(FACTOR_NAMES)), dtype=bool)
    for row, o in enumerate(order):
        values = object_values(objects[o])
        families = rng.choice(len(_ORDER), size=int(rng.integers(1, len(_ORDER) + 1)), replace=False)
        kept = {_ORDER[f]: values[_ORDER[f]] for f in families}
        parts.append(describe(kept))
        claims[row, [FACTOR_INDEX[f"{fam}={v}"] for fam, v in kept.items()]] = True
    return " and ".join(parts), claims


def caption_words() -> list[str]:
    """Every word a caption can use (the vocabulary of ``demo:shapes-clip``'s tokenizer)."""
    words = {"a", "and", "at", "the", "shape"}
    for values in FAMILIES.values():
        words.update(values)
    return sorted(words)
