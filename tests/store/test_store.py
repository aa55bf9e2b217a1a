# -*- test-case-name: tests.store.test_store -*-
"""Tests for :mod:`arvnode.store`, run once on SQLite and once on PostgreSQL."""
from __future__ import annotations

import os
import random

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from arvnode import ids
from arvnode.store import (
    MIGRATIONS,
    Conflict,
    Migration,
    NotFound,
    StoreUnavailable,
    TokenRecord,
    open_store,
    salted_secret,
)
from tests import pgfixture
from tests.store.helpers import CLUSTER, T0, PostgreSQLEngine, SQLiteEngine, StoreFactoryMixin

# Spec 3.3 / 12.2 test anchor.
ANCHOR_UUID = "zzzzz-gj3su-077z32aux8dg2s1"
ANCHOR_SECRET = "3kg6k6lzmp9kj5cpkcoxie963cmvjahbt2fod9zru30k1jqdmi"
ANCHOR_SALTED_ZZZZZ = "282d7d172b6cfdce364c5ed12ddf7417b2d00065"
ANCHOR_SALTED_ZBBBB = "33b4da68bfe07da0281a7fdbc08b4f6f41c7bd98"

ROOT_SECRET = "r" * 40 + "oottoken12"
ANON_SECRET = "a" * 40 + "nontoken12"


class SchemaTestsMixin(StoreFactoryMixin):
    """Migrations, lifecycle and health of a store."""

    async def test_start_applies_migrations(self) -> None:
        """A fresh database gets every migration, recorded in schema_migrations."""
        store = await self.started()
        self.assertEqual(await store.applied_migrations(), [m.version for m in MIGRATIONS])
        self.assertEqual(store.engine, self.engine)

    async def test_restart_is_idempotent(self) -> None:
        """Starting a second store on a migrated database applies nothing and keeps the data."""
        first = await self.started()
        user = await first.create_user(email="a@example.com")
        await first.stop()
        second = await self.started()
        self.assertEqual(await second.applied_migrations(), [m.version for m in MIGRATIONS])
        self.assertEqual((await second.get_user(user.uuid)).email, "a@example.com")

    async def test_appended_migration_applied_once(self) -> None:
        """A migration appended to the list is applied at the next start, and only it."""
        await self.started()
        extra = Migration(
            len(MIGRATIONS) + 1,
            "test table",
            ("CREATE TABLE test_extra (id TEXT PRIMARY KEY)",),
        )
        second = await self.started(migrations=(*MIGRATIONS, extra))
        self.assertEqual(
            await second.applied_migrations(), [m.version for m in (*MIGRATIONS, extra)]
        )
        third = await self.started(migrations=(*MIGRATIONS, extra))
        self.assertEqual(len(await third.applied_migrations()), len(MIGRATIONS) + 1)

    async def test_concurrent_start(self) -> None:
        """Two stores starting at once on one database both succeed and migrate it once."""
        a, b = self.open(), self.open()
        await gatherResults(
            [Deferred.fromCoroutine(a.start()), Deferred.fromCoroutine(b.start())]
        )
        versions = [m.version for m in MIGRATIONS]
        self.assertEqual(await a.applied_migrations(), versions)
        self.assertEqual(await b.applied_migrations(), versions)

    async def test_ping(self) -> None:
        """ping() succeeds on a working database."""
        store = await self.started()
        self.assertIsNone(await store.ping())

    async def test_unreachable(self) -> None:
        """A database that cannot be reached makes start() raise StoreUnavailable."""
        store = self.open(**self.unreachable_settings())
        with self.assertRaises(StoreUnavailable):
            await store.start()

    def unreachable_settings(self) -> dict[str, object]:  # pragma: no cover - overridden
        raise NotImplementedError


