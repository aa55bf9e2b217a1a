# -*- test-case-name: tests.auth.test_tokens -*-
"""Tests for :mod:`arvnode.auth.tokens`."""
from __future__ import annotations

import os
import random
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

from arvnode import ids
from arvnode.auth.identity import Identity
from arvnode.auth.tokens import Authenticator, token_from_authorization, token_from_request
from arvnode.store import Store, StoreUnavailable, TokenRecord, UserRecord, open_store, salted_secret

CLUSTER = "zzzzz"
T0 = 1_700_000_000.0


class TokenFromAuthorizationTests(SynchronousTestCase):
    """Parsing the Authorization header."""

    def test_accepted(self) -> None:
        """Bearer and OAuth2 schemes yield the trimmed token."""
        self.assertEqual(token_from_authorization("Bearer abc"), "abc")
        self.assertEqual(token_from_authorization("OAuth2 v2/x/y"), "v2/x/y")
        self.assertEqual(token_from_authorization("Bearer   abc  "), "abc")
        self.assertEqual(token_from_authorization("Bearer a b"), "a b")

    def test_refused(self) -> None:
        """Other schemes, wrong case, no token or no header yield None."""
        for value in (
            None,
            "",
            "Bearer",
            "Bearer ",
            "Bearer    ",
            "bearer abc",
            "BEARER abc",
            "oauth2 abc",
            "Basic dXNlcjpwYXNz",
            "Bearerabc",
            " Bearer abc",
        ):
            self.assertIsNone(token_from_authorization(value), value)


def _request(
    uri: bytes = b"/arvados/v1/users/current",
    headers: dict[bytes, bytes] | None = None,
    args: dict[bytes, list[bytes]] | None = None,
) -> DummyRequest:
    request = DummyRequest([])
    request.uri = uri
    for name, value in (headers or {}).items():
        request.requestHeaders.addRawHeader(name, value)
    request.args = args or {}
    return request


class TokenFromRequestTests(SynchronousTestCase):
    """Where a request's token is looked for, and in which order."""

    def test_header_first(self) -> None:
        """The Authorization header wins over query and body."""
        request = _request(
            b"/x?api_token=query",
            {b"authorization": b"Bearer header", b"content-type": _FORM},
            {b"api_token": [b"query", b"body"]},
        )
        self.assertEqual(token_from_request(request), "header")

    def test_query(self) -> None:
        """Without a usable header, api_token in the query string is used."""
        request = _request(
            b"/x?a=1&api_token=query",
            {b"authorization": b"Basic xyz", b"content-type": _FORM},
            {b"api_token": [b"query", b"body"], b"a": [b"1"]},
        )
        self.assertEqual(token_from_request(request), "query")

    def test_form_body(self) -> None:
        """A form-encoded body's api_token is used when header and query have none."""
        request = _request(
            b"/x",
            {b"content-type": _FORM + b"; charset=utf-8"},
            {b"api_token": [b"body"]},
        )
        self.assertEqual(token_from_request(request), "body")

    def test_other_body_ignored(self) -> None:
        """api_token from a body that is not form-urlencoded is not a token."""
        request = _request(
            b"/x", {b"content-type": b"multipart/form-data; boundary=x"}, {b"api_token": [b"b"]}
        )
        self.assertIsNone(token_from_request(request))

    def test_none(self) -> None:
        """A request with no token anywhere yields None, empty values included."""
        self.assertIsNone(token_from_request(_request()))
        self.assertIsNone(token_from_request(_request(b"/x?api_token=")))


_FORM = b"application/x-www-form-urlencoded"


