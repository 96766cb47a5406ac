"""Command line: ``vision-sae-lens {demo,cache,train,evaluate,analyze,explain,publish,import-saev,backbones}``.

Each pipeline stage registers its own sub-commands (``<stage>/commands.py: register(subparsers)``), each
handled by a function named after it (``import-saev``: ``run_import_saev``, ``bench score``:
``run_bench_score``); this module only builds the parser, dispatches, and turns errors into a one-line
reason and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from vision_sae_lens.errors import escape_control

COMMAND_MODULES = (
    "backbones.commands",
    "store.commands",
    "train.commands",
    "train.verify",
    "hub.commands",
    "analysis.commands",
    "analysis.naming_commands",
    "benchmark.commands",
    "demo.commands",
)
"""Modules (relative to the package) whose ``register(subparsers)`` adds sub-commands, in --help order."""
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every stage's sub-commands."""
    from vision_sae_lens import __version__

    parser = argparse.ArgumentParser(
        prog="vision-sae-lens",
        description="SAELens for vision transformers: record activations, train, publish and analyse SAEs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    parser.set_defaults(func=None)  # no command given: print the help
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(f"vision_sae_lens.{module}").register(subparsers)
    _show_defaults(parser)
    return parser


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` unless the help already states it or there is no default to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, argparse.SUPPRESS, False) or "default" in text:
            return text
        return super()._get_help_string(action) or text


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every (sub-)command's ``--help`` shows the defaults, whichever stage registered it."""
    parser.formatter_class = _DefaultsFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _show_defaults(sub)


class EscapingFormatter(logging.Formatter):
    """Log lines with control characters escaped: a file name holding an ANSI escape or a newline
    cannot recolour the terminal or forge a log line (tracebacks, under --verbose, stay as they are)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_control(super().formatMessage(record))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vision-sae-lens`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter(LOG_FORMAT, datefmt=LOG_DATE_FORMAT))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    if args.func is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one-line reason for people; --verbose shows the traceback
        _tell_torchrun(exc)
        if args.verbose:
            raise
        print(f"error: {type(exc).__name__}: {escape_control(exc)}", file=sys.stderr)
        return 1


def _tell_torchrun(exc: Exception) -> None:
    """Under ``torchrun``, record the error in the file its agent reads, so its failure summary names this
    error instead of ``error_file: <N/A>``."""
    if "TORCHELASTIC_ERROR_FILE" not in os.environ:
        return
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    ErrorHandler().record_exception(exc)


if __name__ == "__main__":
    sys.exit(main())
