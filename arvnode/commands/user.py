"""``arvnode user create|list|activate|deactivate``: manage users offline.

Why a CLI and not only the API: the first admin of a fresh node has no
token to call the API with, and an operator locked out (lost token,
deactivated admin) needs a way in that only requires access to the
config file and the database. The commands open the store the node uses
(SQLite under the data directory, or the configured PostgreSQL) directly.

Shared option handling lives in :mod:`arvnode.commands._common`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from arvnode.commands._common import add_store_options, print_table, run_with_store
from arvnode.store import Conflict, NotFound, Store


# -- arvnode user ----------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add the ``user`` command group to the ``arvnode`` parser."""
    parser = subparsers.add_parser("user", help="create, list, (de)activate users")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    create = actions.add_parser("create", help="create a user; prints its uuid")
    add_store_options(create)
    create.add_argument("--email", required=True)
    create.add_argument("--username")
    create.add_argument("--first-name", default="")
    create.add_argument("--last-name", default="")
    create.add_argument("--admin", action="store_true", help="make the user an admin")
    create.add_argument("--active", action="store_true", help="activate the user now")
    create.set_defaults(func=run_create)

    listing = actions.add_parser("list", help="list users")
    add_store_options(listing)
    listing.set_defaults(func=run_list)

    for name, active in (("activate", True), ("deactivate", False)):
        p = actions.add_parser(name, help=f"{name} a user")
        add_store_options(p)
        p.add_argument("uuid", metavar="UUID")
        p.set_defaults(func=run_set_active, active=active)


def run_create(args: argparse.Namespace) -> int:
    async def work(store: Store, config: Any) -> int:
        try:
            user = await store.create_user(
                email=args.email,
                username=args.username,
                first_name=args.first_name,
                last_name=args.last_name,
                is_admin=args.admin,
                is_active=args.active,
            )
        except Conflict:
            print(f"username {args.username!r} is already taken", file=sys.stderr)
            return 1
        print(user.uuid)
        return 0

    return run_with_store(args, work)


def run_list(args: argparse.Namespace) -> int:
    async def work(store: Store, config: Any) -> int:
        users = await store.list_users()
        print_table(
            ("UUID", "USERNAME", "EMAIL", "NAME", "ADMIN", "ACTIVE"),
            [
                (
                    u.uuid,
                    u.username or "",
                    u.email,
                    u.full_name,
                    "yes" if u.is_admin else "no",
                    "yes" if u.is_active else "no",
                )
                for u in users
            ],
        )
        return 0

    return run_with_store(args, work)


def run_set_active(args: argparse.Namespace) -> int:
    async def work(store: Store, config: Any) -> int:
        try:
            user = await store.update_user(args.uuid, is_active=args.active)
        except NotFound:
            print(f"no user {args.uuid}", file=sys.stderr)
            return 1
        print(user.uuid)
        return 0

    return run_with_store(args, work)
