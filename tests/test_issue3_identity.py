# -*- test-case-name: tests.test_issue3_identity -*-
"""Audit of issue 3's **Identity store** and **Token checking** bullets, and of
the admin commands (``arvnode user ...``, ``arvnode token ...``).

Everything here goes through real things: nodes in this process on loopback
ports, the ``arvnode`` console script as a child process, SQLite files and
fresh PostgreSQL databases (tests/pgfixture.py: a missing server fails under
``CI=true``). Points already proven elsewhere are not repeated (the audit
report lists them); each test's docstring names the bullet it proves.
"""
from __future__ import annotations

import hashlib
import os
import random
import threading
from pathlib import Path
from typing import Any

import yaml
from twisted.internet import reactor, utils
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from arvnode import ids
from arvnode.auth.tokens import Authenticator
from arvnode.store import MIGRATIONS, open_store
from tests import pgfixture
from tests.api.base import EMPTY_FILE_MANIFEST, ApiTestCase
from tests.helpers import (
    RunningNode, http_client, make_cluster_config, start_node, subprocess_env, venv_bin,
)

T0 = 1_700_000_000.0
BLOCK = b"issue 3 identity audit\n"
BLOCK_HASH = hashlib.md5(BLOCK).hexdigest()


# -- helpers -------------------------------------------------------------------


async def arvnode_cli(*argv: str) -> tuple[int, str, str]:
    """Run the ``arvnode`` console script as a child process: (status, stdout, stderr).

    Asynchronous, so a node running in this process keeps serving meanwhile.
    """
    out, err, code = await utils.getProcessOutputAndValue(
        venv_bin("arvnode"), argv, env=subprocess_env(), reactor=reactor)
    return code, out.decode(), err.decode()


