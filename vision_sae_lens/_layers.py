"""The layers of the package, bottom first: a module may import its own layer and the ones below.

``tests/test_layers.py`` parses every import of the package and fails on an upward one, so this tuple
is the one place where the architecture of docs/architecture.md is written down for the code.
"""

from __future__ import annotations

PACKAGE = "vision_sae_lens"

STAGES: tuple[tuple[str, ...], ...] = (
    # foundation: no stage, imported by all
    (
        "errors",
        "_lazy",
        "_layers",
        "layout",
        "metadata",
        "names_format",
        "contracts",
        "fsutil",
        "compat",
        "cpu_memory",
        "normalization",
    ),
    ("data",),
    ("splice", "backbones"),
    ("store",),
    ("train",),
    ("hub",),
    ("analysis",),
    ("benchmark",),
    ("demo",),
    # entry points: the package's public face and the command line
    ("", "cli", "__main__"),
)
"""Module names relative to the package (``""`` is the package itself); a name covers its submodules."""


def layer_of(module: str) -> int | None:
    """The layer index of a dotted module name of this package (None if it is outside the package)."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    relative = module[len(PACKAGE) + 1 :]
    for index, names in enumerate(STAGES):
        for name in names:
            if name and (relative == name or relative.startswith(name + ".")):
                return index
    return len(STAGES) - 1 if relative == "" else None
