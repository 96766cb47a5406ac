"""Concept vocabularies for naming latents: a user's file, the dataset's class names, or a built-in list.

``load_concepts(spec)`` takes a path to a text file (one concept per line; blank lines and lines
starting with ``#`` are skipped; UTF-8), ``"labels"`` (the store's class names), ``"builtin:general"``
(open_clip's ImageNet class names, the 47 texture names of the Describable Textures Dataset, 11 basic
colour terms and a few shapes) or ``"builtin:shapes"`` (one phrase per factor of the synthetic shapes
world, the sentences ``demo:shapes-clip`` was trained on), or a list of strings. Every vocabulary is
checked before any work: not empty, no duplicates (ignoring case, as CLIP tokenizers do), no control
characters, bounded length; a file must be a regular UTF-8 text file of bounded size.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vision_sae_lens.errors import ConfigError, DataFileNotFoundError

BUILTINS = ("builtin:general", "builtin:shapes")
MAX_FILE_BYTES = 16 * 2**20
"""A concepts file larger than this is refused (20,000 concepts take about 0.3 MB)."""
MAX_CONCEPTS = 200_000
MAX_CONCEPT_CHARS = 200

COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray")
"""Berlin & Kay's 11 basic colour terms."""
DTD_TEXTURES = (
    "banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked", "crosshatched",
    "crystalline", "dotted", "fibrous", "flecked", "freckled", "frilly", "gauzy", "grid", "grooved",
    "honeycombed", "interlaced", "knitted", "lacelike", "lined", "marbled", "matted", "meshed", "paisley",
    "perforated", "pitted", "pleated", "polka-dotted", "porous", "potholed", "scaly", "smeared", "spiralled",
    "sprinkled", "stained", "stratified", "striped", "studded", "swirly", "veined", "waffled", "woven",
    "wrinkled", "zigzagged",
)  # fmt: skip
"""The 47 categories of the Describable Textures Dataset (Cimpoi et al. 2014)."""
SHAPES = ("circle", "square", "triangle", "cross", "ring", "line", "curve", "corner", "edge", "grid")


@dataclass(frozen=True)
class Concepts:
    """A checked concept vocabulary."""

    names: list[str]
    """The concepts, in file order."""
    source: str
    """Where they came from: a file name (never its path), ``labels``, ``builtin:...`` or ``list``."""

    @property
    def sha256(self) -> str:
        """Hash of the vocabulary (names joined by newlines), to tell two vocabularies apart."""
        return hashlib.sha256("\n".join(self.names).encode()).hexdigest()

    def describe(self) -> dict[str, object]:
        """The record written into names.json."""
        return {"source": self.source, "count": len(self.names), "sha256": self.sha256}

    def __len__(self) -> int:
        return len(self.names)


def load_concepts(
    spec: str | Path | Sequence[str] | Concepts, *, label_names: Sequence[str] | None = None
) -> Concepts:
    """A :class:`Concepts` from a file path, ``"labels"``, a ``builtin:`` name or a list (module docstring)."""
    if isinstance(spec, Concepts):
        return spec
    if isinstance(spec, (list, tuple)):
        return Concepts(check_concepts([str(s) for s in spec], what="the concept list"), "list")
    text = str(spec)
    if text == "labels":
        if not label_names:
            raise ConfigError(
                "concepts 'labels' asks for the dataset's class names, but the store has no label names; "
                "pass a concepts file or builtin:general"
            )
        # Class names may repeat (ImageNet has two "crane"s): one concept each, first spelling kept.
        unique = _first_spellings(str(n).strip() for n in label_names)
        return Concepts(check_concepts(unique, what="the label names"), "labels")
    if text.startswith("builtin:"):
        if text == "builtin:shapes":
            from vision_sae_lens.data.shapes_captions import FACTOR_PHRASES

            return Concepts(list(FACTOR_PHRASES), text)
        if text == "builtin:general":
            return Concepts(general_concepts(), text)
        raise ConfigError(f"unknown built-in vocabulary {text!r}; choose one of {', '.join(BUILTINS)}")
    path = Path(text).expanduser()
    return Concepts(read_concepts_file(path), path.name)


def general_concepts() -> list[str]:
    """The ``builtin:general`` vocabulary (see the module docstring), first spelling of each name kept."""
    from open_clip import IMAGENET_CLASSNAMES

    return _first_spellings((*COLOURS, *DTD_TEXTURES, *SHAPES, *IMAGENET_CLASSNAMES))


def _first_spellings(names: Iterable[str]) -> list[str]:
    """``names`` in order without repeats (ignoring case), the first spelling of each kept."""
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(name.casefold(), name)
    return list(seen.values())


def read_concepts_file(path: Path) -> list[str]:
    """The concepts of a text file, one per line, checked (see the module docstring)."""
    if not path.exists():
        raise DataFileNotFoundError(f"concepts file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"concepts file {path} is not a regular file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConfigError(
            f"concepts file {path} is {size / 2**20:.1f} MiB; the limit is {MAX_FILE_BYTES // 2**20} MiB "
            f"({MAX_CONCEPTS:,} concepts of up to {MAX_CONCEPT_CHARS} characters). Is it the right file?"
        )
    with open(path, "rb") as fh:
        data = fh.read(MAX_FILE_BYTES + 1)
    if b"\0" in data:
        raise ConfigError(f"concepts file {path} contains NUL bytes: it is a binary file, not a text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"concepts file {path} is not UTF-8 text (byte {exc.start} cannot be decoded); save it as UTF-8"
        ) from exc
    names, lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        concept = line.strip()
        if concept and not concept.startswith("#"):
            names.append(concept)
            lines.append(number)
    return check_concepts(names, what=f"concepts file {path}", lines=lines)


def check_concepts(names: list[str], *, what: str, lines: list[int] | None = None) -> list[str]:
    """``names`` stripped, or a ConfigError naming the first problems (and their line numbers)."""
    where = lines or list(range(1, len(names) + 1))
    label = "line" if lines else "entry"
    names = [n.strip() for n in names]
    if not names:
        raise ConfigError(f"{what} holds no concepts; give at least one (one per line)")
    if len(names) > MAX_CONCEPTS:
        raise ConfigError(f"{what} holds {len(names):,} concepts; the limit is {MAX_CONCEPTS:,}")
    problems = []
    first: dict[str, int] = {}
    for name, at in zip(names, where, strict=True):
        if not name:
            problems.append(f"{label} {at} is empty")
        elif any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co") for ch in name):
            problems.append(f"{label} {at} contains control or invisible characters ({name!r})")
        elif len(name) > MAX_CONCEPT_CHARS:
            problems.append(f"{label} {at} is {len(name)} characters long (limit {MAX_CONCEPT_CHARS})")
        elif name.casefold() in first:
            problems.append(f"{label} {at} repeats {label} {first[name.casefold()]} ({name!r})")
        else:
            first[name.casefold()] = at
        if len(problems) >= 5:
            break
    if problems:
        raise ConfigError(f"{what} is not a usable vocabulary: " + "; ".join(problems) + ". Fix these lines.")
    return names
