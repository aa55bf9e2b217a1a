"""``arvnode keep balance [--dry-run]``: one balancing pass now.

Why a command besides the "balancer" service: an operator who just deleted
a lot wants the space back now, or wants to see first what a pass would
trash (``--dry-run``; it also lists the referenced blocks found only in
trash that a pass untrashes). It works on the node's database and volumes
directly, like the other admin commands: the volumes are built exactly as
the node builds them (:func:`arvnode.node.build_volumes`) but not started
(a directory volume's start removes unfinished uploads, which would break
those of a node running beside the command). The pass and its safety
rules are :mod:`arvnode.keep.balance`; the exit status is 1 when the pass
was aborted (nothing trashed), the config/database is unusable, or this
host is a keepstore whose own (SQLite) database lacks the collections.
"""
from __future__ import annotations

import argparse
import random
import sys
from datetime import datetime, timezone
from typing import Any

from twisted.internet.defer import DeferredList, maybeDeferred

from arvnode.commands._common import add_store_options, run_with_store_on_reactor


def register(subparsers: Any) -> None:
    """Add the ``keep`` command group to the ``arvnode`` parser."""
    parser = subparsers.add_parser("keep", help="block storage maintenance")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    balance = actions.add_parser(
        "balance", help="trash the blocks no collection references (one pass now)")
    add_store_options(balance)
    balance.add_argument("--dry-run", action="store_true",
                         help="trash nothing; print what would be trashed")
    balance.set_defaults(func=run_balance)


def _when(mtime_ns: int) -> str:
    return datetime.fromtimestamp(mtime_ns / 1e9, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_balance(args: argparse.Namespace) -> int:
    from arvnode.keep.balance import Balancer
    from arvnode.keep.balance_service import holds_the_collections
    from arvnode.node import ThreadPools, build_volumes

    async def work(store: Any, config: Any, reactor: Any) -> int:
        pools = ThreadPools()
        pools.startService()
        volumes: list[Any] = []
        try:
            own_keepstore, local, upstreams = build_volumes(
                config, reactor, rng=random.SystemRandom(), pools=pools)
            volumes = local + upstreams
            if not holds_the_collections(config, own_keepstore):
                print(f"this host is keepstore {own_keepstore} with a database of its own "
                      "(SQLite); the collections are on the gateway: run the command there",
                      file=sys.stderr)
                return 1
            c = config.collections
            balancer = Balancer(store, volumes, clock=reactor, signing_ttl=c.blob_signing_ttl,
                                blob_trash=c.blob_trash,
                                trash_concurrency=c.blob_trash_concurrency,
                                timeout=c.balance_timeout)

            def report(volume: Any, hash: str, size: int, mtime_ns: int) -> None:
                if args.dry_run:
                    print(f"would trash {hash}+{size} on {volume.uuid} (mtime {_when(mtime_ns)})")

            def report_untrash(volume: Any, hash: str) -> None:
                verb = "would untrash" if args.dry_run else "untrashed"
                print(f"{verb} {hash} on {volume.uuid} (referenced, found only in trash)")

            result = await balancer.run_pass(dry_run=args.dry_run, report=report,
                                             report_untrash=report_untrash)
        finally:
            await DeferredList([maybeDeferred(v.stop) for v in volumes])
            pools.stopService()
        if result.aborted:
            print(f"balance aborted, nothing trashed: {result.aborted}", file=sys.stderr)
            return 1
        if args.dry_run:
            print("dry run: nothing trashed")
        elif not config.collections.blob_trash:
            print("Collections.BlobTrash is false: nothing trashed")
        print(f"collections scanned:   {result.collections}")
        print(f"blocks referenced:     {result.referenced}")
        print(f"volumes:               {len(result.volumes)} ({', '.join(result.volumes)})")
        print(f"blocks seen:           {result.seen}")
        print(f"  referenced:          {result.seen - result.unreferenced}")
        print(f"  unreferenced:        {result.unreferenced}")
        print(f"  too new to trash:    {result.too_new}")
        if result.dry_run:
            print(f"  would trash:         {result.candidates} ({result.candidate_bytes} bytes)")
        else:
            print(f"  trashed:             {result.trashed} ({result.trashed_bytes} bytes)")
            if result.queued:
                print(f"  sent to keepstores:  {result.queued} ({result.queued_bytes} bytes;"
                      " they trash them on their own)")
            print(f"  refused by volume:   {result.refused}")
            print(f"  failed:              {result.failed}")
        verb = "would untrash" if args.dry_run else "untrashed"
        print(f"referenced blocks found only in trash, {verb}: {result.untrashed}")
        if result.untrash_failed:
            print(f"  untrash failed:      {result.untrash_failed}", file=sys.stderr)
        if result.not_found:
            print(f"referenced blocks on none of these volumes, live or trashed:"
                  f" {result.not_found}", file=sys.stderr)
        if result.trash_index_errors:
            print(f"trash listings failed: {result.trash_index_errors}", file=sys.stderr)
        if result.index_errors:
            print(f"volume indexes failed: {result.index_errors}", file=sys.stderr)
        if result.stopped:
            print(f"stopped early: {result.stopped}", file=sys.stderr)
        return 0

    return run_with_store_on_reactor(args, work)
