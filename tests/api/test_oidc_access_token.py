"""``Login.OpenIDConnect.AcceptAccessToken``: the provider's access tokens as API tokens.

A real OpenID provider (Keycloak, Google ...) cannot run here, so these
tests use the in-test provider of :mod:`tests.oidc_provider` (twisted.web on
loopback) as a stand-in: it issues access tokens (RS256 JWTs like
Keycloak's, or opaque strings like Google's) and answers ``/userinfo``
for them. The node is real (in-process, HTTPS on loopback); requests go
through its API and its keepproxy, so both paths through the shared
Authenticator are exercised.

The unit tests at the end drive :class:`AccessTokens` on a
``task.Clock`` to check its timing (expiry, the negative cache) without
waiting.
"""
from __future__ import annotations

import hashlib
import json
import random
import secrets
import time
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from arvnode.auth.access_tokens import (
    CHECK_TTL, NEGATIVE_TTL, RACE_WINDOW, AccessTokens, ProviderDown, access_token_secret,
)
from arvnode.auth.oidc import IDTokenInvalid, ProviderRefused, ProviderUnreachable
from arvnode.config.model import UsersConfig
from tests.api.base import ApiTestCase
from tests.oidc_provider import FakeProvider, oidc_config
from tests.helpers import http_client, make_cluster_config, start_node, wait_for


