"""One error hierarchy: the package raises its own classes (each also the builtin a caller catches).

Parsed from the source, so a new ``raise ValueError(...)`` fails here with its file and line. The
classes themselves are checked to derive from both ``VisionSAELensError`` and their builtin.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import vision_sae_lens
from vision_sae_lens import errors

PACKAGE = Path(vision_sae_lens.__file__).parent
BUILTINS = {
    "ValueError",
    "KeyError",
    "TypeError",
    "FileNotFoundError",
    "RuntimeError",
    "OSError",
    "IndexError",
}
# Raised where Python's own protocol asks for the builtin (json's `default` hook must raise TypeError).
ALLOWED = {("benchmark/report.py", "TypeError")}


def bare_raises(rel: str, source: str) -> list[str]:
    """``"file:line raises Name"`` for each ``raise <builtin>(...)`` in ``source`` that is not allowed."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            name = getattr(node.exc.func, "id", None)
            if name in BUILTINS and (rel, name) not in ALLOWED:
                found.append(f"{rel}:{node.lineno} raises {name}")
    return found


def test_the_package_raises_only_its_own_errors():
    found = [
        hit
        for path in sorted(PACKAGE.rglob("*.py"))
        for hit in bare_raises(path.relative_to(PACKAGE).as_posix(), path.read_text())
    ]
    assert not found, "raise an error of vision_sae_lens.errors instead:\n" + "\n".join(found)


def test_every_error_class_is_ours_and_a_builtin():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, Exception)]
    for cls in classes:
        if cls is errors.VisionSAELensError or issubclass(cls, Warning):
            continue
        assert issubclass(cls, errors.VisionSAELensError), cls
        builtins = [
            b
            for b in cls.__mro__
            if b.__module__ == "builtins" and b not in (Exception, BaseException, object)
        ]
        assert builtins, f"{cls.__name__} derives from no builtin a caller would catch"


def test_the_check_itself_can_fail():
    assert bare_raises("x.py", "def f():\n    raise ValueError('x')\n") == ["x.py:2 raises ValueError"]
    assert not bare_raises("x.py", "def f():\n    raise ConfigError('x')\n")
    assert not bare_raises("benchmark/report.py", "raise TypeError('json')\n")  # the allowed protocol case