class UserTestsMixin(StoreFactoryMixin):
    """Users: create, read, list, update, uniqueness."""

    async def test_create_and_get(self) -> None:
        """A created user reads back field for field, timestamps from the injected clock."""
        store = await self.started()
        created = await store.create_user(
            email="alice@example.com",
            username="alice",
            first_name="Alice",
            last_name="Liddell",
            is_admin=True,
            is_active=True,
            prefs={"profile": {"org": "x"}},
        )
        self.assertRegex(created.uuid, rf"^{CLUSTER}-tpzed-[a-z0-9]{{15}}$")
        self.assertEqual(created.created_at, T0)
        self.assertEqual(await store.get_user(created.uuid), created)

    async def test_get_unknown(self) -> None:
        """get_user raises NotFound for a uuid with no row."""
        store = await self.started()
        with self.assertRaises(NotFound):
            await store.get_user(f"{CLUSTER}-tpzed-000000000000abc")

    async def test_list_oldest_first(self) -> None:
        """list_users returns every user in creation order."""
        store = await self.started()
        made = []
        for name in ("c", "a", "b"):
            made.append(await store.create_user(username=name))
            self.clock.advance(1)
        self.assertEqual([u.uuid for u in await store.list_users()], [u.uuid for u in made])

    async def test_update(self) -> None:
        """update_user changes the named fields and modified_at, nothing else."""
        store = await self.started()
        user = await store.create_user(email="e@x", username="u")
        self.clock.advance(5)
        updated = await store.update_user(user.uuid, is_active=True, prefs={"a": 1})
        self.assertTrue(updated.is_active)
        self.assertEqual(updated.prefs, {"a": 1})
        self.assertEqual(updated.email, "e@x")
        self.assertEqual(updated.created_at, T0)
        self.assertEqual(updated.modified_at, T0 + 5)
        self.assertEqual(await store.get_user(user.uuid), updated)

    async def test_update_unknown(self) -> None:
        """update_user raises NotFound for a missing user."""
        store = await self.started()
        with self.assertRaises(NotFound):
            await store.update_user(f"{CLUSTER}-tpzed-000000000000abc", is_active=True)

    async def test_update_bad_field(self) -> None:
        """update_user refuses fields that are not user attributes."""
        store = await self.started()
        user = await store.create_user()
        with self.assertRaises(TypeError):
            await store.update_user(user.uuid, uuid="zzzzz-tpzed-000000000000abc")

    async def test_duplicate_username(self) -> None:
        """A second user with a taken username is a Conflict, on create and on update."""
        store = await self.started()
        await store.create_user(username="bob")
        other = await store.create_user(username="carol")
        with self.assertRaises(Conflict):
            await store.create_user(username="bob")
        with self.assertRaises(Conflict):
            await store.update_user(other.uuid, username="bob")

    async def test_duplicate_uuid(self) -> None:
        """Creating a user with an existing uuid is a Conflict."""
        store = await self.started()
        user = await store.create_user()
        with self.assertRaises(Conflict):
            await store.create_user(uuid=user.uuid)

    async def test_many_users_without_username(self) -> None:
        """Usernames are unique, but any number of users may have none."""
        store = await self.started()
        await store.create_user()
        await store.create_user(username="")
        self.assertEqual(len(await store.list_users()), 2)


