"""The SQL metadata store (users, tokens; later collections, groups, links...).

One code path for SQLite and PostgreSQL: queries are written once and the
engine differences live in :mod:`arvnode.store._dialect`; blocking calls run
on adbapi's bounded thread pool, never on the reactor thread. Build a store
with :func:`open_store`, then ``await store.start()`` (which migrates the
schema) before use and ``await store.stop()`` at shutdown.
"""
from arvnode.ids import salted_secret
from arvnode.store._store import Store, open_store
from arvnode.store.errors import Conflict, NotFound, StoreError, StoreUnavailable
from arvnode.store.migrations import MIGRATIONS, Migration
from arvnode.store.records import TokenRecord, UserRecord

__all__ = [
    "Conflict",
    "MIGRATIONS",
    "Migration",
    "NotFound",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TokenRecord",
    "UserRecord",
    "open_store",
    "salted_secret",
]
