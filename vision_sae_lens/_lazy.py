"""Lazy package attributes: a public name loads the module that defines it on first use.

As huggingface_hub does, so that ``import vision_sae_lens`` and ``vision-sae-lens --help`` stay cheap
(no torch, no SAELens) while ``from vision_sae_lens import HookedSAEViT`` keeps working.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    namespace: dict[str, Any], exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for the package whose ``globals()`` is ``namespace``.

    ``exports`` maps each public name to the module that defines it; a name whose module is the
    package's own submodule of that name resolves to the submodule itself.
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(exports[name])
        value = module if exports[name] == f"{package}.{name}" else getattr(module, name)
        namespace[name] = value  # later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__


def add_arguments_on_use(
    parser: argparse.ArgumentParser, populate: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """Run ``populate(parser)`` only when ``parser`` parses or prints its help.

    For a sub-command whose flags are generated from heavy imports (SAELens' config classes): the
    top-level ``--help`` and every other sub-command then start without those imports.
    """
    parser.__class__ = _ArgumentsOnUse
    parser._populate = populate  # type: ignore[attr-defined]  # read by _ArgumentsOnUse
    return parser


class _ArgumentsOnUse(argparse.ArgumentParser):
    _populate: Callable[[argparse.ArgumentParser], None] | None

    def _ensure(self) -> None:
        populate, self._populate = self._populate, None
        if populate is not None:
            populate(self)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._ensure()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._ensure()
        return super().format_help()

    def format_usage(self) -> str:
        self._ensure()
        return super().format_usage()
