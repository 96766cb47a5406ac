"""Start-up stays cheap: the package and the CLI's --help import neither torch nor SAELens."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vision_sae_lens.cli import build_parser


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(out.split())


@pytest.mark.parametrize(
    "code",
    [
        "import vision_sae_lens",
        "from vision_sae_lens.cli import build_parser; build_parser().format_help()",
        "from vision_sae_lens.cli import build_parser; build_parser().parse_args(['store', 'x'])",
    ],
)
def test_start_up_imports_neither_torch_nor_sae_lens(code):
    loaded = _modules_after(code)
    assert "torch" not in loaded and "sae_lens" not in loaded


def test_train_flags_appear_when_train_is_parsed():
    """`train`'s generated flags (every TrainConfig / SAELens config field) are there when used."""
    parser = build_parser()
    args = parser.parse_args(["train", "--store", "s", "--site", "x", "--d-sae", "64", "--warm-up", "3"])
    assert (args.d_sae, args.lr_warm_up_steps) == (64, 3)
    assert "d_sae" in args._sae_fields and "training_tokens" in args._train_fields
    (commands,) = parser._subparsers._group_actions
    assert "--d-sae" in commands.choices["train"].format_help()
