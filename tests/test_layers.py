"""No stage imports a stage above it: the layering of docs/architecture.md, enforced on the source.

The order is written once, in ``vision_sae_lens._layers.STAGES`` (bottom first). A module may import
modules of its own layer or of layers below. Every import counts, also those inside functions (they
run too) and those under ``TYPE_CHECKING`` (a type is a dependency).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import vision_sae_lens
from vision_sae_lens._layers import STAGES, layer_of

PACKAGE = Path(vision_sae_lens.__file__).parent


def imports(source: str) -> Iterator[tuple[int, str]]:
    """``(line, module)`` of every import in ``source``, wherever it stands (a function, ``TYPE_CHECKING``)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import x` imports the module pkg.x when there is one, else pkg's attribute x.
            yield from ((node.lineno, _module_or_parent(f"{node.module}.{a.name}")) for a in node.names)
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)


def upward_imports(module: str, source: str) -> list[str]:
    """``"line: imported.module (layer)"`` for each import in ``source`` of a layer above ``module``'s."""
    own = layer_of(module)
    found = []
    for line, name in imports(source):
        target = layer_of(name)
        if own is not None and target is not None and target > own:
            found.append(f"{line}: {name} ({'/'.join(STAGES[target]) or 'the package'})")
    return found


def _module_or_parent(dotted: str) -> str:
    relative = PACKAGE.parent.joinpath(*dotted.split("."))
    is_module = relative.with_suffix(".py").is_file() or (relative / "__init__.py").is_file()
    return dotted if is_module else dotted.rpartition(".")[0]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_module_has_a_layer():
    unplaced = [_module_name(p) for p in PACKAGE.rglob("*.py") if layer_of(_module_name(p)) is None]
    assert not unplaced, f"modules in no layer of vision_sae_lens._layers.STAGES: {unplaced}"


def test_no_stage_imports_a_stage_above_it():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for hit in upward_imports(_module_name(path), path.read_text()):
            upward.append(f"{path.relative_to(PACKAGE.parent)}:{hit}")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_check_catches_upward_imports_and_allows_downward_ones():
    assert upward_imports("vision_sae_lens.errors", "from vision_sae_lens.demo import pipeline\n")
    assert upward_imports(
        "vision_sae_lens.data.sources", "def f():\n    import vision_sae_lens.store.reader\n"
    )
    assert upward_imports("vision_sae_lens.layout", "from vision_sae_lens import backbones\n")
    assert not upward_imports("vision_sae_lens.demo.pipeline", "from vision_sae_lens.store import reader\n")
    assert not upward_imports(
        "vision_sae_lens.store.reader", "from vision_sae_lens.layout import TokenLayout\n"
    )


def import_circles(stage: str) -> list[list[str]]:
    """Every circle of imports among the modules of ``stage`` (its ``__init__`` left out: it re-exports)."""
    folder = PACKAGE / stage
    edges = {
        _module_name(p): {
            name for _, name in imports(p.read_text()) if name.startswith(vision_sae_lens.__name__)
        }
        for p in sorted(folder.glob("*.py"))
        if p.name != "__init__.py"
    }
    circles, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(edges.get(module, ())):
            if target in path:
                circles.append([*path[path.index(target) :], target])
            elif target in edges and target not in done:
                visit(target, [*path, target])
        done.add(module)

    for module in edges:
        if module not in done:
            visit(module, [module])
    return circles


def test_the_store_stage_has_no_import_circle():
    # The readers (reader.py) bind shuffle.py's functions as methods; shuffle.py states what it needs of a
    # store as a Protocol, so neither imports the other both ways, not even for types.
    assert import_circles("store") == []


def test_the_circle_check_finds_a_circle(tmp_path, monkeypatch):
    stage = tmp_path / "vision_sae_lens" / "loop"
    stage.mkdir(parents=True)
    (stage / "a.py").write_text("from vision_sae_lens.loop import b\n")
    (stage / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vision_sae_lens.loop.a import X\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "vision_sae_lens")
    circles = import_circles("loop")
    assert circles and {"vision_sae_lens.loop.a", "vision_sae_lens.loop.b"} <= set(circles[0])
