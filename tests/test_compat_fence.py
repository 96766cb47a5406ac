"""The fence around SAELens and TransformerLens: only ``vision_sae_lens/compat.py`` reaches inside them.

Elsewhere the package may use their top-level public names (``from sae_lens import SAE``, ``sae_lens.SAE``,
``sae_lens.__version__``); a module below the top level (``sae_lens.training.x``) or a private name
(``_SAEWrapper``), imported or reached by attribute, must go through ``compat``. Parsed from the source,
so an offender fails here naming its file and line.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import vision_sae_lens

PACKAGE = Path(vision_sae_lens.__file__).parent
FENCED = ("sae_lens", "transformer_lens")


def _public_names(package: str) -> set[str]:
    """The names ``package`` exports at its top level (its ``__all__``), submodules excepted."""
    module = importlib.import_module(package)
    return {n for n in getattr(module, "__all__", ()) if not inspect.ismodule(getattr(module, n, None))}


PUBLIC = {package: _public_names(package) for package in FENCED}


def fence_breaches(source: str) -> list[str]:
    """``"line: what"`` for each deep or private use of a fenced library in ``source``."""
    tree = ast.parse(source)
    aliases = {name: name for name in FENCED}  # local name -> the fenced package it stands for
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FENCED:
                    if "." in alias.name:
                        found.append(f"{node.lineno}: import {alias.name}")
                    else:
                        aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in FENCED:
                names = [a.name for a in node.names]
                if "." in node.module or not set(names) <= PUBLIC[node.module]:
                    found.append(f"{node.lineno}: from {node.module} import {', '.join(names)}")
        elif isinstance(node, ast.Call) and _is_import_call(node):
            arg = node.args[0] if node.args else None
            module = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else ""
            if module.split(".")[0] in FENCED and "." in module:
                found.append(f"{node.lineno}: imports {module!r}")
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    for node in ast.walk(tree):
        chain = _attribute_chain(node) if id(node) not in inner else []
        if len(chain) > 1 and chain[0] in aliases:
            package, name = aliases[chain[0]], chain[1]
            if name not in PUBLIC[package] and not (name.startswith("__") and name.endswith("__")):
                found.append(f"{node.lineno}: {'.'.join([package, *chain[1:]])}")
    return sorted(found, key=lambda hit: int(hit.split(":")[0]))


def _is_import_call(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name in ("import_module", "__import__")


def _attribute_chain(node: ast.AST) -> list[str]:
    """``["sae_lens", "training", "x"]`` for the outermost attribute access ``sae_lens.training.x``."""
    if not isinstance(node, ast.Attribute):
        return []
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else []


def test_only_compat_reaches_inside_sae_lens_and_transformer_lens():
    breaches = [
        f"{path.relative_to(PACKAGE.parent)}:{hit}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "compat.py" or path.parent != PACKAGE
        for hit in fence_breaches(path.read_text())
    ]
    assert not breaches, "go through vision_sae_lens.compat (one probe per seam) instead:\n" + "\n".join(
        breaches
    )


def test_the_fence_catches_every_form_and_allows_the_public_top_level():
    caught = {
        "from sae_lens.training.sae_trainer import SAETrainerConfig\n": "1: from sae_lens.training.sae_trainer",
        "import sae_lens.loading.pretrained_sae_loaders as loaders\n": "1: import sae_lens.loading",
        "from sae_lens import _private\n": "1: from sae_lens import _private",
        "import sae_lens\nx = sae_lens.training.sae_trainer.SAETrainer\n": "2: sae_lens.training.sae_trainer",
        "import sae_lens as sl\nx = sl.loading.pretrained_saes_directory\n": "2: sae_lens.loading",
        "import sae_lens\nsae_lens._secret()\n": "2: sae_lens._secret",
        "import sae_lens\nx = sae_lens.training\n": "2: sae_lens.training",
        "from sae_lens import registry\n": "1: from sae_lens import registry",
        "import importlib\nimportlib.import_module('sae_lens.training')\n": "2: imports 'sae_lens.training'",
        "from transformer_lens.hook_points import HookPoint\n": "1: from transformer_lens.hook_points",
        "def f():\n    import transformer_lens.utils\n": "2: import transformer_lens.utils",
    }
    for source, hit in caught.items():
        assert any(b.startswith(hit) for b in fence_breaches(source)), (source, fence_breaches(source))
    allowed = (
        "import sae_lens\nfrom sae_lens import SAE, TopKTrainingSAE\n"
        "v = sae_lens.__version__\nc = sae_lens.SAE\nn = sae_lens.SAE.__name__\nsae_lens.register_sae_class\n"
        "from vision_sae_lens.compat import SAETrainerConfig\n"
        "import importlib\nimportlib.import_module('sae_lens')\n"
    )
    assert fence_breaches(allowed) == []
