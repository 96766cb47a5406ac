"""One naming scheme for the CLI's handlers: ``vision-sae-lens import-saev`` is handled by ``run_import_saev``
and ``bench score`` by ``run_bench_score``, in the module of ``COMMAND_MODULES`` that registered it."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from vision_sae_lens.cli import COMMAND_MODULES, build_parser


def _leaf_commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield path, parser
    for group in groups:
        for name, sub in group.choices.items():
            yield from _leaf_commands(sub, (*path, name))


def test_every_command_is_handled_by_run_and_its_name():
    modules = {f"vision_sae_lens.{module}" for module in COMMAND_MODULES}
    leaves = list(_leaf_commands(build_parser()))
    assert {" ".join(path) for path, _ in leaves} >= {
        "cache",
        "train",
        "import-saev",
        "bench score",
        "verify",
    }
    wrong = []
    for path, parser in leaves:
        handler = parser.get_default("func")
        expected = "run_" + "_".join(path).replace("-", "_")
        if getattr(handler, "__name__", None) != expected or handler.__module__ not in modules:
            wrong.append(f"{' '.join(path)}: {getattr(handler, '__qualname__', handler)} (want {expected})")
    assert not wrong, wrong
