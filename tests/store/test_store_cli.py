"""The `cache` and `store` sub-commands, through the parser they register."""

from __future__ import annotations

import argparse
import json

from helpers import SITES, TINY_ID, TINY_KWARGS, build_tiny, random_images

from vision_sae_lens.store import cache_activations
from vision_sae_lens.store.commands import register


def parse(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(argv)


def test_cache_command_records_the_same_store_as_the_function(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    for i, img in enumerate(random_images(4, seed=5)):
        img.save(tmp_path / "imgs" / f"{i}.png")
    args = parse([
        "cache", "--model", TINY_ID, "--random-init", "--model-kwargs", json.dumps(TINY_KWARGS),
        "--images", str(tmp_path / "imgs"), "--sites", SITES[1], "--tokens", "cls", "--dtype", "bfloat16",
        "--out", str(tmp_path / "cli"), "--no-progress",
    ])  # fmt: skip
    assert args.func(args) == 0
    assert "fingerprint" in capsys.readouterr().out
    direct = cache_activations(
        build_tiny(),
        str(tmp_path / "imgs"),
        sites=[SITES[1]],
        tokens="cls",
        dtype="bfloat16",
        out_dir=tmp_path / "fn",
        progress=False,
    )
    from vision_sae_lens.store import ActivationStore

    via_cli = ActivationStore(tmp_path / "cli")
    assert via_cli.fingerprint == direct.fingerprint and via_cli.n_rows == 4
    info = parse(["store", str(tmp_path / "cli"), "--verify"])
    assert info.func(info) == 0
    assert "verify: ok" in capsys.readouterr().out
