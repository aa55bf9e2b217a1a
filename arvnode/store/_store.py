"""The metadata store: users and tokens here, Arvados objects via :mod:`.objects`.

Every database call is a small synchronous function run by
``adbapi.ConnectionPool.runInteraction`` on the pool's bounded worker
threads; the async methods here only prepare arguments on the reactor
thread (the clock and the random generator are read there, never from a
worker) and turn rows into frozen records. Each interaction is one
transaction, committed if the function returns and rolled back if it
raises, and every driver exception leaves through
:meth:`Dialect.map_error`.
"""
from __future__ import annotations

import hmac
import json
import random
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from twisted.enterprise import adbapi
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from arvnode import ids
from arvnode.store._dialect import POSTGRESQL, SQLITE, Dialect, postgresql_pool, sqlite_pool
from arvnode.store.errors import NotFound, StoreUnavailable
from arvnode.store.migrations import MIGRATIONS, SCHEMA_MIGRATIONS_DDL, Migration
from arvnode.store.objects import ObjectsMixin
from arvnode.store.records import TokenRecord, UserRecord

T = TypeVar("T")

_USER_COLUMNS = (
    "uuid, email, username, first_name, last_name, is_admin, is_active,"
    " prefs, created_at, modified_at"
)
_TOKEN_COLUMNS = "uuid, user_uuid, secret, scopes, created_at, expires_at"
_USER_FIELDS = frozenset(
    {"email", "username", "first_name", "last_name", "is_admin", "is_active", "prefs"}
)
ANONYMOUS_TOKEN_SCOPES = ("GET /",)


