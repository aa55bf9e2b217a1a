"""What the database commands share: the ``--config/--data/--cluster``
options and :func:`run_with_store`, which runs one piece of database work
on a reactor private to the call.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
from typing import Any, Awaitable, Callable, Coroutine, Sequence, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from arvnode.store import Store, StoreError, open_store

T = TypeVar("T")

SQLITE_NAME = "arvnode.sqlite"
DATA_CONFIG_NAME = "config.yml"


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """``--config PATH | --data DIR`` and ``--cluster ID``."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $ARVADOS_CONFIG, else /etc/arvados/config.yml)",
    )
    where.add_argument(
        "--data",
        metavar="DIR",
        help=f"state directory of an embedded-default node (DIR/{DATA_CONFIG_NAME}, "
        f"DIR/{SQLITE_NAME})",
    )
    parser.add_argument("--cluster", metavar="ID", help="cluster id, if the file has several")


def config_path(args: argparse.Namespace) -> str:
    """The file ``args`` designate: --config, --data DIR, $ARVADOS_CONFIG, default."""
    from arvnode.config import DEFAULT_CONFIG_PATH

    if args.config:
        return str(args.config)
    if args.data:
        return os.path.join(args.data, DATA_CONFIG_NAME)
    return os.environ.get("ARVADOS_CONFIG") or DEFAULT_CONFIG_PATH


def load_or_report(args: argparse.Namespace) -> tuple[str, Any]:
    """The config ``args`` designate, or None after printing its problems
    (one per line) on stderr."""
    from arvnode.config import ConfigError, load_config

    path = config_path(args)
    try:
        return path, load_config(path, cluster=args.cluster)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        print(f"{path}: {len(e.problems)} problem(s); the node would not start", file=sys.stderr)
        return path, None


def run_async(work: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    """Run ``work(reactor)`` to completion on a reactor made for this call.

    Not ``task.react`` on the global reactor: that ends in ``sys.exit`` and
    leaves a reactor that can never run again, so ``arvnode.cli.main`` could
    be called once per process. Tests, and scripts that import the CLI,
    call it many times. Signal handlers are left alone (a one-shot command
    needs none, and they would displace the caller's).
    """
    from twisted.internet.selectreactor import SelectReactor

    reactor = SelectReactor()
    outcome: list[Any] = []

    def go() -> None:
        d = Deferred.fromCoroutine(work(reactor))
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run(installSignalHandlers=False)
    result = outcome[0] if outcome else Failure(RuntimeError("command did not finish"))
    if isinstance(result, Failure):
        result.raiseException()
    return result  # type: ignore[no-any-return]


def run_with_store(
    args: argparse.Namespace, work: Callable[[Store, Any], Awaitable[int]]
) -> int:
    """Load the config ``args`` designate, open its store, run ``work(store, config)``.

    The well-known users and tokens are ensured first, exactly as a node
    start does, so commands work on a database no node has started on yet.
    Config and database problems are reported on stderr with status 1.
    """
    return run_with_store_on_reactor(args, lambda store, config, reactor: work(store, config))


def run_with_store_on_reactor(
    args: argparse.Namespace, work: Callable[[Store, Any, Any], Awaitable[int]]
) -> int:
    """:func:`run_with_store`, for work that also needs the command's private
    reactor (``work(store, config, reactor)``: volumes, timers)."""
    path, config = load_or_report(args)
    if config is None:
        return 1
    postgresql = dict(config.postgresql.connection) or None
    data_dir = args.data or config.arvnode.data_directory
    if not postgresql and not data_dir:
        print(
            f"{path}: neither PostgreSQL.Connection nor ArvNode.DataDirectory is set; "
            "cannot find the database",
            file=sys.stderr,
        )
        return 1
    if not postgresql and not os.path.isdir(data_dir):
        # Not SQLite's bare "unable to open database file": say which
        # directory and what to do (a node creates it at its first start).
        print(
            f"{path}: ArvNode.DataDirectory {data_dir!r} is not a directory; start the node "
            "once (it creates it), or create it, owned by the node's user",
            file=sys.stderr,
        )
        return 1
    sqlite_path = os.path.join(data_dir, SQLITE_NAME) if data_dir else None
    stores: list[Store] = []

    async def main(reactor: Any) -> int:
        store = open_store(
            reactor,
            cluster_id=config.cluster_id,
            postgresql=postgresql,
            sqlite_path=sqlite_path,
            clock=reactor,
            rng=random.SystemRandom(),
            max_threads=1,
        )
        stores.append(store)
        try:
            await store.start()
            await store.ensure_system_records(
                system_root_token=config.system_root_token,
                anonymous_token=config.users.anonymous_user_token,
            )
            return await work(store, config, reactor)
        finally:
            await store.stop()

    try:
        return run_async(main)
    except StoreError as e:
        print(f"database error: {e}", file=sys.stderr)
        return 1
    finally:
        for store in stores:  # interrupted (^C): still stop the worker threads
            Deferred.fromCoroutine(store.stop())


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns, two spaces apart, on stdout."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    for row in (header, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
