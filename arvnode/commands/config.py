"""``arvnode config check``: validate a config file before (re)starting a node.

Why: the node refuses to start on a bad config, and an operator wants to
know that — every problem at once, by key path — before the restart, not
from a failed unit. On success the *effective* configuration (defaults
filled in, secrets masked) is printed, so what the node will do can be
reviewed; the keys arvnode will ignore are listed separately on stderr.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from arvnode.commands._common import add_store_options, load_or_report
from arvnode.config import mask_secrets, startup_problems


def register(subparsers: Any) -> None:
    """Add the ``config`` command group to the ``arvnode`` parser."""
    parser = subparsers.add_parser("config", help="check the configuration")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    check = actions.add_parser(
        "check",
        help="validate a config file and print the effective configuration",
        description=(
            "Validate an Arvados-shaped config file. Problems go to stderr, one per line, "
            "exit status 1. Otherwise the effective configuration (secrets masked) goes "
            "to stdout, exit status 0."
        ),
    )
    add_store_options(check)
    check.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the configuration; 0 if a node can start from it, 1 if not."""
    path, config = load_or_report(args)
    if config is None:
        return 1
    sys.stdout.write(yaml.safe_dump(mask_secrets(config), sort_keys=False, allow_unicode=True))
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if config.unknown_keys:
        print(
            f"{len(config.unknown_keys)} key(s) not used by arvnode: "
            + ", ".join(config.unknown_keys),
            file=sys.stderr,
        )
    else:
        print("no keys unused by arvnode", file=sys.stderr)
    problems = startup_problems(config)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        # The same last line as for a file that does not load, so a script
        # (or a person skimming past the effective config) sees the verdict.
        print(f"{path}: {len(problems)} problem(s); the node would not start", file=sys.stderr)
    return 1 if problems else 0
