"""One test per SAELens / TransformerLens seam fenced in vision_sae_lens.compat; each fails naming its seam."""

from __future__ import annotations

import ast
import pathlib

import pytest

import vision_sae_lens
from vision_sae_lens import compat


@pytest.mark.parametrize("seam", list(compat.SEAMS))
def test_seam_holds(seam):
    compat.SEAMS[seam]()


def test_a_broken_seam_fails_loudly_naming_it(monkeypatch):
    monkeypatch.delattr(compat.SAEWrapper, "set_token_mask")
    with pytest.raises(compat.CompatError, match="sae_lens _SAEWrapper"):
        compat.SEAMS["sae_lens _SAEWrapper"]()


def test_private_names_are_imported_only_in_compat():
    """No other module imports sae_lens / transformer_lens private names or the deprecated
    ``transformer_lens.hook_points.HookedRootModule`` path."""
    root = pathlib.Path(vision_sae_lens.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.split(".")[0]
                in (
                    "sae_lens",
                    "transformer_lens",
                )
            ):
                names = [a.name for a in node.names]
                if node.module.startswith("sae_lens.analysis") or any(n.startswith("_") for n in names):
                    offenders.append(f"{path.name}: from {node.module} import {names}")
                if node.module == "transformer_lens.hook_points" and "HookedRootModule" in names:
                    offenders.append(f"{path.name}: deprecated HookedRootModule path")
    assert not offenders, offenders
