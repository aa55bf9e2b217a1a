# -*- test-case-name: tests.auth.test_remote_tokens -*-
"""Tokens issued by other clusters (spec §8.1-8.3) and the issuing side (§3.5).

The issuer is :mod:`tests.remote.fakecluster`, a loopback TLS server that
stands in for a remote Arvados cluster (arvnode's controller does not yet
serve users/current and api_client_authorizations/current); the store is a
real SQLite (and, for the concurrency test, PostgreSQL) database.
"""
from __future__ import annotations

import random

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from arvnode import ids
from arvnode.auth.remote_tokens import RemoteTokens, activation_decision, parse_time
from arvnode.auth.salting import salt_token
from arvnode.auth.tokens import Authenticator
from arvnode.config import RemoteCluster, UsersConfig
from arvnode.remote.client import RemoteClient, RemoteTimeout, RemoteUnreachable
from tests.remote.fakecluster import FakeCluster, start_fake_cluster
from tests.store.helpers import T0, PostgreSQLEngine, SQLiteEngine

LOCAL = "zzzzz"
PEER = "zbbbb"
INTERVAL = 300.0


class RemoteTokenSetup(SQLiteEngine):
    clock: Clock

    async def build(
        self,
        *,
        activate: bool = False,
        login_cluster: str = "",
        users: UsersConfig | None = None,
        fake: FakeCluster | None = None,
        remotes: dict[str, RemoteCluster] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = await self.started()
        await self.store.ensure_system_records(
            system_root_token="r" * 40, anonymous_token="a" * 40
        )
        self.fake = fake or await start_fake_cluster(self, PEER)
        if remotes is None:
            remotes = {PEER: self.fake.remote_entry(activate_users=activate, proxy=True)}
        self.client = RemoteClient(
            reactor=reactor, clock=self.clock, local_cluster=LOCAL, remotes=remotes,
            ca_file=str(self.fake.ca), timeout=timeout,
        )
        self.addCleanup(lambda: Deferred.fromCoroutine(self.client.close()))
        self.remote = RemoteTokens(
            store=self.store, client=self.client, clock=self.clock, rng=random.Random(3),
            cluster_id=LOCAL, remotes=remotes, users=users or UsersConfig(),
            login_cluster=login_cluster, refresh_interval=INTERVAL,
        )
        self.auth = Authenticator(self.store, self.clock, remote=self.remote)

    def salted(self, token: str) -> str:
        """What a controller of the issuer sends us: the token salted for us."""
        return salt_token(token, LOCAL)


class RemoteTokenTests(RemoteTokenSetup, TestCase):
    async def test_valid_token_makes_a_local_user_copy(self) -> None:
        """A peer's salted token is checked with the issuer and yields its user,
        copied here with the same UUID; the issuer saw ?remote=<us> and the
        token exactly as presented."""
        await self.build(activate=True)
        user = self.fake.add_user(username="alice", email="alice@peer.example",
                                  first_name="Alice", last_name="Peer")
        token = self.fake.add_token(user["uuid"])
        presented = self.salted(token.v2)

        identity = await self.auth.authenticate(presented)

        assert identity is not None
        self.assertEqual(identity.user_uuid, user["uuid"])
        self.assertEqual(identity.token_uuid, token.uuid)
        self.assertEqual(identity.token, presented)
        self.assertTrue(identity.is_active)
        self.assertFalse(identity.is_admin)
        copy = await self.store.get_user(user["uuid"])
        self.assertEqual((copy.username, copy.email, copy.first_name, copy.is_active),
                         ("alice", "alice@peer.example", "Alice", True))
        for call in self.fake.calls:
            self.assertEqual(call["args"]["remote"], [LOCAL])
            self.assertEqual(call["headers"]["authorization"], [f"Bearer {presented}"])
        self.assertEqual([c["path"] for c in self.fake.calls], [
            "/arvados/v1/api_client_authorizations/current", "/arvados/v1/users/current"])

    async def test_activate_users_false_leaves_copy_inactive_until_admin_activates(self) -> None:
        """Without ActivateUsers the copy is inactive; an admin's activation
        survives later revalidations."""
        await self.build(activate=False)
        user = self.fake.add_user()
        presented = self.salted(self.fake.add_token(user["uuid"]).v2)
        identity = await self.auth.authenticate(presented)
        assert identity is not None
        self.assertFalse(identity.is_active)

        await self.auth.set_user_active(user["uuid"], True)
        identity = await self.auth.authenticate(presented)
        assert identity is not None
        self.assertTrue(identity.is_active)
        self.clock.advance(INTERVAL + 1)
        identity = await self.auth.authenticate(presented)
        assert identity is not None
        self.assertTrue(identity.is_active)
        self.assertEqual(len(self.fake.calls_to("api_client_authorizations/current")), 3)

    async def test_home_cluster_deactivation_is_seen_on_revalidation(self) -> None:
        """A user deactivated at home is inactive here after the next check."""
        await self.build(activate=True)
        user = self.fake.add_user()
        presented = self.salted(self.fake.add_token(user["uuid"]).v2)
        self.assertTrue((await self.auth.authenticate(presented)).is_active)
        self.fake.deactivate(user["uuid"])
        self.assertTrue((await self.auth.authenticate(presented)).is_active)  # cached
        self.clock.advance(INTERVAL)
        self.assertFalse((await self.auth.authenticate(presented)).is_active)
        self.assertFalse((await self.store.get_user(user["uuid"])).is_active)

    async def test_revoked_token_refused_after_deadline(self) -> None:
        """A revoked token works from cache until its check is one interval
        old, then the inline revalidation refuses it."""
        await self.build(activate=True)
        user = self.fake.add_user()
        token = self.fake.add_token(user["uuid"])
        presented = self.salted(token.v2)
        self.assertIsNotNone(await self.auth.authenticate(presented))
        self.fake.revoke(token.uuid)
        self.clock.advance(INTERVAL - 1)
        self.assertIsNotNone(await self.auth.authenticate(presented))
        self.clock.advance(1)
        self.assertIsNone(await self.auth.authenticate(presented))
        self.assertEqual(len(self.remote), 0)

    async def test_issuer_4xx_is_invalid_and_not_cached(self) -> None:
        """Unknown token at the issuer → None; nothing cached, asked again next time."""
        await self.build()
        bogus = f"v2/{PEER}-gj3su-000000000000abc/{'x' * 40}"
        self.assertIsNone(await self.auth.authenticate(bogus))
        self.assertIsNone(await self.auth.authenticate(bogus))
        self.assertEqual(len(self.fake.calls), 2)
        self.assertEqual(len(self.remote), 0)

    async def test_issuer_5xx_is_unreachable_not_401(self) -> None:
        """A 5xx from the issuer raises RemoteUnreachable naming it."""
        await self.build()
        user = self.fake.add_user()
        presented = self.salted(self.fake.add_token(user["uuid"]).v2)
        self.fake.fail_status = 503
        e = await self.assertFailure(Deferred.fromCoroutine(self.auth.authenticate(presented)),
                                     RemoteUnreachable)
        self.assertIn(f"remote cluster {PEER} unreachable", str(e))
        self.assertIn("503", str(e))

    async def test_issuer_down_is_unreachable(self) -> None:
        """Connection refused → RemoteUnreachable naming the cluster."""
        await self.build()
        await self.fake.listening_port.stopListening()
        presented = f"v2/{PEER}-gj3su-000000000000abc/{'x' * 40}"
        e = await self.assertFailure(Deferred.fromCoroutine(self.auth.authenticate(presented)),
                                     RemoteUnreachable)
        self.assertIn(f"remote cluster {PEER} unreachable", str(e))

    async def test_issuer_timeout(self) -> None:
        """An issuer that never answers → RemoteTimeout after the deadline (fake clock)."""
        await self.build(timeout=7.0)
        self.fake.hang = True
        presented = f"v2/{PEER}-gj3su-000000000000abc/{'x' * 40}"
        d = Deferred.fromCoroutine(self.auth.authenticate(presented))
        from tests.helpers import wait_for

        await wait_for(lambda: len(self.fake.calls) == 1)
        self.assertFalse(d.called)
        self.clock.advance(7.0)
        e = await self.assertFailure(d, RemoteTimeout)
        self.assertIn("did not answer within 7s", str(e))
        self.assertIn(PEER, str(e))

    async def test_stale_entry_with_issuer_down_fails_rather_than_serves(self) -> None:
        """After the deadline a down issuer means 502, never the stale answer."""
        await self.build(activate=True)
        user = self.fake.add_user()
        presented = self.salted(self.fake.add_token(user["uuid"]).v2)
        self.assertIsNotNone(await self.auth.authenticate(presented))
        self.fake.fail_status = 500
        self.clock.advance(INTERVAL)
        await self.assertFailure(Deferred.fromCoroutine(self.auth.authenticate(presented)),
                                 RemoteUnreachable)
        self.fake.fail_status = None
        self.assertIsNotNone(await self.auth.authenticate(presented))

    async def test_unconfigured_issuer_refused_without_network(self) -> None:
        await self.build()
        self.assertIsNone(await self.auth.authenticate(f"v2/zqqqq-gj3su-000000000000abc/{'x' * 40}"))
        self.assertEqual(self.fake.calls, [])

    async def test_anonymous_maps_to_local_anonymous(self) -> None:
        """The issuer's anonymous user becomes ours; no copy of theirs is made."""
        await self.build(activate=True)
        anon = self.fake.add_user(uuid=ids.anonymous_user_uuid(PEER), username="anonymous")
        presented = self.salted(self.fake.add_token(anon["uuid"]).v2)
        identity = await self.auth.authenticate(presented)
        assert identity is not None
        self.assertTrue(identity.is_anonymous)
        self.assertEqual(identity.user_uuid, ids.anonymous_user_uuid(LOCAL))
        users = {u.uuid for u in await self.store.list_users()}
        self.assertNotIn(anon["uuid"], users)

    async def test_issuer_cannot_vouch_for_other_clusters_users(self) -> None:
        await self.build(activate=True)
        user = self.fake.add_user(uuid="zcccc-tpzed-000000000000777")
        presented = self.salted(self.fake.add_token(user["uuid"]).v2)
        self.assertIsNone(await self.auth.authenticate(presented))

    async def test_users_current_failing_with_existing_copy_keeps_copy(self) -> None:
        await self.build(activate=True)
        user = self.fake.add_user()
        presented = self.salted(self.fake.add_token(user["uuid"]).v2)
        self.assertIsNotNone(await self.auth.authenticate(presented))
        self.fake.user_fail_status = 500
        self.clock.advance(INTERVAL)
        identity = await self.auth.authenticate(presented)
        assert identity is not None
        self.assertEqual(identity.user_uuid, user["uuid"])

    async def test_users_current_failing_without_copy_is_unreachable(self) -> None:
        await self.build(activate=True)
        user = self.fake.add_user()
        presented = self.salted(self.fake.add_token(user["uuid"]).v2)
        self.fake.user_fail_status = 502
        await self.assertFailure(Deferred.fromCoroutine(self.auth.authenticate(presented)),
                                 RemoteUnreachable)

    async def test_username_clash_with_peer_user_gets_suffix(self) -> None:
        """A peer's "alice" meets a local "alice": the copy becomes "alice2"."""
        await self.build(activate=True)
        await self.store.create_user(username="alice", email="local@example.com")
        user = self.fake.add_user(username="alice")
        presented = self.salted(self.fake.add_token(user["uuid"]).v2)
        await self.auth.authenticate(presented)
        self.assertEqual((await self.store.get_user(user["uuid"])).username, "alice2")

    async def test_username_clash_with_login_cluster_user_renames_local(self) -> None:
        """The LoginCluster is the source of truth: its "alice" wins the name and
        the local holder is renamed with digits appended; is_admin follows it."""
        await self.build(login_cluster=PEER)
        local = await self.store.create_user(username="alice", email="local@example.com")
        user = self.fake.add_user(username="alice", is_admin=True)
        presented = self.salted(self.fake.add_token(user["uuid"]).v2)
        identity = await self.auth.authenticate(presented)
        assert identity is not None
        self.assertTrue(identity.is_active)
        self.assertTrue(identity.is_admin)
        self.assertEqual((await self.store.get_user(user["uuid"])).username, "alice")
        renamed = (await self.store.get_user(local.uuid)).username
        self.assertRegex(renamed, r"^alice\d+$")

    async def test_non_v2_token_judged_by_login_cluster(self) -> None:
        """With a LoginCluster, a non-v2 token unknown here (spec 8.1 step 2)
        is validated there; unknown there too → None."""
        await self.build(login_cluster=PEER)
        user = self.fake.add_user()
        token = self.fake.add_token(user["uuid"])
        identity = await self.auth.authenticate(token.secret)
        assert identity is not None
        self.assertEqual((identity.user_uuid, identity.token_uuid), (user["uuid"], token.uuid))
        self.assertTrue(identity.is_active)
        self.assertEqual(self.fake.calls[0]["headers"]["authorization"], [f"Bearer {token.secret}"])
        self.assertIsNone(await self.auth.authenticate("eyJhbGciOi.opaque.jwt"))

    async def test_non_v2_token_without_login_cluster_stays_local(self) -> None:
        await self.build()
        self.assertIsNone(await self.auth.authenticate("eyJhbGciOi.opaque.jwt"))
        self.assertEqual(self.fake.calls, [])

    async def test_admin_drop_forces_a_fresh_check(self) -> None:
        """forget(user) drops the cached remote answer at once."""
        await self.build(activate=True)
        user = self.fake.add_user()
        token = self.fake.add_token(user["uuid"])
        presented = self.salted(token.v2)
        await self.auth.authenticate(presented)
        self.fake.revoke(token.uuid)
        self.assertEqual(self.auth.forget(user_uuid=user["uuid"]), 0)  # local cache had none
        self.assertIsNone(await self.auth.authenticate(presented))

    async def test_remote_expiry_is_kept(self) -> None:
        """The issuer's expires_at bounds the cached answer too."""
        await self.build(activate=True)
        user = self.fake.add_user()
        expires = "2023-11-14T22:15:00.000000000Z"  # T0 + 100 s
        presented = self.salted(self.fake.add_token(user["uuid"], expires_at=expires).v2)
        identity = await self.auth.authenticate(presented)
        assert identity is not None
        self.assertEqual(identity.expires_at, parse_time(expires))
        self.clock.advance(identity.expires_at - self.clock.seconds())
        calls = len(self.fake.calls)
        self.assertIsNone(await self.auth.authenticate(presented))
        self.assertGreater(len(self.fake.calls), calls)

    async def test_local_tokens_unaffected(self) -> None:
        """Our own tokens never reach the issuer."""
        await self.build()
        user = await self.store.create_user(email="me@example.com", is_active=True)
        record = await self.store.create_token(user.uuid)
        identity = await self.auth.authenticate(record.v2)
        assert identity is not None
        self.assertEqual(identity.user_uuid, user.uuid)
        self.assertIsNone(await self.auth.authenticate("v2/zzzzz-gj3su-000000000000000/nope"))
        self.assertEqual(self.fake.calls, [])


class SingleFlightMixin(RemoteTokenSetup):
    async def test_hundred_concurrent_first_uses(self) -> None:
        """100 concurrent first uses: one issuer round trip per endpoint, one
        user copy, one cache entry, and all 100 succeed."""
        await self.build(activate=True)
        user = self.fake.add_user()
        presented = self.salted(self.fake.add_token(user["uuid"]).v2)
        self.fake.gate = Deferred()
        pending = [Deferred.fromCoroutine(self.auth.authenticate(presented)) for _ in range(100)]
        from tests.helpers import wait_for

        await wait_for(lambda: len(self.fake.calls) == 1)
        self.fake.gate.callback(None)
        results = await gatherResults(pending)
        self.assertEqual({r.user_uuid for r in results}, {user["uuid"]})
        self.assertEqual(len(self.fake.calls), 2)
        self.assertEqual(len(self.remote), 1)
        copies = [u for u in await self.store.list_users() if u.uuid == user["uuid"]]
        self.assertEqual(len(copies), 1)


class SingleFlightSQLiteTests(SingleFlightMixin, TestCase):
    pass


class SingleFlightPostgreSQLTests(PostgreSQLEngine, SingleFlightMixin, TestCase):
    pass


class ActivationDecisionTests(TestCase):
    """Spec 8.2's table."""

    def test_table(self) -> None:
        cases = [
            ({}, True, None),
            ({"is_active": False}, True, False),
            ({"is_active": True}, True, True),
            ({"is_active": True}, False, None),
            ({"is_invited": False, "is_active": True}, True, False),
            ({"is_invited": True}, True, None),
            ({"is_invited": True, "is_active": False}, True, None),
            ({"is_invited": True, "is_active": True}, True, True),
            ({"is_invited": True, "is_active": True}, False, None),
        ]
        for user, should_activate, expected in cases:
            self.assertEqual(activation_decision(user, should_activate=should_activate), expected, user)


class IssuingSideTests(SQLiteEngine, TestCase):
    """Spec 3.5 with the §12.2 vectors: our token salted for a remote validates
    here when the request says ``remote=<that cluster>``."""

    V1 = "3kg6k6lzmp9kj5cpkcoxie963cmvjahbt2fod9zru30k1jqdmi"
    UUID = "zzzzz-gj3su-077z32aux8dg2s1"

    async def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = await self.started()
        user = await self.store.create_user(email="active@example.com", is_active=True)
        await self.store.create_token(user.uuid, uuid=self.UUID, secret=self.V1)
        self.user = user
        self.auth = Authenticator(self.store, self.clock)

    async def test_salted_for_remote_accepted_with_remote_param(self) -> None:
        salted = f"v2/{self.UUID}/33b4da68bfe07da0281a7fdbc08b4f6f41c7bd98"
        self.assertEqual(salt_token(f"v2/{self.UUID}/{self.V1}", "zbbbb"), salted)
        identity = await self.auth.authenticate(salted, remote="zbbbb")
        assert identity is not None
        self.assertEqual(identity.user_uuid, self.user.uuid)
        self.assertEqual(identity.token_uuid, self.UUID)
        self.assertEqual(identity.token, salted)

    async def test_salted_for_remote_refused_otherwise(self) -> None:
        salted = f"v2/{self.UUID}/33b4da68bfe07da0281a7fdbc08b4f6f41c7bd98"
        self.assertIsNone(await self.auth.authenticate(salted))
        self.assertIsNone(await self.auth.authenticate(salted, remote="zcccc"))
        self.assertIsNone(await self.auth.authenticate(salted, remote="not a cluster"))

    async def test_salted_for_self_accepted_without_param(self) -> None:
        """The Arvados fixture value: salted with the issuer's own id works everywhere."""
        salted = f"v2/{self.UUID}/282d7d172b6cfdce364c5ed12ddf7417b2d00065"
        self.assertIsNotNone(await self.auth.authenticate(salted))

    async def test_plain_tokens_still_work_with_remote_param(self) -> None:
        self.assertIsNotNone(await self.auth.authenticate(f"v2/{self.UUID}/{self.V1}", remote="zbbbb"))
        self.assertIsNotNone(await self.auth.authenticate(self.V1, remote="zbbbb"))

    async def test_expired_salted_refused(self) -> None:
        user = await self.store.create_user(email="x@example.com", is_active=True)
        record = await self.store.create_token(user.uuid, expires_at=T0 + 10)
        salted = salt_token(record.v2, "zbbbb")
        self.assertIsNotNone(await self.auth.authenticate(salted, remote="zbbbb"))
        self.clock.advance(10)
        self.assertIsNone(await self.auth.authenticate(salted, remote="zbbbb"))