class AccessTokenTests(ApiTestCase):
    """A node whose login is OpenID Connect with AcceptAccessToken: true."""

    async def start(self, **more: Any) -> None:
        self.logged: list[str] = []
        globalLogPublisher.addObserver(self._observe)
        self.addCleanup(globalLogPublisher.removeObserver, self._observe)
        self.provider = FakeProvider().start(self)
        more.setdefault("AcceptAccessToken", True)
        await self.startNode(**oidc_config(self.provider.issuer, **more))
        self.authenticator = self.node.node.authenticator

    def _observe(self, event: Any) -> None:
        self.logged.append(repr(event))

    def calls(self) -> int:
        return len(self.provider.userinfo_requests)

    async def rows(self) -> list[tuple[Any, ...]]:
        """Every column of every row of the tokens table."""
        return await self.store._run(  # type: ignore[no-any-return]
            lambda cur: cur.all("SELECT * FROM api_client_authorizations"), write=False)

    async def row_for(self, token: str) -> Any:
        secret = access_token_secret(self.root, token)
        found = [t for t in await self.store.list_tokens() if t.secret == secret]
        self.assertEqual(len(found), 1)
        return found[0]

    async def keep_status(self, method: str, token: str, data: bytes = b"") -> tuple[int, str]:
        r = await self.client.request(
            method, f"{self.node.keepproxy_url}/{hashlib.md5(data).hexdigest()}", data=data,
            headers={"Authorization": [f"Bearer {token}"], "X-Keep-Desired-Replicas": ["1"]})
        return r.code, (await r.content()).decode("utf-8", "replace")

    def assertNeverSeen(self, token: str, rows: list[tuple[Any, ...]]) -> None:
        for row in rows:
            for value in row:
                self.assertNotIn(token, str(value), "the access token is in the tokens table")
        self.assertFalse(any(token in line for line in self.logged), "the access token was logged")

    async def test_access_token_works_on_api_and_keep_and_is_never_stored(self) -> None:
        await self.start()
        token = self.provider.issue_access_token()
        me = await self.ok("GET", "users/current", token=token)
        self.assertEqual((me["email"], me["username"], me["is_active"]),
                         ("carol@example.org", "carol", True))
        self.assertEqual(self.calls(), 1)
        self.assertEqual(self.provider.userinfo_requests, [token])
        # keepproxy: the same token writes and reads a block (signed over it).
        locator = await self.keep_put(b"from a script\n", token)
        self.assertIn("+A", locator)
        code, data = await self.keep_get(locator, token)
        self.assertEqual((code, data), (200, b"from a script\n"))
        # ... and describes itself without any secret.
        current = await self.ok("GET", "api_client_authorizations/current", token=token)
        self.assertNotIn("api_token", current)
        row = await self.row_for(token)
        self.assertEqual(current["uuid"], row.uuid)
        self.assertEqual(self.calls(), 1)  # every use after the first: the stored answer
        # A browser login of the same person lands on the same user.
        other = self.provider.issue_access_token(as_jwt=False)
        self.assertEqual((await self.ok("GET", "users/current", token=other))["uuid"], me["uuid"])
        rows = await self.rows()
        self.assertEqual(len([r for r in rows if access_token_secret(self.root, token) in r]), 1)
        self.assertNeverSeen(token, rows)
        self.assertNeverSeen(other, rows)

    async def test_cached_answer_then_asks_again_when_due(self) -> None:
        await self.start()
        token = self.provider.issue_access_token(lifetime=3600)
        await self.ok("GET", "users/current", token=token)
        row = await self.row_for(token)
        now = time.time()
        self.assertLess(abs(row.expires_at - (now + CHECK_TTL + RACE_WINDOW)), 30)
        # The in-memory cache dropped: the stored row still answers.
        self.authenticator.forget()
        await self.ok("GET", "users/current", token=token)
        self.assertEqual(self.calls(), 1)
        # Near its end (the race window), or past it: the provider is asked
        # again and the same row extended.
        for left in (RACE_WINDOW / 2, -5.0):
            await self.store.update_object(self.kinds["api_client_authorizations"], row.uuid,
                                           {"expires_at": time.time() + left})
            self.authenticator.forget()
            calls = self.calls()
            await self.ok("GET", "users/current", token=token)
            self.assertEqual(self.calls(), calls + 1)
            again = await self.row_for(token)
            self.assertEqual(again.uuid, row.uuid)
            self.assertGreater(again.expires_at, time.time() + CHECK_TTL)
        # The provider revoked it: refused at the next check.
        del self.provider.access_tokens[token]
        await self.store.update_object(self.kinds["api_client_authorizations"], row.uuid,
                                       {"expires_at": time.time() - 1})
        self.authenticator.forget()
        code, _ = await self.api("GET", "users/current", token=token)
        self.assertEqual(code, 401)

    async def test_row_never_outlives_the_jwt(self) -> None:
        await self.start()
        token = self.provider.issue_access_token(lifetime=120)
        exp = json.loads(_payload(token))["exp"]
        await self.ok("GET", "users/current", token=token)
        self.assertEqual((await self.row_for(token)).expires_at, exp)
        # Inside the last minute of such a row, asking again could not extend
        # it: the stored answer serves until exp.
        self.authenticator.forget()
        await self.ok("GET", "users/current", token=token)
        self.assertEqual(self.calls(), 1)

    async def test_invalid_token_is_401_and_not_asked_about_twice(self) -> None:
        await self.start()
        bogus = "eyJhbGciOiJub25lIn0." + secrets.token_urlsafe(20) + ".x"
        for _ in range(2):
            code, body = await self.api("GET", "users/current", token=bogus)
            self.assertEqual(code, 401, body)
        self.assertEqual(self.calls(), 1)  # the refusal is remembered (5 minutes)
        code, _ = await self.keep_status("PUT", bogus, b"x")
        self.assertEqual(code, 403)  # keepproxy's answer to a bad token, as for any
        self.assertEqual(self.calls(), 1)
        self.assertTrue(any("refused" in line for line in self.logged))
        self.assertNeverSeen(bogus, await self.rows())
        # Arvados' own tokens never go to the provider, nor does the root token.
        for ours in ("v2/zzzzz-gj3su-000000000000000/" + "x" * 40, self.root + "x"):
            code, _ = await self.api("GET", "users/current", token=ours)
            self.assertEqual(code, 401)
        self.assertEqual(self.calls(), 2)  # only the second (a plausible v1/opaque token)

    async def test_unverified_email_is_401(self) -> None:
        await self.start()
        token = self.provider.issue_access_token(email_verified=False, email="eve@example.org")
        code, body = await self.api("GET", "users/current", token=token)
        self.assertEqual(code, 401, body)
        self.assertEqual([u for u in await self.store.list_users() if u.email == "eve@example.org"],
                         [])
        self.assertTrue(any("unverified email" in line for line in self.logged))

    async def test_scope_required(self) -> None:
        await self.start(AcceptAccessTokenScope="arvados")
        wrong = self.provider.issue_access_token(scope="openid email")
        opaque = self.provider.issue_access_token(as_jwt=False)
        for token in (wrong, opaque):
            code, body = await self.api("GET", "users/current", token=token)
            self.assertEqual(code, 401, body)
        self.assertEqual(self.calls(), 0)  # refused before asking the provider
        self.assertTrue(any("unacceptable access token scope" in line for line in self.logged))
        right = self.provider.issue_access_token(scope="openid arvados email")
        await self.ok("GET", "users/current", token=right)
        self.assertEqual(self.calls(), 1)

    async def test_provider_down_is_502_naming_the_issuer(self) -> None:
        await self.start()
        token = self.provider.issue_access_token()
        self.provider.userinfo_error = (503, {"error": "temporarily_unavailable"})
        code, body = await self.api("GET", "users/current", token=token)
        self.assertEqual(code, 502, body)
        self.assertIn(self.provider.issuer, body["errors"][0])
        code, text = await self.keep_status("PUT", token, b"y")
        self.assertEqual(code, 502, text)
        self.assertIn(self.provider.issuer, text)
        # Not a refusal: once the provider is back, the token works.
        self.provider.userinfo_error = None
        await self.ok("GET", "users/current", token=token)

    async def test_provider_unreachable_is_502_naming_the_issuer(self) -> None:
        issuer = "http://127.0.0.1:1/realms/x"  # nothing listens there
        await self.startNode(**oidc_config(issuer, AcceptAccessToken=True))
        token = "eyJ" + secrets.token_urlsafe(30)
        code, body = await self.api("GET", "users/current", token=token)
        self.assertEqual(code, 502, body)
        self.assertIn(issuer, body["errors"][0])
        r = await self.client.request("GET", f"{self.node.keepproxy_url}/{'0' * 32}",
                                      headers={"Authorization": [f"Bearer {token}"]})
        self.assertEqual(r.code, 502)

    async def test_concurrent_first_uses_make_one_userinfo_call(self) -> None:
        await self.start()
        token = self.provider.issue_access_token()
        self.provider.userinfo_gate = gate = Deferred()
        access = self.authenticator.access_tokens
        arrived: list[int] = []  # requests waiting on a check (started or joined)
        original = access._flight.run

        def counting(key: Any, start: Any) -> Any:
            arrived.append(1)
            return original(key, start)

        access._flight.run = counting
        api = [Deferred.fromCoroutine(self.api("GET", "users/current", token=token))
               for _ in range(15)]
        keep = [Deferred.fromCoroutine(self.keep_status("PUT", token, b"block %d" % i))
                for i in range(5)]
        await wait_for(lambda: len(arrived) == 20 and self.calls() >= 1)
        gate.callback(None)
        results = await gatherResults(api + keep)
        self.assertEqual([r[0] for r in results], [200] * 20, results)
        self.assertEqual(self.calls(), 1)
        self.assertEqual(access.checks, 1)
        await self.row_for(token)  # exactly one row
        self.assertEqual(len({r[1]["uuid"] for r in results[:15]}), 1)

    @property
    def kinds(self) -> Any:
        from arvnode.store.kinds import KINDS

        return KINDS


