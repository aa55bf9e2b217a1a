"""``arvnode token create|list|revoke``: issue and withdraw API tokens offline.

Why: scripts and operators need a token before any exists (the first admin
token of a node), and a leaked token must be revocable even when no admin
token is at hand. ``token create`` prints only the v2 token on stdout so a
script can capture it; ``token list`` never prints secrets.

A node's token cache holds answers for ``ArvNode.TokenCacheTTL`` (2 s by
default), so a token revoked here stops working on running nodes within
that time.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from typing import Any

from arvnode import ids
from arvnode.commands._common import add_store_options, print_table, run_with_store
from arvnode.store import Conflict, NotFound, Store, UserRecord


def register(subparsers: Any) -> None:
    """Add the ``token`` command group to the ``arvnode`` parser."""
    parser = subparsers.add_parser("token", help="create, list, revoke API tokens")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    create = actions.add_parser(
        "create",
        help="issue a token; prints only the v2 token",
        description="Issue a token and print it (v2/<uuid>/<secret>) on stdout.",
    )
    add_store_options(create)
    whose = create.add_mutually_exclusive_group(required=True)
    whose.add_argument("--user", metavar="UUID", help="issue a token for this user")
    whose.add_argument(
        "--admin",
        action="store_true",
        help="issue a token for an active admin user (creating user 'admin' if there is none)",
    )
    whose.add_argument(
        "--anonymous",
        action="store_true",
        help="print the configured anonymous token (Users.AnonymousUserToken) in v2 form",
    )
    create.add_argument(
        "--expires", metavar="DURATION", help="lifetime, e.g. 12h, 30m, 336h (default: never)"
    )
    create.set_defaults(func=run_create)

    listing = actions.add_parser("list", help="list tokens (uuid, user, expiry; no secrets)")
    add_store_options(listing)
    listing.add_argument("--user", metavar="UUID", help="only this user's tokens")
    listing.set_defaults(func=run_list)

    revoke = actions.add_parser("revoke", help="revoke (delete) a token")
    add_store_options(revoke)
    revoke.add_argument("uuid", metavar="UUID")
    revoke.set_defaults(func=run_revoke)


async def _admin_user(store: Store) -> UserRecord:
    """The oldest active admin other than the system user, created if none."""
    system = ids.system_user_uuid(store.cluster_id)
    for user in await store.list_users():
        if user.is_admin and user.is_active and user.uuid != system:
            return user
    try:
        return await store.create_user(
            email="admin@localhost", username="admin", first_name="Admin",
            last_name="User", is_admin=True, is_active=True,
        )
    except Conflict:  # a non-admin already has the username
        return await store.create_user(
            email="admin@localhost", first_name="Admin", last_name="User",
            is_admin=True, is_active=True,
        )


def run_create(args: argparse.Namespace) -> int:
    from arvnode.config import parse_duration

    lifetime: float | None = None
    if args.expires is not None:
        if args.anonymous:
            print("--expires does not apply to the configured anonymous token", file=sys.stderr)
            return 2
        try:
            lifetime = parse_duration(args.expires)
        except ValueError as e:
            print(f"--expires {args.expires!r}: {e}", file=sys.stderr)
            return 2
        if lifetime <= 0:
            print("--expires must be a positive duration", file=sys.stderr)
            return 2

    async def work(store: Store, config: Any) -> int:
        if args.anonymous:
            try:
                record = await store.get_token(ids.anonymous_token_uuid(store.cluster_id))
            except NotFound:
                print("Users.AnonymousUserToken is not set in the config", file=sys.stderr)
                return 1
            print(record.v2)
            return 0
        if args.admin:
            user_uuid = (await _admin_user(store)).uuid
        else:
            user_uuid = args.user
        expires_at = None if lifetime is None else store.now() + lifetime
        try:
            record = await store.create_token(user_uuid, expires_at=expires_at)
        except NotFound:
            print(f"no user {user_uuid}", file=sys.stderr)
            return 1
        print(record.v2)
        return 0

    return run_with_store(args, work)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_list(args: argparse.Namespace) -> int:
    async def work(store: Store, config: Any) -> int:
        if args.user is not None:
            try:
                await store.get_user(args.user)
            except NotFound:  # a typo must not look like "this user has no tokens"
                print(f"no user {args.user}", file=sys.stderr)
                return 1
        tokens = await store.list_tokens(args.user)
        print_table(
            ("UUID", "USER", "EXPIRES", "SCOPES"),
            [(t.uuid, t.user_uuid, _when(t.expires_at), " ".join(t.scopes)) for t in tokens],
        )
        return 0

    return run_with_store(args, work)


def run_revoke(args: argparse.Namespace) -> int:
    async def work(store: Store, config: Any) -> int:
        configured = {
            ids.system_root_token_uuid(store.cluster_id): "SystemRootToken",
            ids.anonymous_token_uuid(store.cluster_id): "Users.AnonymousUserToken",
        }
        if args.uuid in configured:
            print(
                f"{args.uuid} is the config's {configured[args.uuid]}; change or remove it "
                "in the config file (a node re-creates it at start)",
                file=sys.stderr,
            )
            return 1
        if not await store.revoke_token(args.uuid):
            print(f"no token {args.uuid}", file=sys.stderr)
            return 1
        print(args.uuid)
        return 0

    return run_with_store(args, work)
