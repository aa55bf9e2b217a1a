"""The only place that knows which SQL engine is underneath.

Queries are written once, in the ``?`` (qmark) placeholder style, in the
subset of SQL that SQLite (3.24+) and PostgreSQL (9.5+) share: TEXT,
BOOLEAN, DOUBLE PRECISION, ``INSERT ... ON CONFLICT``. A :class:`Dialect`
translates placeholders, opens transactions the engine's way, serialises
schema migrations across processes, builds the adbapi connection pool and
maps DB-API exceptions onto :mod:`arvnode.store.errors`.
"""
from __future__ import annotations

import sqlite3
import time
from typing import Any, Mapping

from attrs import frozen
from twisted.enterprise import adbapi

from arvnode.store.errors import Conflict, StoreError, StoreUnavailable

# pg_advisory_xact_lock key serialising schema migrations between nodes that
# share one database: the ASCII of "arvnode!" read as a signed 64-bit int.
MIGRATION_LOCK_KEY = int.from_bytes(b"arvnode!", "big", signed=True)

SQLITE_BUSY_TIMEOUT = 30.0  # seconds a writer waits for another process' lock
PG_CONNECT_TIMEOUT = "10"   # seconds, unless the config says otherwise


@frozen
class Dialect:
    """How to talk to one engine."""

    name: str  # "sqlite" or "postgresql"

    def sql(self, query: str) -> str:
        """Translate a qmark query into this engine's paramstyle."""
        if self.name == "postgresql":
            # psycopg2 always %-formats when given a parameter tuple.
            return query.replace("%", "%%").replace("?", "%s")
        return query

    def begin(self, cursor: Any, *, write: bool) -> None:
        """Open the interaction's transaction.

        SQLite connections run in autocommit mode (``isolation_level=None``)
        so that DDL is transactional too and the lock level is ours to pick:
        ``BEGIN IMMEDIATE`` takes the write lock up front, so two processes
        never deadlock upgrading read locks. psycopg2 begins implicitly.
        """
        if self.name == "sqlite":
            cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def lock_for_migration(self, cursor: Any) -> None:
        """Serialise schema migration across every process using this database.

        SQLite: the ``BEGIN IMMEDIATE`` of the interaction already holds the
        database's single write lock. PostgreSQL: a transaction-scoped
        advisory lock, released by the commit or rollback.
        """
        if self.name == "postgresql":
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))

    def is_disconnect(self, exc: BaseException) -> bool:
        """True if ``exc`` says the connection itself is gone (the server
        restarted or terminated it), not that the statement was wrong."""
        if isinstance(exc, adbapi.ConnectionLost):
            return True
        if self.name != "postgresql":
            return False
        import psycopg2

        if isinstance(exc, psycopg2.InterfaceError):
            return True  # "connection already closed"
        return isinstance(exc, psycopg2.OperationalError) and getattr(exc, "pgcode", None) in (
            None, "57P01", "57P02", "57P03")  # no server answer; admin/crash shutdown

    def map_error(self, exc: BaseException) -> BaseException:
        """The store exception standing for a driver exception (or ``exc`` itself)."""
        if isinstance(exc, StoreError):
            return exc
        if isinstance(exc, adbapi.ConnectionLost):
            return StoreUnavailable("database connection lost")
        if self.name == "sqlite":
            if isinstance(exc, sqlite3.IntegrityError):
                if "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc):
                    return Conflict(str(exc))
                return StoreError(str(exc))
            if isinstance(exc, sqlite3.OperationalError):
                return StoreUnavailable(f"sqlite: {exc}")
            if isinstance(exc, sqlite3.Error):
                return StoreError(f"sqlite: {exc}")
            return exc
        import psycopg2

        if isinstance(exc, psycopg2.IntegrityError):
            if getattr(exc, "pgcode", None) == "23505":  # unique_violation
                return Conflict(_pg_message(exc))
            return StoreError(_pg_message(exc))
        if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
            return StoreUnavailable(f"postgresql: {_pg_message(exc)}")
        if isinstance(exc, psycopg2.Error):
            return StoreError(f"postgresql: {_pg_message(exc)}")
        return exc


def _pg_message(exc: BaseException) -> str:
    # The first line only: later lines may quote row values (DETAIL: Key ...),
    # and a row value can be a token secret.
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


SQLITE = Dialect("sqlite")
POSTGRESQL = Dialect("postgresql")


def _sqlite_open(conn: sqlite3.Connection) -> None:
    _sqlite_enable_wal(conn)
    conn.execute("PRAGMA foreign_keys=ON")


def _sqlite_enable_wal(conn: sqlite3.Connection, attempts: int = 300) -> None:
    """Switch the database to WAL, waiting out a concurrent opener.

    Converting a fresh database to WAL needs an exclusive lock, and SQLite
    reports SQLITE_BUSY for it at once, without consulting the busy timeout,
    when another process is converting or migrating at the same moment (two
    nodes started together on one file). So retry here, for at most
    ``attempts`` x 0.1 s. This runs on the store's worker thread, never the
    reactor, so a blocking wait is harmless.
    """
    for attempt in range(attempts):
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.1)


def sqlite_pool(reactor: Any, path: str) -> adbapi.ConnectionPool:
    """One connection on one worker thread: SQLite has a single writer anyway."""
    return adbapi.ConnectionPool(
        "sqlite3",
        path,
        timeout=SQLITE_BUSY_TIMEOUT,
        isolation_level=None,
        check_same_thread=False,  # the pool closes it from the reactor thread
        cp_min=1,
        cp_max=1,
        cp_openfun=_sqlite_open,
        cp_reactor=reactor,
        cp_noisy=False,
    )


def postgresql_pool(
    reactor: Any, connection: Mapping[str, str], max_threads: int
) -> adbapi.ConnectionPool:
    """A pool of at most ``max_threads`` threads, one psycopg2 connection each.

    ``connection`` holds Arvados ``PostgreSQL.Connection`` keys (host, port,
    user, password, dbname, and any other libpq keyword such as sslmode);
    empty values are left to libpq's defaults.
    """
    kw: dict[str, Any] = {k: str(v) for k, v in connection.items() if str(v) != ""}
    kw.setdefault("connect_timeout", PG_CONNECT_TIMEOUT)
    kw.setdefault("application_name", "arvnode")
    return adbapi.ConnectionPool(
        "psycopg2",
        cp_min=1,
        cp_max=max(1, max_threads),
        cp_reconnect=True,
        cp_reactor=reactor,
        cp_noisy=False,
        **kw,
    )


