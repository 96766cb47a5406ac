"""The Hub sub-commands: publish (dry run and real), releases, import-saev, import-prisma."""

from __future__ import annotations

import argparse

import torch
from helpers import make_checkpoint
from sae_lens import SAE
from saev_fixtures import header_for, make_weights, saev_forward_latents, write_saev

from vision_sae_lens.hub import commands


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_publish_dry_run_and_real(hub, tmp_path, capsys, caplog):
    run1 = make_checkpoint(tmp_path / "run1")
    with caplog.at_level("INFO"):
        assert run(["publish", str(run1), "--repo-id", "cli-org/saes", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "cli-org/saes" not in hub.repos
    # The plan is shown once: printed by the command, not also logged by push_to_hub.
    shown = out + caplog.text
    assert shown.count("blocks.1.hook_resid_post/cfg.json") == 1, shown
    assert run(["publish", str(run1), "--repo-id", "cli-org/saes"]) == 0
    assert "blocks.1.hook_resid_post/cfg.json" in hub.files("cli-org/saes")


def test_releases_table(capsys):
    assert run(["releases"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["release", "backbone", "sites", "architecture", "d_sae", "source"]
    assert "saev-clip-vit-b-16-in1k" in out


def test_import_saev_cli(tmp_path):
    state = make_weights(seed=11, threshold=0.1)
    write_saev(tmp_path / "ckpt" / "sae.pt", header_for("5", "BatchTopK"), state)
    assert run(["import-saev", str(tmp_path / "ckpt" / "sae.pt"), "--out", str(tmp_path / "out")]) == 0
    sae = SAE.load_from_disk(str(tmp_path / "out" / "ckpt"))
    x = torch.randn(10, 16)
    ref = saev_forward_latents(x, state, activation="BatchTopK", subtract_b_dec=False)
    torch.testing.assert_close(sae.encode(x), ref, atol=1e-5, rtol=1e-5)


def test_printed_paths_have_control_characters_escaped(tmp_path, capsys):
    state = make_weights(seed=3)
    write_saev(tmp_path / "ckpt" / "sae.pt", header_for("5", "Relu"), state)
    out = tmp_path / "out\x1b[2J\nforged"
    assert run(["import-saev", str(tmp_path / "ckpt" / "sae.pt"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and printed.count("\n") == 1, printed
    assert "out\\x1b[2J\\nforged" in printed
    assert SAE.load_from_disk(str(out / "ckpt")).cfg.d_sae == state["W_enc"].shape[1]


def test_the_publish_plan_shows_folder_names_escaped(tmp_path, capsys):
    run1 = make_checkpoint(tmp_path / "run\x1b[8m\rhidden")
    assert run(["publish", str(run1), "--repo-id", "cli-org/saes", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\r" not in printed and "run\\x1b[8m\\rhidden" in printed