class TokenTestsMixin(StoreFactoryMixin):
    """Tokens: issue, look up in every accepted form, revoke."""

    async def user_and_token(self, **token_kw: object) -> tuple[object, TokenRecord]:
        self.store = await self.started()
        user = await self.store.create_user(username="t", is_active=True)
        token = await self.store.create_token(user.uuid, **token_kw)  # type: ignore[arg-type]
        return user, token

    async def test_create(self) -> None:
        """A new token has a gj3su uuid, a 50-character secret and the given scopes."""
        user, token = await self.user_and_token(scopes=("GET /",))
        self.assertRegex(token.uuid, rf"^{CLUSTER}-gj3su-[a-z0-9]{{15}}$")
        self.assertRegex(token.secret, r"^[a-z0-9]{50}$")
        self.assertEqual(token.v2, f"v2/{token.uuid}/{token.secret}")
        self.assertEqual(token.scopes, ("GET /",))
        self.assertEqual(await self.store.get_token(token.uuid), token)

    async def test_secret_not_in_repr(self) -> None:
        """A token record's repr never shows its secret."""
        _, token = await self.user_and_token()
        self.assertNotIn(token.secret, repr(token))

    async def test_find_v2(self) -> None:
        """A v2 token finds its row and user."""
        user, token = await self.user_and_token()
        self.assertEqual(await self.store.find_token(token.v2), (token, user))

    async def test_find_v1(self) -> None:
        """A bare (v1) secret finds its row and user."""
        user, token = await self.user_and_token()
        self.assertEqual(await self.store.find_token(token.secret), (token, user))

    async def test_find_salted_for_self(self) -> None:
        """A v2 token salted for this cluster is accepted (spec 3.5 test anchor)."""
        self.store = await self.started()
        user = await self.store.create_user()
        await self.store.create_token(user.uuid, uuid=ANCHOR_UUID, secret=ANCHOR_SECRET)
        self.assertEqual(salted_secret(ANCHOR_SECRET, CLUSTER), ANCHOR_SALTED_ZZZZZ)
        found = await self.store.find_token(f"v2/{ANCHOR_UUID}/{ANCHOR_SALTED_ZZZZZ}")
        assert found is not None
        self.assertEqual(found[0].uuid, ANCHOR_UUID)

    async def test_salted_for_other_cluster_refused(self) -> None:
        """A token salted for another cluster is not valid here."""
        self.store = await self.started()
        user = await self.store.create_user()
        await self.store.create_token(user.uuid, uuid=ANCHOR_UUID, secret=ANCHOR_SECRET)
        self.assertIsNone(await self.store.find_token(f"v2/{ANCHOR_UUID}/{ANCHOR_SALTED_ZBBBB}"))
        self.assertIsNone(await self.store.find_token(ANCHOR_SALTED_ZZZZZ))

    async def test_wrong_secret_refused(self) -> None:
        """A real token uuid with a wrong secret finds nothing."""
        _, token = await self.user_and_token()
        other = await self.store.create_token(token.user_uuid)
        self.assertIsNone(await self.store.find_token(f"v2/{token.uuid}/{other.secret}"))
        self.assertIsNone(await self.store.find_token(f"v2/{token.uuid}/{token.secret[:-1]}"))
        self.assertIsNone(await self.store.find_token(f"v2/{token.uuid}/{'é' * 40}"))

    async def test_malformed_refused(self) -> None:
        """Unknown, empty and malformed tokens find nothing."""
        _, token = await self.user_and_token()
        for bad in (
            "",
            "v2/",
            f"v2/{token.uuid}",
            f"v2/{token.uuid}/",
            f"v2/{token.uuid}/{token.secret}/zzzzz-dz642-000000000000000",
            f"v2/not-a-uuid/{token.secret}",
            f"v2/{CLUSTER}-gj3su-000000000000abc/{token.secret}",
            token.secret + "x",
            token.v2 + "x",
            "nul\x00byte",
            "surrogate\udc80",
            f"v2/{token.uuid}/\x00",
        ):
            self.assertIsNone(await self.store.find_token(bad), bad)

    async def test_expired_still_found(self) -> None:
        """find_token returns an expired row as is: expiry is the caller's decision."""
        _, token = await self.user_and_token(expires_at=T0 - 1)
        found = await self.store.find_token(token.v2)
        assert found is not None
        self.assertEqual(found[0].expires_at, T0 - 1)

    async def test_revoke(self) -> None:
        """A revoked token is gone: not found, not gettable, and a second revoke says False."""
        _, token = await self.user_and_token()
        self.assertTrue(await self.store.revoke_token(token.uuid))
        self.assertIsNone(await self.store.find_token(token.v2))
        with self.assertRaises(NotFound):
            await self.store.get_token(token.uuid)
        self.assertFalse(await self.store.revoke_token(token.uuid))

    async def test_token_for_unknown_user(self) -> None:
        """A token cannot be issued for a user that does not exist."""
        self.store = await self.started()
        with self.assertRaises(NotFound):
            await self.store.create_token(f"{CLUSTER}-tpzed-000000000000abc")

    async def test_duplicate_secret_or_uuid(self) -> None:
        """Reusing a token uuid or secret is a Conflict."""
        user, token = await self.user_and_token()
        with self.assertRaises(Conflict):
            await self.store.create_token(token.user_uuid, secret=token.secret)
        with self.assertRaises(Conflict):
            await self.store.create_token(token.user_uuid, uuid=token.uuid)

    async def test_list(self) -> None:
        """list_tokens lists all tokens, or one user's."""
        user, token = await self.user_and_token()
        other = await self.store.create_user()
        self.clock.advance(1)
        theirs = await self.store.create_token(other.uuid)
        self.assertEqual(
            [t.uuid for t in await self.store.list_tokens()], [token.uuid, theirs.uuid]
        )
        self.assertEqual(await self.store.list_tokens(other.uuid), [theirs])


