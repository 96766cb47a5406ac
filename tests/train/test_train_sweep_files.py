"""Sweep files are read as bounded regular files: a FIFO, a device, a folder or a huge file is refused
before it is read, a missing one or one that is not text gets a clear error."""

from __future__ import annotations

import pytest
from helpers import SPECIAL_FILES, plant_special_file

from vision_sae_lens.errors import ConfigError, DataFileNotFoundError, UnsafePathError
from vision_sae_lens.train import load_sweep


@pytest.mark.parametrize("special", sorted(SPECIAL_FILES))
def test_special_and_huge_files_are_refused_before_reading(tmp_path, special):
    path = tmp_path / "sweep.toml"
    plant_special_file(path, special)
    with pytest.raises(UnsafePathError, match=SPECIAL_FILES[special]):
        load_sweep(path)


def test_a_missing_or_binary_sweep_file_says_so(tmp_path):
    with pytest.raises(DataFileNotFoundError, match="sweep file not found") as raised:
        load_sweep(tmp_path / "nope.toml")
    assert isinstance(raised.value, FileNotFoundError)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_sweep(binary)