class AccessTokenPostgresTests(AccessTokenTests):
    """The same on PostgreSQL (the row's unique secret, concurrent creation)."""

    postgresql = True


class AccessTokenLoginClusterTests(TestCase):
    """A satellite hands an access token to its login cluster, which asks the provider."""

    timeout = 120

    async def test_satellite_accepts_access_token_through_login_cluster(self) -> None:
        provider = FakeProvider().start(self)
        base = Path(self.mktemp())
        cfg, paths = make_cluster_config(base / "lgn00", cluster_id="lgn00",
                                         extra=oidc_config(provider.issuer, AcceptAccessToken=True))
        login = await start_node(self, cfg, paths)
        cfg, paths = make_cluster_config(base / "sat01", cluster_id="sat01", extra={
            "Login.LoginCluster": "lgn00",
            "RemoteClusters": {"lgn00": {"Host": f"127.0.0.1:{login.controller_port}",
                                         "Proxy": True, "Insecure": True}}})
        sat = await start_node(self, cfg, paths)
        sat_http = http_client(self, paths["ca"])
        token = provider.issue_access_token()
        for _ in range(2):
            r = await sat_http.request("GET", sat.controller_url + "/arvados/v1/users/current",
                                       headers={"Authorization": [f"Bearer {token}"]})
            me = await r.json()
            self.assertEqual(r.code, 200, me)
            self.assertEqual((me["email"], me["uuid"][:5]), ("carol@example.org", "lgn00"))
        self.assertEqual(provider.userinfo_requests, [token])


