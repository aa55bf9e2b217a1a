"""The SQL metadata store: users, tokens, collections, groups, links, workflows, keep services.

One code path for SQLite and PostgreSQL: queries are written once and the
engine differences live in :mod:`arvnode.store._dialect`; blocking calls run
on adbapi's bounded thread pool, never on the reactor thread. Build a store
with :func:`open_store`, then ``await store.start()`` (which migrates the
schema) before use and ``await store.stop()`` at shutdown.
"""
from arvnode.ids import salted_secret
from arvnode.store._store import Store, open_store
from arvnode.store.errors import Conflict, NotFound, StoreError, StoreUnavailable
from arvnode.store.kinds import KINDS, Attr, Kind, from_api_time, to_api_time
from arvnode.store.migrations import MIGRATIONS, Migration
from arvnode.store.objects import NameConflict
from arvnode.store.query import Filter, ListQuery, QueryError, parse_list_query
from arvnode.store.records import TokenRecord, UserRecord

__all__ = [
    "Attr",
    "Conflict",
    "Filter",
    "KINDS",
    "Kind",
    "ListQuery",
    "MIGRATIONS",
    "Migration",
    "NameConflict",
    "NotFound",
    "QueryError",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TokenRecord",
    "UserRecord",
    "from_api_time",
    "open_store",
    "parse_list_query",
    "salted_secret",
    "to_api_time",
]
