"""The schema, as an ordered list of numbered migrations.

Each node applies, at start, every migration whose number is not yet in
``schema_migrations``, in order, inside one transaction that holds the
migration lock (see :meth:`arvnode.store._dialect.Dialect.lock_for_migration`),
so nodes starting together against one PostgreSQL database apply each
migration exactly once.

To change the schema, append a :class:`Migration` with the next number to
:data:`MIGRATIONS`; never edit or renumber one that has shipped. Write
portable SQL (TEXT, BOOLEAN, DOUBLE PRECISION, no engine-specific
functions); where the engines must differ, give ``sqlite``/``postgresql``
overrides. Timestamps are UTC epoch seconds in DOUBLE PRECISION columns.
"""
from __future__ import annotations

from attrs import frozen


@frozen
class Migration:
    """One schema step: statements run in order, in the migration transaction."""

    version: int
    name: str
    statements: tuple[str, ...]
    sqlite: tuple[str, ...] | None = None
    postgresql: tuple[str, ...] | None = None

    def statements_for(self, dialect_name: str) -> tuple[str, ...]:
        override = getattr(self, dialect_name, None)
        return self.statements if override is None else override


SCHEMA_MIGRATIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version INTEGER PRIMARY KEY,"
    " name TEXT NOT NULL,"
    " applied_at DOUBLE PRECISION NOT NULL)"
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "users and tokens",
        (
            """CREATE TABLE users (
                uuid TEXT PRIMARY KEY,
                email TEXT NOT NULL,
                username TEXT UNIQUE,
                first_name TEXT NOT NULL,
                last_name TEXT NOT NULL,
                is_admin BOOLEAN NOT NULL,
                is_active BOOLEAN NOT NULL,
                prefs TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                modified_at DOUBLE PRECISION NOT NULL)""",
            """CREATE TABLE api_client_authorizations (
                uuid TEXT PRIMARY KEY,
                user_uuid TEXT NOT NULL REFERENCES users (uuid) ON DELETE CASCADE,
                secret TEXT NOT NULL UNIQUE,
                scopes TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION)""",
            "CREATE INDEX api_client_authorizations_user_uuid"
            " ON api_client_authorizations (user_uuid)",
        ),
    ),
)
