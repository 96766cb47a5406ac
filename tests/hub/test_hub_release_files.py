"""Release files a user adds: regular files of bounded size only, clear errors for what is not a release
file, names printed with control characters escaped; the saev converter's name is written once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from helpers import SPECIAL_FILES, plant_special_file

import vision_sae_lens
from vision_sae_lens.errors import ConfigError, HubError, UnsafePathError
from vision_sae_lens.hub.registry import (
    SAEV_CONVERSION,
    add_releases,
    format_release_table,
    list_vision_releases,
    vision_releases,
)

RELEASE = {
    "repo_id": "someone/vision-saes",
    "model": "timm:vit_tiny_patch16_224",
    "saes": [{"id": "blocks.3.hook_resid_post", "path": "blocks.3.hook_resid_post", "d_sae": 512}],
}


@pytest.fixture
def added():
    """Names added to the registry by a test, removed again afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        vision_releases().pop(name, None)


def test_a_release_file_adds_its_releases(tmp_path, added):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"my-release": RELEASE}))
    added += add_releases(path)
    assert added == ["my-release"]
    assert vision_releases()["my-release"].repo_id == "someone/vision-saes"


@pytest.mark.parametrize("special", sorted(SPECIAL_FILES))
def test_special_and_huge_files_are_refused_before_parsing(tmp_path, special):
    path = tmp_path / "releases.yaml"
    plant_special_file(path, special)
    with pytest.raises(UnsafePathError, match=SPECIAL_FILES[special]):
        add_releases(path)


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        (b"a: [unclosed", ConfigError, "not valid YAML"),
        (b"- a\n- b\n", ConfigError, "must map release names"),
        (b"rel: just a string\n", ConfigError, "not a mapping"),
        (b"rel: {repo_id: x/y}\n", HubError, r"lacks \['model', 'saes'\]"),
        (b"\xff\xfe\x00garbage", ConfigError, "not a UTF-8 text file"),
    ],
)
def test_what_is_not_a_release_file_gets_a_clear_error(tmp_path, content, error, match):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(error, match=match):
        add_releases(path)


def test_the_release_table_escapes_control_characters(tmp_path, added):
    path = tmp_path / "evil.yaml"
    path.write_text(yaml.safe_dump({"evil\x1b[2J\nforged": {**RELEASE, "source": "me\rtoo"}}))
    added += add_releases(path)
    table = format_release_table([r for r in list_vision_releases() if r["release"] in added])
    assert "\x1b" not in table and "\r" not in table and len(table.splitlines()) == 2
    assert "evil\\x1b[2J\\nforged" in table and "me\\rtoo" in table


def test_the_saev_converter_name_is_defined_once_and_is_what_the_shipped_file_names():
    package = Path(vision_sae_lens.__file__).parent
    definitions = [
        f"{path.relative_to(package)}:{node.lineno}"
        for path in package.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        and any(isinstance(t, ast.Name) and t.id == "SAEV_CONVERSION" for t in _targets(node))
    ]
    assert [where.split(":")[0] for where in definitions] == ["hub/registry.py"], definitions
    shipped = yaml.safe_load((package / "hub" / "vision_releases.yaml").read_text())
    assert {r.get("conversion_func") for r in shipped.values()} <= {SAEV_CONVERSION, None}


def _targets(node: ast.Assign | ast.AnnAssign) -> list[ast.expr]:
    return list(node.targets) if isinstance(node, ast.Assign) else [node.target]