class SystemRecordsTestsMixin(StoreFactoryMixin):
    """The well-known users and tokens every cluster has."""

    async def test_creates_well_known_records(self) -> None:
        """System and anonymous users and their token rows exist with the configured secrets."""
        store = await self.started()
        await store.ensure_system_records(
            system_root_token=ROOT_SECRET, anonymous_token=ANON_SECRET
        )
        root = await store.find_token(ROOT_SECRET)
        assert root is not None
        self.assertEqual(root[0].uuid, ids.system_root_token_uuid(CLUSTER))
        self.assertEqual(root[1].uuid, ids.system_user_uuid(CLUSTER))
        self.assertTrue(root[1].is_admin and root[1].is_active)
        anon = await store.find_token(f"v2/{ids.anonymous_token_uuid(CLUSTER)}/{ANON_SECRET}")
        assert anon is not None
        self.assertEqual(anon[1].uuid, ids.anonymous_user_uuid(CLUSTER))
        self.assertFalse(anon[1].is_admin)
        self.assertTrue(anon[1].is_active)
        self.assertEqual(anon[0].scopes, ("GET /",))

    async def test_idempotent(self) -> None:
        """Running it again (as every node start does) changes nothing."""
        store = await self.started()
        for _ in range(2):
            await store.ensure_system_records(
                system_root_token=ROOT_SECRET, anonymous_token=ANON_SECRET
            )
        self.assertEqual(len(await store.list_users()), 2)
        self.assertEqual(len(await store.list_tokens()), 2)

    async def test_secret_change(self) -> None:
        """A changed configured secret replaces the old one; an empty one removes the row."""
        store = await self.started()
        await store.ensure_system_records(
            system_root_token=ROOT_SECRET, anonymous_token=ANON_SECRET
        )
        await store.ensure_system_records(
            system_root_token="n" * 50, anonymous_token=""
        )
        self.assertIsNone(await store.find_token(ROOT_SECRET))
        self.assertIsNotNone(await store.find_token("n" * 50))
        with self.assertRaises(NotFound):
            await store.get_token(ids.anonymous_token_uuid(CLUSTER))

    async def test_v2_form_in_config(self) -> None:
        """A configured token written in v2 form stores only its secret."""
        store = await self.started()
        await store.ensure_system_records(
            system_root_token=f"v2/{ids.system_root_token_uuid(CLUSTER)}/{ROOT_SECRET}",
            anonymous_token="",
        )
        self.assertIsNotNone(await store.find_token(ROOT_SECRET))

    async def test_repairs_system_user(self) -> None:
        """A system user that lost its admin flag gets it back."""
        store = await self.started()
        await store.ensure_system_records(system_root_token=ROOT_SECRET, anonymous_token="")
        await store.update_user(ids.system_user_uuid(CLUSTER), is_admin=False)
        await store.ensure_system_records(system_root_token=ROOT_SECRET, anonymous_token="")
        self.assertTrue((await store.get_user(ids.system_user_uuid(CLUSTER))).is_admin)


