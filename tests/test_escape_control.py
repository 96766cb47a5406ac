"""Names from files and users never drive the terminal: control characters in logged names and in error
messages are escaped (a real file named with an ANSI escape and a newline, through the real command)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import random_images

from vision_sae_lens.errors import ImageInputError, StoreError

EVIL = "bad\x1b[31mred\nINFO forged line \u202e"


def test_escape_control_writes_repr_style_escapes():
    from vision_sae_lens.errors import escape_control

    assert escape_control(EVIL) == "bad\\x1b[31mred\\nINFO forged line \\u202e"
    assert escape_control("tab\there\r\x00\x7f\x9b") == "tab\\there\\r\\x00\\x7f\\x9b"
    assert escape_control("plain/ünïcode name.png") == "plain/ünïcode name.png"  # printable text is kept
    assert (
        str(ImageInputError(f"cannot read {EVIL}"))
        == "cannot read bad\\x1b[31mred\\nINFO forged line \\u202e"
    )
    assert isinstance(StoreError("x"), RuntimeError)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, "-m", "vision_sae_lens", *args], capture_output=True, env=env, timeout=300
    )


def _assert_no_raw_control(output: bytes) -> str:
    text = output.decode("utf-8")
    assert "\x1b" not in text and "\u202e" not in text
    assert not any(line.startswith("INFO forged") for line in text.splitlines())
    return text


def test_an_error_naming_a_path_is_one_escaped_line(tmp_path, capsys):
    from vision_sae_lens.cli import main

    assert main(["store", str(tmp_path / EVIL)]) == 1
    err = _assert_no_raw_control(capsys.readouterr().err.encode())
    assert len(err.strip().splitlines()) == 1 and "bad\\x1b[31mred\\nINFO forged line" in err


def test_the_command_line_log_format_escapes_names():
    import logging

    from vision_sae_lens.cli import LOG_FORMAT, EscapingFormatter

    record = logging.LogRecord(
        "vision_sae_lens.x", logging.WARNING, __file__, 1, "skipping %s", (EVIL,), None
    )
    line = EscapingFormatter(LOG_FORMAT).format(record)
    _assert_no_raw_control(line.encode())
    assert line.endswith("skipping bad\\x1b[31mred\\nINFO forged line \\u202e")


@pytest.mark.slow
def test_recording_logs_an_evil_file_name_escaped(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    random_images(1, size=(28, 28))[0].save(folder / "ok.png")
    (folder / f"{EVIL}.png").write_bytes(
        b"\x89PNG\r\n\x1a\n not an image"
    )  # unreadable: it is logged and skipped
    proc = _run(
        "cache", "--model", "demo:mnist-vit", "--images", str(folder), "--sites", "blocks.0.hook_resid_post",
        "--out", str(tmp_path / "store"), "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    err = _assert_no_raw_control(proc.stderr)
    assert "skipping image" in err and "bad\\x1b[31mred\\nINFO forged line \\u202e.png" in err
    _assert_no_raw_control(proc.stdout)
