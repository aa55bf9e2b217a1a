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

# Columns every Arvados object table starts with (migration 2 onwards).
_COMMON_COLUMNS = """uuid TEXT PRIMARY KEY,
                owner_uuid TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                modified_at DOUBLE PRECISION NOT NULL,
                modified_by_user_uuid TEXT"""

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
    Migration(
        2,
        "collections, groups, links, workflows, keep_services",
        (
            f"""CREATE TABLE collections ({_COMMON_COLUMNS},
                name TEXT,
                description TEXT,
                properties TEXT NOT NULL,
                manifest_text TEXT NOT NULL,
                portable_data_hash TEXT NOT NULL,
                replication_desired BIGINT,
                replication_confirmed BIGINT,
                replication_confirmed_at DOUBLE PRECISION,
                storage_classes_desired TEXT NOT NULL,
                storage_classes_confirmed TEXT NOT NULL,
                storage_classes_confirmed_at DOUBLE PRECISION,
                trash_at DOUBLE PRECISION,
                delete_at DOUBLE PRECISION,
                file_count BIGINT NOT NULL,
                file_size_total BIGINT NOT NULL,
                version BIGINT NOT NULL,
                current_version_uuid TEXT,
                preserve_version BOOLEAN NOT NULL)""",
            f"""CREATE TABLE groups ({_COMMON_COLUMNS},
                name TEXT NOT NULL,
                description TEXT,
                group_class TEXT NOT NULL,
                properties TEXT NOT NULL,
                trash_at DOUBLE PRECISION,
                delete_at DOUBLE PRECISION,
                frozen_by_uuid TEXT)""",
            f"""CREATE TABLE links ({_COMMON_COLUMNS},
                link_class TEXT,
                name TEXT,
                tail_uuid TEXT,
                head_uuid TEXT,
                properties TEXT NOT NULL)""",
            f"""CREATE TABLE workflows ({_COMMON_COLUMNS},
                name TEXT,
                description TEXT,
                definition TEXT)""",
            f"""CREATE TABLE keep_services ({_COMMON_COLUMNS},
                service_host TEXT NOT NULL,
                service_port BIGINT NOT NULL,
                service_ssl_flag BOOLEAN NOT NULL,
                service_type TEXT NOT NULL,
                read_only BOOLEAN NOT NULL)""",
            "CREATE INDEX collections_owner_uuid ON collections (owner_uuid)",
            "CREATE INDEX collections_owner_uuid_name ON collections (owner_uuid, name)",
            "CREATE INDEX collections_portable_data_hash ON collections (portable_data_hash)",
            "CREATE INDEX collections_modified_at ON collections (modified_at)",
            "CREATE INDEX groups_owner_uuid ON groups (owner_uuid)",
            "CREATE INDEX groups_owner_uuid_name ON groups (owner_uuid, name)",
            "CREATE INDEX links_owner_uuid ON links (owner_uuid)",
            "CREATE INDEX links_head_uuid ON links (head_uuid)",
            "CREATE INDEX links_tail_uuid ON links (tail_uuid)",
            "CREATE INDEX workflows_owner_uuid ON workflows (owner_uuid)",
            "CREATE INDEX keep_services_owner_uuid ON keep_services (owner_uuid)",
        ),
    ),
)
