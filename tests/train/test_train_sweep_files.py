"""Sweep files are read as bounded regular files: a FIFO, a device, a folder or a huge file is refused
before it is read, a missing one or one that is not text gets a clear error."""

from __future__ import annotations

import os

import pytest

from vision_sae_lens.errors import ConfigError, DataFileNotFoundError, UnsafePathError
from vision_sae_lens.fsutil import MAX_JSON_BYTES
from vision_sae_lens.train import load_sweep


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "folder"])
def test_special_files_are_refused_before_reading(tmp_path, special):
    path = tmp_path / "sweep.toml"
    if special == "fifo":
        os.mkfifo(path)  # an open that waited for a writer would hang the test
    elif special == "folder":
        path.mkdir()
    else:
        path.symlink_to(special)
    with pytest.raises(UnsafePathError, match="not a regular file"):
        load_sweep(path)


def test_a_huge_sweep_file_is_refused(tmp_path):
    path = tmp_path / "huge.toml"
    with open(path, "wb") as f:
        f.truncate(MAX_JSON_BYTES + 1)  # sparse: no disk used
    with pytest.raises(UnsafePathError, match="larger than"):
        load_sweep(path)


def test_a_missing_or_binary_sweep_file_says_so(tmp_path):
    with pytest.raises(DataFileNotFoundError, match="sweep file not found") as raised:
        load_sweep(tmp_path / "nope.toml")
    assert isinstance(raised.value, FileNotFoundError)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_sweep(binary)
