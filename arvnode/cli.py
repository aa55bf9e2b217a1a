"""The ``arvnode`` admin command: ``arvnode <group> <action> ...``.

Each command group lives in :mod:`arvnode.commands.<name>` and exposes
``register(subparsers)``; this module only dispatches. Commands that need
the database run on a private reactor via :func:`twisted.internet.task.react`.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Command groups, in the order ``arvnode --help`` lists them.
GROUPS = ("init", "config", "user", "token", "cache", "keep")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arvnode",
        description="Administer an arvnode gateway node (the node itself runs under `twistd arvnode`).",
    )
    sub = parser.add_subparsers(dest="group", metavar="COMMAND")
    sub.required = True
    for name in GROUPS:
        try:
            module = importlib.import_module(f"arvnode.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"arvnode.commands.{name}":
                continue  # group not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
