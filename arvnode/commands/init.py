"""``arvnode init [--data DIR]``: create the embedded default without starting it.

Useful to inspect or edit ``DIR/config.yml`` before the first start, and in
provisioning scripts. Writes ``DIR/env.sh`` as a start does. Running it again changes nothing and prints the same
environment.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

from arvnode import embedded
from arvnode.commands._common import run_with_store


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("init", help="create the embedded default state directory")
    p.add_argument("--data", default=embedded.DEFAULT_DATA_DIR,
                   help=f"state directory (default ./{embedded.DEFAULT_DATA_DIR})")
    p.set_defaults(func=run, config=None, cluster=None)


def run(args: argparse.Namespace) -> int:
    try:
        embedded.ensure_state_dir(args.data, random.SystemRandom())
    except OSError as e:
        print(f"arvnode init: cannot create state directory {args.data!r}: {e}", file=sys.stderr)
        return 1

    async def work(store: Any, config: Any) -> int:
        data = Path(config.arvnode.data_directory)
        token = await embedded.ensure_admin_token(store, data)
        url = config.services.controller.external_url
        text = embedded.env_lines(url.netloc, token, str(data / "tls" / "ca.pem"))
        # The docs tell the operator to `source DIR/env.sh`: have it right
        # after init too, not only after the first start (which rewrites it
        # with the ports actually bound).
        embedded.write_env_file(data, text)
        print(f"# arvnode state directory: {data}")
        print(text, end="")
        return 0

    return run_with_store(args, work)