class SQLiteSchemaTests(SQLiteEngine, SchemaTestsMixin, TestCase):
    def unreachable_settings(self) -> dict[str, object]:
        return {"sqlite_path": os.path.join(self.mktemp(), "missing-dir", "x.sqlite")}


class PostgreSQLSchemaTests(PostgreSQLEngine, SchemaTestsMixin, TestCase):
    def unreachable_settings(self) -> dict[str, object]:
        return {
            "postgresql": {"host": "127.0.0.1", "port": "1", "user": "x", "dbname": "x"},
            "sqlite_path": None,
        }


class SQLiteUserTests(SQLiteEngine, UserTestsMixin, TestCase):
    pass


class PostgreSQLUserTests(PostgreSQLEngine, UserTestsMixin, TestCase):
    pass


class SQLiteTokenTests(SQLiteEngine, TokenTestsMixin, TestCase):
    pass


class PostgreSQLTokenTests(PostgreSQLEngine, TokenTestsMixin, TestCase):
    pass


class SQLiteSystemRecordsTests(SQLiteEngine, SystemRecordsTestsMixin, TestCase):
    pass


class PostgreSQLSystemRecordsTests(PostgreSQLEngine, SystemRecordsTestsMixin, TestCase):
    pass


class OpenStoreTests(TestCase):
    """Argument checking in open_store."""

    def test_bad_cluster_id(self) -> None:
        """A cluster id that is not 5 of [a-z0-9] is refused."""
        with self.assertRaises(ValueError):
            open_store(
                None, cluster_id="ZZ", postgresql=None, sqlite_path="x",
                clock=Clock(), rng=random.Random(),
            )

    def test_no_engine(self) -> None:
        """Neither a PostgreSQL connection nor an SQLite path is an error."""
        with self.assertRaises(ValueError):
            open_store(
                None, cluster_id="zzzzz", postgresql={"host": ""}, sqlite_path=None,
                clock=Clock(), rng=random.Random(),
            )


class PostgreSQLReconnectTests(PostgreSQLEngine, StoreFactoryMixin, TestCase):
    """Losing the server connection (a restart, an admin's terminate) is an
    outage, not a permanent failure; reads do not even notice it."""

    def kill_connections(self) -> None:
        import psycopg2

        admin = psycopg2.connect(dbname="postgres", connect_timeout=3, **pgfixture.server_settings())
        admin.autocommit = True
        try:
            with admin.cursor() as cur:
                cur.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (self._pg_connection["dbname"],),
                )
        finally:
            admin.close()

    async def test_read_after_killed_connections_succeeds(self) -> None:
        """Every pooled connection killed: the next reads (a token lookup is
        one on every request) are retried on fresh connections and succeed."""
        store = await self.started(max_threads=2)
        user = await store.create_user(email="r@example.com")
        await store.ping()
        self.kill_connections()
        for _ in range(3):
            self.assertEqual((await store.get_user(user.uuid)).email, "r@example.com")
        self.flushLoggedErrors()  # adbapi logs the failed rollback of each dead connection

    async def test_write_on_killed_connection_fails_once(self) -> None:
        """A write is not retried (its commit may have happened): it fails
        with StoreUnavailable (a 503 the client retries); the next reconnects.

        (One connection, so "the next call" lands on the same one.)
        """
        store = await self.started(max_threads=1)
        await store.ping()
        self.kill_connections()
        with self.assertRaises(StoreUnavailable):
            await store.create_user(email="w@example.com")
        user = await store.create_user(email="w2@example.com")
        self.assertEqual((await store.get_user(user.uuid)).email, "w2@example.com")
        self.flushLoggedErrors()
