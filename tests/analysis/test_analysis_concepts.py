"""Concept vocabularies: files, the dataset's labels and the built-ins load; bad files fail with a reason."""

from __future__ import annotations

import pytest

from vision_sae_lens.analysis import concepts as concepts_module
from vision_sae_lens.analysis.concepts import load_concepts
from vision_sae_lens.data.shapes_captions import FACTOR_PHRASES
from vision_sae_lens.errors import ConfigError, DataFileNotFoundError


def test_a_file_is_read_line_by_line(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\ufeff# colours\nred\n  dark blue  \n\nstriped fabric\n", encoding="utf-8")
    vocab = load_concepts(path)
    assert vocab.names == ["red", "dark blue", "striped fabric"]
    assert vocab.describe() == {"source": "vocab.txt", "count": 3, "sha256": vocab.sha256}
    assert vocab.sha256 != load_concepts(["red", "dark blue"]).sha256


def test_builtins_and_labels():
    general = load_concepts("builtin:general")
    assert len(general) > 1000 and {"red", "striped", "tench"} <= set(general.names)
    assert len({n.casefold() for n in general.names}) == len(general)
    assert load_concepts("builtin:shapes").names == list(FACTOR_PHRASES)
    # Repeated class names (ImageNet has two "crane"s) become one concept, in order.
    assert load_concepts("labels", label_names=["crane", "dog", "Crane"]).names == ["crane", "dog"]
    with pytest.raises(ConfigError, match="no label names"):
        load_concepts("labels", label_names=None)
    with pytest.raises(ConfigError, match="builtin:general"):
        load_concepts("builtin:everything")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "holds no concepts"),
        (b"# only a comment\n\n", "holds no concepts"),
        (b"red\nblue\nRed\n", "line 3 repeats line 1"),
        (b"red\x00blue\n", "binary"),
        (b"red\n\xff\xfe\xfa\n", "not UTF-8"),
        (b"red\nbl\x1bue\n", "line 2 contains control"),
        ("red\nblue\u200b\n".encode(), "control or invisible"),
        (b"x" * 300 + b"\n", "300 characters"),
    ],
)
def test_bad_files_are_refused_with_the_line(tmp_path, content, match):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=match):
        load_concepts(path)


def test_huge_missing_and_non_files(tmp_path, monkeypatch):
    path = tmp_path / "big.txt"
    path.write_bytes(b"word\n" * 10)
    monkeypatch.setattr(concepts_module, "MAX_FILE_BYTES", 20)
    with pytest.raises(ConfigError, match="MiB; the limit"):
        load_concepts(path)
    monkeypatch.setattr(concepts_module, "MAX_FILE_BYTES", 2**20)
    monkeypatch.setattr(concepts_module, "MAX_CONCEPTS", 5)
    with pytest.raises(ConfigError, match="the limit is 5"):
        load_concepts(path)
    with pytest.raises(DataFileNotFoundError):
        load_concepts(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_concepts(tmp_path)