def _payload(token: str) -> str:
    import base64

    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


# -- AccessTokens alone, on a task.Clock ----------------------------------------------------


class _Provider:
    """Stands in for OIDCProvider: answers from a dict, or fails as told."""

    issuer = "https://kc.example.org/realms/x"

    def __init__(self) -> None:
        self.known: dict[str, dict[str, Any]] = {}
        self.down = False
        self.asked = 0

    async def userinfo(self, token: str) -> dict[str, Any]:
        self.asked += 1
        if self.down:
            raise ProviderUnreachable(f"OpenID Connect provider {self.issuer} unreachable")
        if token not in self.known:
            raise ProviderRefused("the OpenID Connect provider does not accept the access token")
        return self.known[token]

    def identity(self, claims: dict[str, Any]) -> tuple[str, str, str, str]:
        if not claims.get("email_verified"):
            raise IDTokenInvalid("cannot log in with unverified email address")
        return claims["email"], "carol", "Carol", "Smith"


class AccessTokensClockTests(TestCase):
    """Timing rules, with an in-memory SQLite store and a fake provider."""

    async def setUp(self) -> None:  # type: ignore[override]
        from arvnode.store import open_store
        from twisted.internet import reactor

        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.store = open_store(reactor, cluster_id="zzzzz", postgresql=None,
                                sqlite_path=self.mktemp(), clock=self.clock,
                                rng=random.Random(7))
        await self.store.start()
        self.addCleanup(self.store.stop)
        self.provider = _Provider()
        self.tokens = AccessTokens(provider=self.provider, store=self.store, clock=self.clock,
                                   system_root_token="r" * 40,
                                   users_config=UsersConfig(new_users_are_active=True))
        self.provider.known["opaque-1"] = {"email": "carol@example.org", "email_verified": True}

    async def test_expiry_and_recheck(self) -> None:
        first = await self.tokens.authenticate("opaque-1")
        self.assertIsNotNone(first)
        self.assertEqual(first.expires_at, self.clock.seconds() + CHECK_TTL + RACE_WINDOW)
        self.clock.advance(CHECK_TTL - 1)
        await self.tokens.authenticate("opaque-1")
        self.assertEqual(self.provider.asked, 1)
        self.clock.advance(2)  # inside the race window: asked again, row extended
        again = await self.tokens.authenticate("opaque-1")
        self.assertEqual(self.provider.asked, 2)
        self.assertEqual(again.token_uuid, first.token_uuid)
        self.assertEqual(again.expires_at, self.clock.seconds() + CHECK_TTL + RACE_WINDOW)
        # Provider down when a check is due: ProviderDown (a RemoteUnreachable → 502).
        self.clock.advance(CHECK_TTL + RACE_WINDOW)
        self.provider.down = True
        with self.assertRaises(ProviderDown) as caught:
            await self.tokens.authenticate("opaque-1")
        self.assertIn(self.provider.issuer, caught.exception.message)

    async def test_refusals_remembered_for_negative_ttl(self) -> None:
        self.assertIsNone(await self.tokens.authenticate("unknown"))
        self.assertIsNone(await self.tokens.authenticate("unknown"))
        self.assertEqual(self.provider.asked, 1)
        self.clock.advance(NEGATIVE_TTL + 1)
        self.provider.known["unknown"] = {"email": "dan@example.org", "email_verified": True}
        self.assertIsNotNone(await self.tokens.authenticate("unknown"))
        self.assertEqual(self.provider.asked, 2)
        # An unverified email is refused but not remembered.
        self.provider.known["unverified"] = {"email": "eve@example.org", "email_verified": False}
        for _ in range(2):
            self.assertIsNone(await self.tokens.authenticate("unverified"))
        self.assertEqual(self.provider.asked, 4)

    async def test_expired_jwt_refused_without_asking(self) -> None:
        import jwt

        token = jwt.encode({"exp": int(self.clock.seconds()) - 1, "scope": "openid"}, "k" * 32,
                           algorithm="HS256")
        self.provider.known[token] = {"email": "carol@example.org", "email_verified": True}
        self.assertIsNone(await self.tokens.authenticate(token))
        self.assertEqual(self.provider.asked, 0)