class CountingStore:
    """A real store, counting the lookups that reach it."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.cluster_id = store.cluster_id
        self.lookups = 0
        self.fail = False

    async def find_token(self, token: str) -> tuple[TokenRecord, UserRecord] | None:
        self.lookups += 1
        if self.fail:
            raise StoreUnavailable("test: database down")
        return await self._store.find_token(token)

    async def revoke_token(self, uuid: str) -> bool:
        return await self._store.revoke_token(uuid)

    async def update_user(self, uuid: str, **changes: Any) -> UserRecord:
        return await self._store.update_user(uuid, **changes)


class AuthenticatorTests(TestCase):
    """Token checking against a real SQLite store, with a fake clock."""

    async def setUpStore(self, **kw: Any) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        directory = self.mktemp()
        os.makedirs(directory)
        self.real = open_store(
            reactor,
            cluster_id=CLUSTER,
            postgresql=None,
            sqlite_path=os.path.join(directory, "db.sqlite"),
            clock=self.clock,
            rng=random.Random(),
        )

        async def stop() -> None:
            await self.real.stop()

        self.addCleanup(stop)
        await self.real.start()
        self.store = CountingStore(self.real)
        self.auth = Authenticator(self.store, self.clock, **kw)
        self.user = await self.real.create_user(username="u", is_active=True)
        self.token = await self.real.create_token(self.user.uuid)

    async def test_v2(self) -> None:
        """A v2 token yields the user's identity, with the token verbatim."""
        await self.setUpStore()
        identity = await self.auth.authenticate(self.token.v2)
        self.assertEqual(
            identity,
            Identity(
                user_uuid=self.user.uuid,
                token=self.token.v2,
                token_uuid=self.token.uuid,
                is_admin=False,
                is_active=True,
                is_anonymous=False,
                scopes=("all",),
                expires_at=None,
            ),
        )

    async def test_v1(self) -> None:
        """A bare secret yields the same user, and the identity keeps the v1 string."""
        await self.setUpStore()
        identity = await self.auth.authenticate(self.token.secret)
        assert identity is not None
        self.assertEqual(identity.user_uuid, self.user.uuid)
        self.assertEqual(identity.token, self.token.secret)

    async def test_salted_for_self(self) -> None:
        """A token salted for this cluster authenticates."""
        await self.setUpStore()
        salted = f"v2/{self.token.uuid}/{salted_secret(self.token.secret, CLUSTER)}"
        identity = await self.auth.authenticate(salted)
        assert identity is not None
        self.assertEqual(identity.token, salted)

    async def test_unknown(self) -> None:
        """Unknown, empty and missing tokens yield None."""
        await self.setUpStore()
        self.assertIsNone(await self.auth.authenticate("nope" * 12))
        self.assertIsNone(await self.auth.authenticate(""))
        self.assertIsNone(await self.auth.authenticate(None))

    async def test_anonymous(self) -> None:
        """The anonymous token is flagged as anonymous."""
        await self.setUpStore()
        await self.real.ensure_system_records(system_root_token="r" * 50, anonymous_token="a" * 50)
        identity = await self.auth.authenticate("a" * 50)
        assert identity is not None
        self.assertTrue(identity.is_anonymous)
        self.assertEqual(identity.user_uuid, ids.anonymous_user_uuid(CLUSTER))
        root = await self.auth.authenticate("r" * 50)
        assert root is not None
        self.assertTrue(root.is_admin)
        self.assertFalse(root.is_anonymous)

    async def test_expired(self) -> None:
        """A token is refused from its expiry time on, even when cached."""
        await self.setUpStore()
        token = await self.real.create_token(self.user.uuid, expires_at=T0 + 1)
        self.assertIsNotNone(await self.auth.authenticate(token.v2))
        self.clock.advance(1)
        self.assertIsNone(await self.auth.authenticate(token.v2))
        past = await self.real.create_token(self.user.uuid, expires_at=T0)
        self.assertIsNone(await self.auth.authenticate(past.v2))

    async def test_cache_hit_skips_store(self) -> None:
        """Within the TTL a repeated token is answered without asking the store."""
        await self.setUpStore(cache_ttl=2.0)
        first = await self.auth.authenticate(self.token.v2)
        self.clock.advance(1.9)
        self.assertEqual(await self.auth.authenticate(self.token.v2), first)
        self.assertEqual(self.store.lookups, 1)

    async def test_cache_ttl(self) -> None:
        """After the TTL the store is asked again."""
        await self.setUpStore(cache_ttl=2.0)
        await self.auth.authenticate(self.token.v2)
        self.clock.advance(2.0)
        await self.auth.authenticate(self.token.v2)
        self.assertEqual(self.store.lookups, 2)

    async def test_failures_not_cached(self) -> None:
        """An unknown token is looked up every time: a fresh token works at once."""
        await self.setUpStore()
        await self.auth.authenticate("x" * 50)
        await self.auth.authenticate("x" * 50)
        self.assertEqual(self.store.lookups, 2)
        await self.real.create_token(self.user.uuid, secret="x" * 50)
        self.assertIsNotNone(await self.auth.authenticate("x" * 50))

    async def test_revoked_refused_at_once(self) -> None:
        """A token revoked through the authenticator is refused on the next call, within the TTL."""
        await self.setUpStore(cache_ttl=60.0)
        self.assertIsNotNone(await self.auth.authenticate(self.token.v2))
        self.assertTrue(await self.auth.revoke(self.token.uuid))
        self.assertIsNone(await self.auth.authenticate(self.token.v2))

    async def test_deactivated_user_seen_at_once(self) -> None:
        """Deactivating a user through the authenticator shows on the next call."""
        await self.setUpStore(cache_ttl=60.0)
        await self.auth.authenticate(self.token.v2)
        await self.auth.set_user_active(self.user.uuid, False)
        identity = await self.auth.authenticate(self.token.v2)
        assert identity is not None
        self.assertFalse(identity.is_active)

    async def test_forget(self) -> None:
        """forget() evicts by token uuid, by user uuid, or everything."""
        await self.setUpStore()
        other = await self.real.create_token(self.user.uuid)
        await self.auth.authenticate(self.token.v2)
        await self.auth.authenticate(other.v2)
        self.assertEqual(self.auth.forget(token_uuid=other.uuid), 1)
        self.assertEqual(len(self.auth), 1)
        await self.auth.authenticate(other.v2)
        self.assertEqual(self.auth.forget(user_uuid=self.user.uuid), 2)
        await self.auth.authenticate(other.v2)
        self.assertEqual(self.auth.forget(), 1)
        self.assertEqual(len(self.auth), 0)

    async def test_bounded(self) -> None:
        """The cache holds at most cache_size entries, evicting the least recently used."""
        await self.setUpStore(cache_size=2)
        tokens = [self.token] + [await self.real.create_token(self.user.uuid) for _ in range(2)]
        await self.auth.authenticate(tokens[0].v2)
        await self.auth.authenticate(tokens[1].v2)
        await self.auth.authenticate(tokens[0].v2)  # now most recent
        await self.auth.authenticate(tokens[2].v2)  # evicts tokens[1]
        self.assertEqual(len(self.auth), 2)
        self.assertEqual(self.store.lookups, 3)
        await self.auth.authenticate(tokens[0].v2)
        self.assertEqual(self.store.lookups, 3)
        await self.auth.authenticate(tokens[1].v2)
        self.assertEqual(self.store.lookups, 4)

    async def test_store_errors_propagate(self) -> None:
        """A store failure is raised, not turned into 'unauthenticated'."""
        await self.setUpStore()
        self.store.fail = True
        with self.assertRaises(StoreUnavailable):
            await self.auth.authenticate(self.token.v2)

    async def test_eviction_during_lookup(self) -> None:
        """An answer that was in flight when forget() ran is returned but not cached."""
        await self.setUpStore()
        holder: list[Authenticator] = []
        token_uuid = self.token.uuid

        class ForgetMidway(CountingStore):
            async def find_token(self, token: str) -> tuple[TokenRecord, UserRecord] | None:
                result = await super().find_token(token)
                holder[0].forget(token_uuid=token_uuid)
                return result

        auth = Authenticator(ForgetMidway(self.real), self.clock)
        holder.append(auth)
        self.assertIsNotNone(await auth.authenticate(self.token.v2))
        self.assertEqual(len(auth), 0)