class _RecordingCursor:
    """A DB-API cursor that notes the thread of every execute()."""

    def __init__(self, real: Any, seen: list[threading.Thread]) -> None:
        self._real = real
        self._seen = seen

    def execute(self, *args: Any, **kw: Any) -> Any:
        self._seen.append(threading.current_thread())
        return self._real.execute(*args, **kw)

    def executemany(self, *args: Any, **kw: Any) -> Any:
        self._seen.append(threading.current_thread())
        return self._real.executemany(*args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _RecordingConnection:
    """A DB-API connection whose cursors (and sqlite3 shortcut execute) record threads."""

    def __init__(self, real: Any, seen: list[threading.Thread]) -> None:
        self._real = real
        self._seen = seen

    def cursor(self, *args: Any, **kw: Any) -> _RecordingCursor:
        return _RecordingCursor(self._real.cursor(*args, **kw), self._seen)

    def execute(self, *args: Any, **kw: Any) -> Any:
        self._seen.append(threading.current_thread())
        return self._real.execute(*args, **kw)

    def commit(self) -> Any:
        self._seen.append(threading.current_thread())
        return self._real.commit()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _RecordingDBAPI:
    """Stands in for the DB-API module of an adbapi pool; connect() records who connects."""

    def __init__(self, real: Any, seen: list[threading.Thread]) -> None:
        self._real = real
        self._seen = seen

    def connect(self, *args: Any, **kw: Any) -> _RecordingConnection:
        self._seen.append(threading.current_thread())
        return _RecordingConnection(self._real.connect(*args, **kw), self._seen)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


# -- API and keepproxy through a node --------------------------------------------


class IdentityOverHttpMixin:
    """Token forms, expiry, root, anonymous and inactive users, over HTTP."""

    async def test_v1_v2_and_every_token_place(self) -> None:
        """Identity store (v1 and v2 forms) and Token checking (Bearer, OAuth2,
        api_token in the query and in a form body): each way answers the same
        user on the API, and the keepproxy accepts both forms for PUT and GET."""
        await self.startNode()
        user, v2 = await self.make_user(name="alice")
        v1 = v2.split("/")[2]
        self.assertRegex(v2, rf"^v2/{self.cluster}-gj3su-[a-z0-9]{{15}}/[a-z0-9]+$")
        self.assertRegex(user, rf"^{self.cluster}-tpzed-[a-z0-9]{{15}}$")
        for token in (v2, v1):
            for scheme in ("Bearer", "OAuth2"):
                code, body, _ = await self.raw("GET", "/arvados/v1/users/current",
                                               headers={"Authorization": f"{scheme} {token}"})
                self.assertEqual(code, 200, (scheme, token == v1, body))
            me = await self.ok("GET", "users/current", params={"api_token": token})
            self.assertEqual(me["uuid"], user)
            # A form body (POST with _method=GET, as the SDKs send long queries).
            code, body, _ = await self.raw(
                "POST", "/arvados/v1/users/current",
                body=f"api_token={token}&_method=GET".encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"})
            self.assertEqual(code, 200, body)
            loc = await self.keep_put(BLOCK, token)
            self.assertEqual(await self.keep_get(loc, token), (200, BLOCK))

    async def test_expired_token_401_on_api_403_on_keep(self) -> None:
        """Identity store (expiry): a token past its expires_at is 401 on the
        API and 403 on the keepproxy, as Arvados answers; the same user's
        unexpired token keeps working."""
        await self.startNode()
        user, good = await self.make_user(name="alice")
        loc = await self.keep_put(BLOCK, good)
        now = self.store.now()
        old = await self.store.create_token(user, expires_at=now - 1)
        later = await self.store.create_token(user, expires_at=now + 3600)
        for token in (old.v2, old.secret):
            code, err = await self.api("GET", "users/current", token=token)
            self.assertEqual(code, 401, err)
            self.assertIn("expired", err["errors"][0])
            r = await self.client.request(
                "PUT", f"{self.node.keepproxy_url}/{loc.split('+')[0]}", data=BLOCK,
                headers={"Authorization": [f"Bearer {token}"]})
            self.assertEqual(r.code, 403, await r.content())
        await self.ok("GET", "users/current", token=later.v2)
        me = await self.ok("GET", "api_client_authorizations/current", token=later.v2)
        self.assertIsNotNone(me["expires_at"])

    async def test_system_root_token(self) -> None:
        """Identity store (system root user and SystemRootToken): the configured
        token, bare or in v2 form, is the active admin system user."""
        await self.startNode()
        for token in (self.root, f"v2/{ids.system_root_token_uuid(self.cluster)}/{self.root}"):
            me = await self.ok("GET", "users/current", token=token)
            self.assertEqual(me["uuid"], ids.system_user_uuid(self.cluster))
            self.assertTrue(me["is_admin"])
            self.assertTrue(me["is_active"])

    async def test_anonymous_is_read_only(self) -> None:
        """Identity store (anonymous user and token, read-only public access):
        Users.AnonymousUserToken, bare or v2, reads what is shared with the
        anonymous group; creating, updating and deleting are refused with a
        message, and the keepproxy refuses its PUT."""
        await self.startNode()
        alice, a_tok = await self.make_user(name="alice")
        coll = (await self.ok("POST", "collections", token=a_tok, body={
            "name": "public", "manifest_text": EMPTY_FILE_MANIFEST}))["uuid"]
        await self.ok("POST", "links", token=a_tok, body={
            "link_class": "permission", "name": "can_read",
            "tail_uuid": ids.anonymous_group_uuid(self.cluster), "head_uuid": coll})
        bare = self.node.section["Users"]["AnonymousUserToken"]
        for anon in (bare, f"v2/{ids.anonymous_token_uuid(self.cluster)}/{bare}"):
            me = await self.ok("GET", "users/current", token=anon)
            self.assertEqual(me["uuid"], ids.anonymous_user_uuid(self.cluster))
            self.assertFalse(me["is_admin"])
            await self.ok("GET", f"collections/{coll}", token=anon)
            listed = await self.ok("GET", "collections", token=anon)
            self.assertEqual([i["uuid"] for i in listed["items"]], [coll])
            for method, path, body in (
                ("POST", "collections", {"name": "spam"}),
                ("PUT", f"collections/{coll}", {"name": "defaced"}),
                ("DELETE", f"collections/{coll}", None),
                ("POST", "api_client_authorizations", {}),
                ("PUT", f"users/{ids.anonymous_user_uuid(self.cluster)}", {"first_name": "x"}),
            ):
                code, err = await self.api(method, path, token=anon, body=body)
                self.assertIn(code, (401, 403), (method, path, err))
                self.assertTrue(err["errors"][0], (method, path))
            r = await self.client.request(
                "PUT", f"{self.node.keepproxy_url}/{BLOCK_HASH}",
                data=BLOCK, headers={"Authorization": [f"Bearer {anon}"]})
            self.assertEqual(r.code, 403)
            self.assertIn(b"not allowed", await r.content())
        got = await self.ok("GET", f"collections/{coll}", token=a_tok)
        self.assertEqual(got["name"], "public")

    async def test_inactive_user_sees_itself_not_the_shared(self) -> None:
        """Token checking (active or not): an inactive user gets users/current
        (is_active false, as Arvados clients expect to read), does not see what
        is shared with All users, changes nothing, and cannot PUT blocks."""
        await self.startNode()
        _, a_tok = await self.make_user(name="alice")
        sleepy, s_tok = await self.make_user(name="sleepy", active=False)
        coll = (await self.ok("POST", "collections", token=a_tok, body={
            "name": "for everyone", "manifest_text": EMPTY_FILE_MANIFEST}))["uuid"]
        await self.ok("POST", "links", token=a_tok, body={
            "link_class": "permission", "name": "can_read",
            "tail_uuid": ids.all_users_group_uuid(self.cluster), "head_uuid": coll})
        _, b_tok = await self.make_user(name="bob")
        await self.ok("GET", f"collections/{coll}", token=b_tok)
        me = await self.ok("GET", "users/current", token=s_tok)
        self.assertEqual((me["uuid"], me["is_active"]), (sleepy, False))
        code, err = await self.api("GET", f"collections/{coll}", token=s_tok)
        self.assertEqual(code, 404, err)
        code, err = await self.api("POST", "collections", token=s_tok, body={"name": "x"})
        self.assertEqual(code, 403, err)
        self.assertIn("not active", err["errors"][0])
        r = await self.client.request(
            "PUT", f"{self.node.keepproxy_url}/{BLOCK_HASH}",
            data=BLOCK, headers={"Authorization": [f"Bearer {s_tok}"]})
        self.assertEqual(r.code, 403)
        await r.content()


class IdentityOverHttpSQLiteTests(IdentityOverHttpMixin, ApiTestCase):
    pass


class IdentityOverHttpPostgreSQLTests(IdentityOverHttpMixin, ApiTestCase):
    postgresql = True


# -- the store: threads and migrations --------------------------------------------


class StoreThreadsMixin:
    """Blocking database calls of a serving node, watched at the DB-API level."""

    postgresql = False
    timeout = 120

    async def test_db_calls_never_on_reactor_thread(self) -> None:
        """Identity store (blocking database calls run on a bounded thread pool,
        never on the reactor thread): every connect/execute/commit a node makes
        while serving API and keepproxy requests runs on a pool worker, and no
        more workers than the pool's bound ever touch the database."""
        from arvnode.config import config_from_string
        from arvnode.node import build_node

        reactor_thread = threading.current_thread()
        pg = pgfixture.fresh_database(self) if self.postgresql else None  # type: ignore[arg-type]
        extra = {"PostgreSQL.ConnectionPool": 3} if pg else {}
        config_dict, paths = make_cluster_config(Path(self.mktemp()),  # type: ignore[attr-defined]
                                                 postgresql=pg, extra=extra)
        node = build_node(config_from_string(yaml.safe_dump(config_dict)), reactor)
        pool = node.store._pool
        seen: list[threading.Thread] = []
        pool.dbapi = _RecordingDBAPI(pool.dbapi, seen)
        node.startService()
        self.addCleanup(node.stopService)  # type: ignore[attr-defined]
        await node.started()
        running = RunningNode(node, config_dict, paths)
        client = http_client(self, paths["ca"])
        user = await node.store.create_user(username="alice", is_active=True)
        token = (await node.store.create_token(user.uuid)).v2
        headers = {"Authorization": [f"Bearer {token}"]}
        url = running.controller_url + "/arvados/v1/"
        for method, path, data in (
            ("GET", "users/current", None),
            ("POST", "collections", b'{"name": "x"}'),
            ("GET", "collections", None),
            ("GET", "api_client_authorizations/current", None),
        ):
            r = await client.request(method, url + path, data=data, headers={
                **headers, "Content-Type": ["application/json"]})
            self.assertEqual(r.code, 200, await r.content())  # type: ignore[attr-defined]
            await r.content()
        r = await client.request(
            "PUT", f"{running.keepproxy_url}/{BLOCK_HASH}",
            data=BLOCK, headers=headers)
        self.assertEqual(r.code, 200, await r.content())  # type: ignore[attr-defined]
        self.assertTrue(seen)  # type: ignore[attr-defined]
        self.assertNotIn(reactor_thread, set(seen))  # type: ignore[attr-defined]
        workers = set(seen)
        self.assertLessEqual(len(workers), pool.max)  # type: ignore[attr-defined]
        self.assertEqual(pool.threadpool.max, pool.max)  # type: ignore[attr-defined]
        self.assertEqual(pool.max, 3 if pg else 1)  # type: ignore[attr-defined]


class StoreThreadsSQLiteTests(StoreThreadsMixin, TestCase):
    pass


class StoreThreadsPostgreSQLTests(StoreThreadsMixin, TestCase):
    postgresql = True


class MigrateAtStartMixin:
    """A node started on a database left at migration 1 brings it up to date."""

    async def test_node_migrates_old_database(self) -> None:
        """Identity store (schema created and migrated at start): a database at
        migration 1 holding a user and token is migrated by the node's start,
        and the token still works over the API."""
        pg = pgfixture.fresh_database(self) if self.postgresql else None
        config_dict, paths = make_cluster_config(Path(self.mktemp()), postgresql=pg)
        cluster = next(iter(config_dict["Clusters"]))
        old = open_store(
            reactor, cluster_id=cluster, postgresql=pg,
            sqlite_path=str(paths["data"] / "arvnode.sqlite"), clock=reactor,
            rng=random.Random(), migrations=MIGRATIONS[:1])
        await old.start()
        self.assertEqual(await old.applied_migrations(), [1])
        user = await old.create_user(username="early", is_active=True)
        token = await old.create_token(user.uuid)
        await old.stop()
        self.node = await start_node(self, config_dict, paths)
        self.client = http_client(self, paths["ca"])
        self.store = self.node.node.store
        self.assertEqual(await self.store.applied_migrations(), [m.version for m in MIGRATIONS])
        me = await self.ok("GET", "users/current", token=token.v2)
        self.assertEqual(me["uuid"], user.uuid)
        await self.ok("POST", "collections", token=token.v2, body={"name": "after migration"})


class MigrateAtStartSQLiteTests(MigrateAtStartMixin, ApiTestCase):
    pass


class MigrateAtStartPostgreSQLTests(MigrateAtStartMixin, ApiTestCase):
    postgresql = True


# -- the cache bound against a change made by another process ---------------------


class OtherProcessRevocationTests(TestCase):
    """What a node's Authenticator does about a change another process made."""

    async def test_cli_revocation_refused_within_ttl(self) -> None:
        """Token checking (a revoked token is refused; the documented bound for
        a change made by another process, such as ``arvnode token revoke``):
        with a cached answer, a token deleted and a user deactivated through a
        second store on the same database are seen once ArvNode.TokenCacheTTL
        has passed on the node's clock, never later."""
        clock = Clock()
        clock.advance(T0)
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "db.sqlite")
        stores = []
        for _ in range(2):
            s = open_store(reactor, cluster_id="zzzzz", postgresql=None, sqlite_path=path,
                           clock=clock, rng=random.Random())
            await s.start()
            self.addCleanup(s.stop)
            stores.append(s)
        node_store, cli_store = stores
        auth = Authenticator(node_store, clock, cache_ttl=2.0)
        user = await node_store.create_user(username="u", is_active=True)
        doomed = await node_store.create_token(user.uuid)
        other = await node_store.create_token(user.uuid)
        self.assertIsNotNone(await auth.authenticate(doomed.v2))
        self.assertIsNotNone(await auth.authenticate(other.v2))
        self.assertTrue(await cli_store.revoke_token(doomed.uuid))
        await cli_store.update_user(user.uuid, is_active=False)
        clock.advance(2.0)
        self.assertIsNone(await auth.authenticate(doomed.v2))
        identity = await auth.authenticate(other.v2)
        assert identity is not None
        self.assertFalse(identity.is_active)


# -- the admin commands as child processes -----------------------------------------


def _serve_on_free_ports(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The same cluster, listening on port 0 (the data dir and database unchanged)."""
    (cid, section), = config_dict["Clusters"].items()
    for name in ("Controller", "Keepproxy"):
        svc = section["Services"][name]
        scheme = svc["ExternalURL"].split(":", 1)[0]
        url = f"{scheme}://127.0.0.1:0/"
        svc["ExternalURL"] = url
        svc["InternalURLs"] = {url: {}}
    return config_dict


class AdminCommandsMixin:
    """``arvnode user ...`` and ``arvnode token ...`` as real subprocesses, and
    what they print used against a running node."""

    timeout = 180

    async def where(self) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
        """(CLI options naming the database, node config dict, paths)."""
        raise NotImplementedError

    async def ok(self, *argv: str) -> str:
        code, out, err = await arvnode_cli(*argv, *self.opts)
        self.assertEqual(code, 0, err)  # type: ignore[attr-defined]
        return out

    async def fails(self, status: int, *argv: str) -> str:
        """Run a command that must fail: its one-line message, no traceback."""
        code, out, err = await arvnode_cli(*argv, *self.opts)
        self.assertEqual((code, out), (status, ""), err)  # type: ignore[attr-defined]
        self.assertNotIn("Traceback", err)  # type: ignore[attr-defined]
        self.assertEqual(len(err.strip().splitlines()), 1, err)  # type: ignore[attr-defined]
        return err

    async def api(self, token: str, path: str = "users/current", method: str = "GET",
                  ) -> tuple[int, Any]:
        import json

        r = await self.client.request(method, f"{self.node.controller_url}/arvados/v1/{path}",
                                      headers={"Authorization": [f"Bearer {token}"]})
        body = await r.content()
        return r.code, json.loads(body) if body else None

    async def test_commands_and_their_tokens(self) -> None:
        """Identity store (arvnode user create|list|activate|deactivate, arvnode
        token create|list|revoke [--user] [--expires], --admin, --anonymous):
        run as subprocesses, their output is usable against a running node,
        errors are one line without a traceback, and a token revoked by the
        CLI is refused once ``arvnode cache drop`` has told the node."""
        self.opts, config_dict, paths = await self.where()
        uuid = (await self.ok("user", "create", "--email", "c@x", "--username", "carol")).strip()
        cluster = uuid[:5]
        self.assertRegex(uuid, rf"^{cluster}-tpzed-[a-z0-9]{{15}}$")
        self.assertRegex(await self.ok("user", "list"), rf"{uuid}\s+carol\s+c@x\s+no\s+no")
        self.assertEqual(await self.ok("user", "activate", uuid), uuid + "\n")
        token = (await self.ok("token", "create", "--user", uuid)).strip()
        self.assertRegex(token, rf"^v2/{cluster}-gj3su-[a-z0-9]{{15}}/[a-z0-9]+$")
        short = (await self.ok("token", "create", "--user", uuid, "--expires", "1h30m")).strip()
        admin = (await self.ok("token", "create", "--admin")).strip()
        anon = (await self.ok("token", "create", "--anonymous")).strip()
        self.assertTrue(anon.startswith(f"v2/{ids.anonymous_token_uuid(cluster)}/"))
        listing = await self.ok("token", "list", "--user", uuid)
        self.assertIn(token.split("/")[1], listing)
        self.assertRegex(listing, rf"{short.split('/')[1]}\s+{uuid}\s+\d{{4}}-\d\d-\d\dT")
        self.assertNotIn(token.split("/")[2], listing)

        err = await self.fails(1, "token", "create", "--user", f"{cluster}-tpzed-000000000000xyz")
        self.assertIn(f"{cluster}-tpzed-000000000000xyz", err)
        err = await self.fails(2, "token", "create", "--user", uuid, "--expires", "5")
        self.assertIn("--expires", err)
        err = await self.fails(2, "token", "create", "--user", uuid, "--expires", "soon")
        self.assertIn("--expires", err)
        await self.fails(1, "user", "deactivate", f"{cluster}-tpzed-000000000000xyz")
        err = await self.fails(1, "token", "list", "--user", f"{cluster}-tpzed-000000000000xyz")
        self.assertIn("no user", err)
        await self.fails(1, "token", "revoke", f"{cluster}-gj3su-000000000000xyz")

        self.node = await start_node(self, config_dict, paths)
        self.client = http_client(self, paths["ca"])
        for tok, who, is_admin in ((token, uuid, False), (short, uuid, False),
                                   (admin, None, True),
                                   (anon, ids.anonymous_user_uuid(cluster), False)):
            code, me = await self.api(tok)
            self.assertEqual(code, 200, me)
            if who:
                self.assertEqual(me["uuid"], who)
            self.assertEqual(me["is_admin"], is_admin)
        r = await self.client.request(
            "PUT", f"{self.node.keepproxy_url}/{BLOCK_HASH}",
            data=BLOCK, headers={"Authorization": [f"Bearer {token}"]})
        self.assertEqual(r.code, 200, await r.content())

        # Revoked and deactivated by another process while the node runs.
        self.assertEqual(await self.ok("token", "revoke", token.split("/")[1]),
                         token.split("/")[1] + "\n")
        await self.ok("user", "deactivate", uuid)
        drop = ["cache", "drop", "--url", self.node.controller_url, "--ca-file", str(paths["ca"])]
        await self.ok(*drop, "--user-uuid", uuid)
        code, err = await self.api(token)
        self.assertEqual(code, 401, err)
        code, me = await self.api(short)
        self.assertEqual((code, me["is_active"]), (200, False))
        code, err = await self.api(short, "collections", "POST")
        self.assertEqual(code, 403, err)


class AdminCommandsEmbeddedTests(AdminCommandsMixin, TestCase):
    """Against ``arvnode init --data DIR`` (SQLite in the data directory)."""

    async def where(self) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
        data = os.path.abspath(self.mktemp())
        code, out, err = await arvnode_cli("init", "--data", data)
        self.assertEqual(code, 0, err)
        self.assertIn("export ARVADOS_API_TOKEN=v2/", out)
        with open(os.path.join(data, "config.yml")) as f:
            config_dict = _serve_on_free_ports(yaml.safe_load(f))
        return ["--data", data], config_dict, {"ca": Path(data) / "tls" / "ca.pem"}


class AdminCommandsPostgreSQLTests(AdminCommandsMixin, TestCase):
    """Against a config file whose PostgreSQL.Connection names the database."""

    async def where(self) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
        pg = pgfixture.fresh_database(self)
        config_dict, paths = make_cluster_config(Path(self.mktemp()), postgresql=pg)
        path = os.path.abspath(self.mktemp()) + ".yml"
        section = next(iter(config_dict["Clusters"].values()))
        del section["ArvNode"]["DataDirectory"]  # the CLI must find the database by PostgreSQL
        with open(path, "w") as f:
            yaml.safe_dump(config_dict, f)
        section["ArvNode"]["DataDirectory"] = str(paths["data"])
        return ["--config", path], config_dict, paths