class _Cursor:
    """A cursor that speaks qmark SQL whatever the engine (worker thread only)."""

    def __init__(self, txn: adbapi.Transaction, dialect: Dialect) -> None:
        self._txn = txn
        self._dialect = dialect

    def execute(self, query: str, params: Sequence[Any] = ()) -> int:
        self._txn.execute(self._dialect.sql(query), tuple(params))
        return int(self._txn.rowcount)

    def one(self, query: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        self.execute(query, params)
        row = self._txn.fetchone()
        return None if row is None else tuple(row)

    def all(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.execute(query, params)
        return [tuple(r) for r in self._txn.fetchall()]

    @property
    def raw(self) -> adbapi.Transaction:
        return self._txn


def _user(row: Sequence[Any]) -> UserRecord:
    return UserRecord(
        uuid=row[0],
        email=row[1],
        username=row[2],
        first_name=row[3],
        last_name=row[4],
        is_admin=bool(row[5]),
        is_active=bool(row[6]),
        prefs=json.loads(row[7]),
        created_at=float(row[8]),
        modified_at=float(row[9]),
    )


def _token(row: Sequence[Any]) -> TokenRecord:
    return TokenRecord(
        uuid=row[0],
        user_uuid=row[1],
        secret=row[2],
        scopes=tuple(json.loads(row[3])),
        created_at=float(row[4]),
        expires_at=None if row[5] is None else float(row[5]),
    )


def _same(a: str, b: str) -> bool:
    """Constant-time string comparison (bytes, so any character is allowed)."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bare_secret(configured: str) -> str:
    """A configured token may be written in v2 form; the row stores only its secret."""
    if configured.startswith("v2/"):
        parts = configured.split("/")
        if len(parts) >= 3:
            return parts[2]
    return configured


class Store(ObjectsMixin):
    """Users, tokens and Arvados objects in SQLite or PostgreSQL; build one with :func:`open_store`.

    The generic object methods (create_object, list_objects,
    permission_levels, ...) come from :class:`ObjectsMixin`.
    """

    log = Logger()

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        dialect: Dialect,
        *,
        cluster_id: str,
        clock: IReactorTime,
        rng: random.Random,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        self._pool = pool
        self._dialect = dialect
        self.cluster_id = cluster_id
        self._clock = clock
        self._rng = rng
        self._migrations = tuple(sorted(migrations, key=lambda m: m.version))
        self._stopped = False

    def now(self) -> float:
        """The current time on the store's clock (UTC epoch seconds), as records are stamped."""
        return self._clock.seconds()

    @property
    def engine(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._dialect.name

    # -- plumbing ---------------------------------------------------------

    async def _run(self, fn: Callable[[_Cursor], T], *, write: bool) -> T:
        if self._stopped:
            # adbapi would queue the work on its stopped thread pool forever.
            raise StoreUnavailable("the store is stopped")
        dialect = self._dialect

        def interaction(txn: adbapi.Transaction) -> T:
            cur = _Cursor(txn, dialect)
            dialect.begin(txn, write=write)
            return fn(cur)

        # A database restart kills every pooled connection; adbapi drops a
        # dead one only when a request fails on it. A read is retried (on a
        # fresh connection) so a restart costs clients nothing; a write is
        # not, since its commit may have happened before the connection died
        # (the client gets 503 and retries, as Arvados clients do).
        attempts = 1 if write else min(self._pool.max + 1, 3)
        for attempt in range(attempts):
            try:
                return await self._pool.runInteraction(interaction)  # type: ignore[no-any-return]
            except Exception as e:
                if attempt + 1 < attempts and dialect.is_disconnect(e) and not self._stopped:
                    self.log.info("store ({engine}): connection lost ({error}); retrying the read",
                                  engine=self.engine, error=dialect.map_error(e))
                    continue
                mapped = dialect.map_error(e)
                if mapped is e:
                    raise
                raise mapped from e
        raise AssertionError("unreachable")  # pragma: no cover

    async def start(self) -> None:
        """Start the worker threads and bring the schema up to date."""
        if self._stopped:
            raise RuntimeError("a stopped store cannot be restarted; open a new one")
        self._pool.start()
        applied = await self._run(self._migrate, write=True)
        if applied:
            self.log.info(
                "store ({engine}): applied schema migrations {versions}",
                engine=self.engine,
                versions=applied,
            )

    async def stop(self) -> None:
        """Close every connection and stop the worker threads (idempotent; not restartable)."""
        if not self._stopped:
            self._stopped = True
            self._pool.close()

    async def ping(self) -> None:
        """Run ``SELECT 1``; raises :class:`StoreUnavailable` when the database is not usable."""
        await self._run(lambda cur: cur.one("SELECT 1"), write=False)

    def _migrate(self, cur: _Cursor) -> list[int]:
        now = self._clock.seconds()
        self._dialect.lock_for_migration(cur.raw)
        cur.execute(SCHEMA_MIGRATIONS_DDL)
        done = {int(r[0]) for r in cur.all("SELECT version FROM schema_migrations")}
        applied = []
        for m in self._migrations:
            if m.version in done:
                continue
            for statement in m.statements_for(self._dialect.name):
                cur.execute(statement)
            cur.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (m.version, m.name, now),
            )
            applied.append(m.version)
        return applied

    async def applied_migrations(self) -> list[int]:
        """The version numbers recorded in ``schema_migrations``, ascending."""
        rows = await self._run(
            lambda cur: cur.all("SELECT version FROM schema_migrations ORDER BY version"),
            write=False,
        )
        return [int(r[0]) for r in rows]

    # -- users ------------------------------------------------------------

    async def create_user(
        self,
        *,
        email: str = "",
        username: str | None = None,
        first_name: str = "",
        last_name: str = "",
        is_admin: bool = False,
        is_active: bool = False,
        uuid: str | None = None,
        prefs: Mapping[str, Any] | None = None,
    ) -> UserRecord:
        """Insert a user; :class:`Conflict` if the uuid or username is taken."""
        now = self._clock.seconds()
        record = UserRecord(
            uuid=uuid or ids.new_uuid(self.cluster_id, ids.INFIX["users"], self._rng),
            email=email,
            username=username or None,
            first_name=first_name,
            last_name=last_name,
            is_admin=bool(is_admin),
            is_active=bool(is_active),
            created_at=now,
            modified_at=now,
            prefs=dict(prefs or {}),
        )

        def insert(cur: _Cursor) -> None:
            cur.execute(
                f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.uuid,
                    record.email,
                    record.username,
                    record.first_name,
                    record.last_name,
                    record.is_admin,
                    record.is_active,
                    json.dumps(record.prefs, sort_keys=True),
                    record.created_at,
                    record.modified_at,
                ),
            )

        await self._run(insert, write=True)
        return record

    async def get_user(self, uuid: str) -> UserRecord:
        """The user with this uuid; :class:`NotFound` if there is none."""
        row = await self._run(
            lambda cur: cur.one(f"SELECT {_USER_COLUMNS} FROM users WHERE uuid = ?", (uuid,)),
            write=False,
        )
        if row is None:
            raise NotFound(f"user {uuid} not found")
        return _user(row)

    async def list_users(self) -> list[UserRecord]:
        """Every user, oldest first."""
        rows = await self._run(
            lambda cur: cur.all(f"SELECT {_USER_COLUMNS} FROM users ORDER BY created_at, uuid"),
            write=False,
        )
        return [_user(r) for r in rows]

    async def update_user(self, uuid: str, **changes: Any) -> UserRecord:
        """Change some of email, username, first_name, last_name, is_admin, is_active, prefs.

        Returns the updated record; :class:`NotFound` if there is no such
        user, :class:`Conflict` if the new username is taken, ``TypeError``
        for a field that cannot be changed.
        """
        unknown = set(changes) - _USER_FIELDS
        if unknown:
            raise TypeError(f"cannot update user field(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for key, value in changes.items():
            if key == "prefs":
                value = json.dumps(dict(value), sort_keys=True)
            elif key in ("is_admin", "is_active"):
                value = bool(value)
            elif key == "username":
                value = value or None
            values[key] = value
        values["modified_at"] = self._clock.seconds()
        assignments = ", ".join(f"{k} = ?" for k in values)

        def update(cur: _Cursor) -> tuple[Any, ...] | None:
            cur.execute(
                f"UPDATE users SET {assignments} WHERE uuid = ?", (*values.values(), uuid)
            )
            return cur.one(f"SELECT {_USER_COLUMNS} FROM users WHERE uuid = ?", (uuid,))

        row = await self._run(update, write=True)
        if row is None:
            raise NotFound(f"user {uuid} not found")
        return _user(row)

    # -- tokens -----------------------------------------------------------

    async def create_token(
        self,
        user_uuid: str,
        *,
        expires_at: float | None = None,
        scopes: Iterable[str] = ("all",),
        uuid: str | None = None,
        secret: str | None = None,
    ) -> TokenRecord:
        """Issue a token for a user; :class:`NotFound` if the user does not exist."""
        record = TokenRecord(
            uuid=uuid
            or ids.new_uuid(self.cluster_id, ids.INFIX["api_client_authorizations"], self._rng),
            user_uuid=user_uuid,
            secret=secret or ids.new_secret(self._rng),
            created_at=self._clock.seconds(),
            expires_at=expires_at,
            scopes=tuple(scopes),
        )

        def insert(cur: _Cursor) -> bool:
            if cur.one("SELECT 1 FROM users WHERE uuid = ?", (user_uuid,)) is None:
                return False
            cur.execute(
                f"INSERT INTO api_client_authorizations ({_TOKEN_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.uuid,
                    record.user_uuid,
                    record.secret,
                    json.dumps(list(record.scopes)),
                    record.created_at,
                    record.expires_at,
                ),
            )
            return True

        if not await self._run(insert, write=True):
            raise NotFound(f"user {user_uuid} not found")
        return record

    async def get_token(self, uuid: str) -> TokenRecord:
        """The token row with this uuid; :class:`NotFound` if there is none."""
        row = await self._run(
            lambda cur: cur.one(
                f"SELECT {_TOKEN_COLUMNS} FROM api_client_authorizations WHERE uuid = ?", (uuid,)
            ),
            write=False,
        )
        if row is None:
            raise NotFound(f"token {uuid} not found")
        return _token(row)

    async def list_tokens(self, user_uuid: str | None = None) -> list[TokenRecord]:
        """Every token (of one user, if given), oldest first."""
        query = f"SELECT {_TOKEN_COLUMNS} FROM api_client_authorizations"
        params: tuple[str, ...] = ()
        if user_uuid is not None:
            query += " WHERE user_uuid = ?"
            params = (user_uuid,)
        query += " ORDER BY created_at, uuid"
        rows = await self._run(lambda cur: cur.all(query, params), write=False)
        return [_token(r) for r in rows]

    async def revoke_token(self, uuid: str) -> bool:
        """Delete a token row; False if there was none."""
        count = await self._run(
            lambda cur: cur.execute("DELETE FROM api_client_authorizations WHERE uuid = ?", (uuid,)),
            write=True,
        )
        return count > 0

    async def find_token(self, token: str) -> tuple[TokenRecord, UserRecord] | None:
        """The token row and its user for a presented token, or None.

        Accepts a v1 bare secret, ``v2/<uuid>/<secret>``, and a v2 token
        whose secret is salted for this cluster (spec 3.5). Expiry is not
        checked here: the caller compares ``expires_at`` with its clock.
        """
        if not token or "\x00" in token or not _utf8(token):
            return None  # cannot be stored, so cannot match (and would upset the driver)
        columns = (
            "t.uuid, t.user_uuid, t.secret, t.scopes, t.created_at, t.expires_at, "
            + ", ".join(f"u.{c.strip()}" for c in _USER_COLUMNS.split(","))
        )
        base = (
            f"SELECT {columns} FROM api_client_authorizations t"
            " JOIN users u ON u.uuid = t.user_uuid"
        )
        if token.startswith("v2/"):
            parts = token.split("/")
            if len(parts) != 3 or not ids.UUID_RE.match(parts[1]) or not parts[2]:
                return None
            uuid, presented = parts[1], parts[2]
            row = await self._run(
                lambda cur: cur.one(base + " WHERE t.uuid = ?", (uuid,)), write=False
            )
            if row is None:
                return None
            stored = row[2]
            if not (
                _same(presented, stored)
                or (
                    len(presented) == 40
                    and _same(presented, ids.salted_secret(stored, self.cluster_id))
                )
            ):
                return None
        else:
            row = await self._run(
                lambda cur: cur.one(base + " WHERE t.secret = ?", (token,)), write=False
            )
            if row is None or not _same(token, row[2]):
                return None
        return _token(row[:6]), _user(row[6:])

    # -- well-known records -----------------------------------------------

    async def ensure_system_records(self, *, system_root_token: str, anonymous_token: str) -> None:
        """Create, idempotently, the system and anonymous users and their tokens,
        and the well-known groups (All users, anonymous, system; role groups
        owned by the system user).

        The token rows get the configured secrets (a changed config replaces
        the old secret; an empty one deletes the row, so a token removed
        from the config stops working). Safe to run from several nodes at
        once: every write is an upsert.
        """
        c = self.cluster_id
        now = self._clock.seconds()
        system_user = ids.system_user_uuid(c)
        anonymous_user = ids.anonymous_user_uuid(c)
        wanted = (
            (ids.system_root_token_uuid(c), system_user, _bare_secret(system_root_token), ("all",)),
            (
                ids.anonymous_token_uuid(c),
                anonymous_user,
                _bare_secret(anonymous_token),
                ANONYMOUS_TOKEN_SCOPES,
            ),
        )
        groups = (
            (ids.all_users_group_uuid(c), "All users"),
            (ids.anonymous_group_uuid(c), "Anonymous users"),
            (ids.system_group_uuid(c), "System group"),
        )

        def ensure(cur: _Cursor) -> None:
            insert_user = (
                f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (uuid) DO NOTHING"
            )
            cur.execute(insert_user, (system_user, "", None, "root", "", True, True, "{}", now, now))
            # The root identity must stay an active admin whatever happened to the row.
            cur.execute(
                "UPDATE users SET is_admin = ?, is_active = ?, modified_at = ?"
                " WHERE uuid = ? AND NOT (is_admin AND is_active)",
                (True, True, now, system_user),
            )
            cur.execute(
                insert_user,
                (anonymous_user, "", None, "Anonymous", "", False, True, "{}", now, now),
            )
            for group_uuid, name in groups:
                cur.execute(
                    "INSERT INTO groups (uuid, owner_uuid, created_at, modified_at,"
                    " modified_by_user_uuid, name, description, group_class, properties)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (uuid) DO NOTHING",
                    (group_uuid, system_user, now, now, system_user, name, None, "role", "{}"),
                )
            for token_uuid, user_uuid, secret, scopes in wanted:
                if not secret:
                    cur.execute(
                        "DELETE FROM api_client_authorizations WHERE uuid = ?", (token_uuid,)
                    )
                    continue
                cur.execute(
                    f"INSERT INTO api_client_authorizations ({_TOKEN_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, NULL)"
                    " ON CONFLICT (uuid) DO UPDATE SET secret = excluded.secret,"
                    " user_uuid = excluded.user_uuid, scopes = excluded.scopes,"
                    " expires_at = NULL",
                    (token_uuid, user_uuid, secret, json.dumps(list(scopes)), now),
                )

        await self._run(ensure, write=True)


def open_store(
    reactor: Any,
    *,
    cluster_id: str,
    postgresql: Mapping[str, str] | None,
    sqlite_path: str | None,
    clock: IReactorTime,
    rng: random.Random,
    max_threads: int = 8,
    migrations: Sequence[Migration] = MIGRATIONS,
) -> Store:
    """Build a :class:`Store`; nothing touches the database until :meth:`Store.start`.

    A non-empty ``postgresql`` mapping (Arvados ``PostgreSQL.Connection``
    keys) selects PostgreSQL with up to ``max_threads`` connections;
    otherwise SQLite at ``sqlite_path`` with one connection.
    """
    if not ids.CLUSTER_ID_RE.match(cluster_id):
        raise ValueError(f"invalid cluster id {cluster_id!r}")
    if postgresql and any(str(v) for v in postgresql.values()):
        pool = postgresql_pool(reactor, postgresql, max_threads)
        dialect = POSTGRESQL
    elif sqlite_path:
        pool = sqlite_pool(reactor, sqlite_path)
        dialect = SQLITE
    else:
        raise ValueError("either a PostgreSQL connection or an SQLite path is required")
    return Store(
        pool, dialect, cluster_id=cluster_id, clock=clock, rng=rng, migrations=migrations
    )
