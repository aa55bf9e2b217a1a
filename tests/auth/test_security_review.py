"""Security review of the login, token and admin paths (what an attacker tries).

Each test is something a hostile client could send or a mistake that would
leak a secret: ``return_to`` tricks that a browser resolves to another host
than our check saw, authorization codes reaching the access log through an
unusual spelling of ``/login``, ID tokens with ``alg: none`` or HS256 keyed
with the provider's public key, access tokens that must never be shown to
the provider, JWTs with absurd ``exp`` claims, and malformed input on the
login and keepstore admin routes (4xx, never 500).
"""
from __future__ import annotations

import json
import random
import time
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives import serialization
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from arvnode import ids
from arvnode.api.login import return_to_problem
from arvnode.auth.access_tokens import CHECK_TTL, RACE_WINDOW, AccessTokens
from arvnode.auth.local_users import find_or_create_user
from arvnode.auth.oidc import IDTokenInvalid, OIDCProvider
from arvnode.config.model import UsersConfig
from arvnode.http.site import loggable_uri
from arvnode.remote.forward import forwarding_headers
from tests.api.base import ApiTestCase
from tests.oidc_provider import new_key

TRUSTED = ("https://wb.example.com/", "https://*.apps.example.org")


class ReturnToTricksTests(SynchronousTestCase):
    """``return_to`` values a browser would send elsewhere than our check saw."""

    def bad(self, url: str) -> None:
        self.assertIsNotNone(return_to_problem(url, TRUSTED), url)

    def test_backslash_in_host_refused(self) -> None:
        # Browsers read "\" as "/" in http(s) URLs: this goes to evil.com,
        # while urlsplit sees a host ending in .apps.example.org.
        self.bad("https://evil.com\\.apps.example.org/")
        self.bad("https://evil.com\\@wb.example.com/")
        self.bad("https://wb.example.com\\@evil.com/")

    def test_percent_encoding_whitespace_and_control_characters_in_host_refused(self) -> None:
        for url in ("https://evil.com%2f.apps.example.org/", "https://evil.com%5c.apps.example.org/",
                    "https://evil.com .apps.example.org/", "https://evil.com\t.apps.example.org/",
                    "https://evil.com\n.apps.example.org/", "https://wb.example.com\x00.evil/",
                    "https://wb.example.com%40evil.com/"):
            self.bad(url)

    def test_non_ascii_hosts_refused(self) -> None:
        # Configure the punycode form; a Unicode host is mapped by the
        # browser (IDNA) in ways our comparison would not follow.
        self.bad("https://wb.exam\u0440le.com/")  # Cyrillic r
        self.bad("https://evil\uff0fx.apps.example.org/")  # fullwidth solidus

    def test_scheme_tricks_refused(self) -> None:
        for url in ("javascript:alert(1)//https://wb.example.com", "//evil.com", "https:evil.com",
                    "https:/evil.com", "data:text/html,x", "ftp://wb.example.com/",
                    "https://wb.example.com@evil.com/", "https://wb.example.com:99999/"):
            self.bad(url)

    def test_ordinary_targets_still_accepted(self) -> None:
        for url in ("https://wb.example.com/token?x=1#frag", "HTTPS://WB.EXAMPLE.COM:443/",
                    "https://a.b.apps.example.org/cb?q=%5C", "https://wb.example.com/a\\b"
                    .replace("\\", "%5C")):
            self.assertIsNone(return_to_problem(url, TRUSTED), url)
        self.assertIsNone(return_to_problem("http://[::1]:3000/", (), trust_private_networks=True))


class AccessLogMaskingTests(SynchronousTestCase):
    """The login code and token-bearing parameters never reach the access log."""

    def test_code_masked_on_every_spelling_of_login(self) -> None:
        for path in ("/login", "/login/", "//login", "/%6Cogin", "/login//", "/%6c%6f%67%69%6e"):
            text = loggable_uri(f"{path}?code=SECRETCODE&state=abc".encode())
            self.assertNotIn("SECRETCODE", text, path)
            self.assertIn("state=abc", text, path)

    def test_reader_tokens_masked(self) -> None:
        text = loggable_uri(b'/arvados/v1/collections?reader_tokens=%5B%22v2%2Fzzzzz-gj3su-'
                            b'000000000000000%2FSECRETSECRET%22%5D&limit=1')
        self.assertNotIn("SECRET", text)
        self.assertIn("limit=1", text)

    def test_code_kept_elsewhere(self) -> None:
        self.assertIn("code=1", loggable_uri(b"/arvados/v1/links?code=1"))


class ForwardingHeadersTests(SynchronousTestCase):
    """Nothing but the salted token carries credentials to another cluster."""

    def test_cookies_and_basic_auth_not_forwarded(self) -> None:
        from twisted.web.http_headers import Headers

        incoming = Headers({b"Cookie": [b"arvados_api_token=djIvenp6enp6LWdqM3N1LXNlY3JldA"],
                            b"Authorization": [b"Basic dTpzZWNyZXQ="],
                            b"Accept": [b"application/json"]})
        out = forwarding_headers(incoming, token="v2/zzzzz-gj3su-000000000000000/" + "a" * 40,
                                 client_address="10.0.0.1")
        self.assertFalse(out.hasHeader(b"cookie"))
        self.assertEqual(out.getRawHeaders(b"authorization"),
                         [b"Bearer v2/zzzzz-gj3su-000000000000000/" + b"a" * 40])
        self.assertEqual(out.getRawHeaders(b"accept"), [b"application/json"])


    def test_reader_tokens_not_forwarded(self) -> None:
        # Arvados salts each reader token for the target; arvnode does not
        # use reader_tokens at all, so they must not leave unsalted.
        from arvnode.remote.forward import _strip_form_token, strip_api_token_query

        query = (b"api_token=v2%2Fzzzzz-gj3su-000000000000000%2FSECRET"
                 b"&reader_tokens=%5B%22v2%2Fzzzzz-gj3su-000000000000001%2FSECRET%22%5D&limit=5")
        self.assertEqual(strip_api_token_query(query), b"limit=5")
        body = _strip_form_token(query)
        self.assertNotIn(b"SECRET", body)
        self.assertIn(b"limit=5", body)


# -- ID tokens ---------------------------------------------------------------------------


class _Settings:
    issuer = "https://idp.example.org"
    client_id = "arvnode-test"
    client_secret = "s3cret"
    email_claim = "email"
    email_verified_claim = "email_verified"
    username_claim = ""
    authentication_request_parameters: dict[str, str] = {}


class IDTokenConfusionTests(TestCase):
    """Algorithm confusion and claim checks, against a provider whose metadata
    and JWKS are already known (no network)."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(time.time())
        self.key = new_key()
        self.provider = OIDCProvider(_Settings(), client=None, clock=self.clock)
        self.provider._metadata = {
            "issuer": _Settings.issuer, "authorization_endpoint": "https://idp.example.org/a",
            "token_endpoint": "https://idp.example.org/t", "jwks_uri": "https://idp.example.org/k",
            "id_token_signing_alg_values_supported": ["RS256", "HS256", "none"],
        }
        self.provider._metadata_at = self.clock.seconds()
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        jwk.update(kid="k1", use="sig", alg="RS256")
        self.provider._jwks = jwt.PyJWKSet.from_dict({"keys": [jwk]})

    def claims(self, **more: Any) -> dict[str, Any]:
        now = int(self.clock.seconds())
        c = {"iss": _Settings.issuer, "aud": _Settings.client_id, "sub": "1", "iat": now,
             "exp": now + 300, "nonce": "n1", "email": "carol@example.org", "email_verified": True}
        c.update(more)
        return c

    async def test_a_good_token_passes(self) -> None:
        raw = jwt.encode(self.claims(), self.key, algorithm="RS256", headers={"kid": "k1"})
        self.assertEqual((await self.provider.verify_id_token(raw, "n1"))["sub"], "1")

    async def test_alg_none_refused(self) -> None:
        raw = jwt.encode(self.claims(), None, algorithm="none", headers={"kid": "k1"})
        with self.assertRaises(IDTokenInvalid):
            await self.provider.verify_id_token(raw, "n1")

    async def test_hs256_keyed_with_the_public_key_refused(self) -> None:
        pem = self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        header = {"kid": "k1", "alg": "HS256", "typ": "JWT"}
        import base64
        import hashlib
        import hmac as _hmac

        def b64(d: bytes) -> bytes:
            return base64.urlsafe_b64encode(d).rstrip(b"=")
        signing_input = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(self.claims()).encode())
        sig = _hmac.new(pem, signing_input, hashlib.sha256).digest()
        raw = (signing_input + b"." + b64(sig)).decode()
        with self.assertRaises(IDTokenInvalid) as caught:
            await self.provider.verify_id_token(raw, "n1")
        self.assertIn("algorithm", str(caught.exception))

    async def test_another_clients_token_and_missing_nonce_refused(self) -> None:
        for claims in (self.claims(aud=["other", _Settings.client_id], azp="other"),
                       self.claims(aud="other"), self.claims(nonce=None), self.claims(nonce="n2"),
                       self.claims(iss="https://idp.example.org.evil")):
            raw = jwt.encode({k: v for k, v in claims.items() if v is not None}, self.key,
                             algorithm="RS256", headers={"kid": "k1"})
            with self.assertRaises(IDTokenInvalid, msg=str(claims)):
                await self.provider.verify_id_token(raw, "n1")

    def test_email_verified_must_be_the_boolean_true(self) -> None:
        # As Arvados (a Go type assertion to bool): the string "true" is not true.
        for value in ("true", "false", 1, None, "True"):
            with self.assertRaises(IDTokenInvalid, msg=repr(value)):
                self.provider.identity(self.claims(email_verified=value))
        self.assertEqual(self.provider.identity(self.claims())[0], "carol@example.org")


# -- local users and access tokens ------------------------------------------------------


class _StoreCase(TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        from twisted.internet import reactor

        from arvnode.store import open_store

        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.store = open_store(reactor, cluster_id="zzzzz", postgresql=None,
                                sqlite_path=self.mktemp(), clock=self.clock, rng=random.Random(7))
        await self.store.start()
        self.addCleanup(self.store.stop)


class LoginUserMappingTests(_StoreCase):
    """A login never lands on the system or anonymous user, nor steals a name."""

    async def test_email_of_system_and_anonymous_users_gives_a_new_ordinary_user(self) -> None:
        c = "zzzzz"
        for special in (ids.system_user_uuid(c), ids.anonymous_user_uuid(c)):
            try:
                await self.store.update_user(special, email="root@example.org")
            except Exception:
                continue  # the store may not have the row, or refuse the change
        users = UsersConfig(new_users_are_active=True)
        user = await find_or_create_user(self.store, users, "root", "root@example.org")
        self.assertNotIn(user.uuid, (ids.system_user_uuid(c), ids.anonymous_user_uuid(c)))
        self.assertFalse(user.is_admin)
        self.assertNotEqual(user.username, "root")

    async def test_reserved_usernames_not_given_out(self) -> None:
        # Arvados' Users.AutoSetupUsernameBlacklist defaults: a login whose
        # email is root@... must not become the user "root" (a shell login name).
        users = UsersConfig(new_users_are_active=True)
        for name in ("root", "arvados", "git", "gitolite", "syslog"):
            user = await find_or_create_user(self.store, users, name, f"{name}@example.org")
            self.assertNotEqual(user.username, name)

    async def test_colliding_username_is_not_taken_over(self) -> None:
        victim = await self.store.create_user(email="alice@example.org", username="alice",
                                              is_admin=True, is_active=True)
        users = UsersConfig(new_users_are_active=True)
        user = await find_or_create_user(self.store, users, "alice", "mallory@evil.example")
        self.assertNotEqual(user.uuid, victim.uuid)
        self.assertNotEqual(user.username, "alice")
        self.assertFalse(user.is_admin)


class _Provider:
    issuer = "https://idp.example.org"

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def userinfo(self, token: str) -> dict[str, Any]:
        self.asked.append(token)
        return {"email": "carol@example.org", "email_verified": True}

    def identity(self, claims: dict[str, Any]) -> tuple[str, str, str, str]:
        return claims["email"], "carol", "Carol", "Smith"


class AccessTokenBoundaryTests(_StoreCase):
    ROOT = "r" * 40

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.provider = _Provider()
        self.tokens = AccessTokens(provider=self.provider, store=self.store, clock=self.clock,
                                   system_root_token=self.ROOT,
                                   users_config=UsersConfig(new_users_are_active=True))

    def test_our_tokens_are_never_eligible(self) -> None:
        for token in (self.ROOT, "v2/zzzzz-gj3su-000000000000000/" + "x" * 50,
                      "v2/zzzzz-gj3su-000000000000000/" + "a" * 40, "", "x" * 20000):
            self.assertFalse(self.tokens.eligible(token), token[:40])

    async def test_huge_exp_cannot_extend_the_row(self) -> None:
        for exp in (10 ** 12, 1e308, float("inf")):
            token = jwt.encode({"exp": exp if exp != float("inf") else 10 ** 15, "scope": "x"},
                               "k" * 32, algorithm="HS256")
            identity = await self.tokens.authenticate(token)
            self.assertIsNotNone(identity)
            self.assertLessEqual(identity.expires_at,
                                 self.clock.seconds() + CHECK_TTL + RACE_WINDOW)

    async def test_nan_and_infinite_exp_claims_are_not_500(self) -> None:
        import base64

        def b64(d: bytes) -> str:
            return base64.urlsafe_b64encode(d).rstrip(b"=").decode()
        for exp in ("NaN", "Infinity", "-Infinity", "1e999", '"soon"', "true"):
            token = (b64(b'{"alg":"HS256","typ":"JWT"}') + "."
                     + b64(b'{"scope":"x","exp":' + exp.encode() + b"}") + "." + b64(b"sig"))
            identity = await self.tokens.authenticate(token)
            if identity is not None:
                self.assertLessEqual(identity.expires_at,
                                     self.clock.seconds() + CHECK_TTL + RACE_WINDOW, exp)

    async def test_negative_cache_is_bounded_in_time(self) -> None:
        from arvnode.auth.access_tokens import NEGATIVE_TTL

        class Refusing(_Provider):
            refuse = True

            async def userinfo(self, token: str) -> dict[str, Any]:
                from arvnode.auth.oidc import ProviderRefused

                self.asked.append(token)
                if self.refuse:
                    raise ProviderRefused("no")
                return {"email": "carol@example.org", "email_verified": True}

        provider = Refusing()
        self.tokens._provider = provider
        self.assertIsNone(await self.tokens.authenticate("opaque-token"))
        provider.refuse = False
        self.clock.advance(NEGATIVE_TTL + 0.001)
        self.assertIsNotNone(await self.tokens.authenticate("opaque-token"))


# -- the live routes -------------------------------------------------------------------

LOGIN = {
    "Login.Test": {"Enable": True, "Users": {
        "alice": {"Email": "alice@example.com", "Password": "xyzzy"}}},
    "Login.TrustedClients": {"https://wb.example.com/": {}, "https://*.apps.example.org/": {}},
    "Users.NewUsersAreActive": True,
}


class LoginRouteFuzzTests(ApiTestCase):
    """Hostile input on /login, /logout and users/authenticate: 4xx, never 500."""

    extra = LOGIN

    async def send(self, method: str, path: str, body: bytes | None = None,
                   ctype: str = "application/x-www-form-urlencoded",
                   headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
        hdrs = {"Content-Type": [ctype]}
        for k, v in (headers or {}).items():
            hdrs[k] = [v]
        r = await self.client.request(method, self.node.controller_url + path, data=body,
                                      headers=hdrs, allow_redirects=False)
        return r.code, r.headers, await r.content()

    async def test_hostile_inputs(self) -> None:
        await self.startNode()
        rt = "https://wb.example.com/t"
        cases: list[tuple[str, str, bytes | None, str]] = [
            ("GET", "/login?return_to=" + "%ff%fe", None, ""),
            ("GET", "/login?return_to=https%3A%2F%2Fwb.example.com%2F%0d%0aSet-Cookie:x", None, ""),
            ("GET", "/login?return_to=https%3A%2F%2Fwb.example.com%2F%ed%a0%80", None, ""),
            ("GET", "/login?remote=" + "x" * 3000 + "&return_to=" + rt, None, ""),
            ("GET", "/login?remote=zzzz%00&return_to=" + rt, None, ""),
            ("GET", "/login?return_to[]=" + rt, None, ""),
            ("POST", "/login", b"return_to=" + rt.encode() + b"&username=alice&password=%ff%fe", ""),
            ("POST", "/login", b"return_to=" + rt.encode() + b"&username=%00&password=%ed%a0%80", ""),
            ("POST", "/login", json.dumps({"return_to": rt, "username": ["alice"],
                                           "password": {"a": 1}}).encode(), "application/json"),
            ("POST", "/login", b"\xff\xfe{", "application/json"),
            ("POST", "/login", b"[1,2]", "application/json"),
            ("PUT", "/login", b"", ""),
            ("DELETE", "/logout", b"", ""),
            ("GET", "/logout?return_to=javascript:alert(1)", None, ""),
            ("GET", "/logout?return_to=https%3A%2F%2Fevil.com%5C.apps.example.org%2F", None, ""),
            ("POST", "/arvados/v1/users/authenticate", b'{"username": 1, "password": null}',
             "application/json"),
            ("POST", "/arvados/v1/users/authenticate", b"username=alice&password=%ff", ""),
            ("POST", "/arvados/v1/users/authenticate", b"not json", "application/json"),
            ("POST", "/arvados/v1/users/authenticate", b"[" * 100000, "application/json"),
            ("POST", "/login", b"{\"a\":" * 50000, "application/json"),
            ("GET", "/arvados/v1/collections?filters=" + "%5B" * 4000, None, ""),
        ]
        for method, path, body, ctype in cases:
            code, headers, content = await self.send(method, path, body,
                                                     ctype or "application/x-www-form-urlencoded")
            self.assertTrue(200 <= code < 500, f"{method} {path[:80]} {(body or b'')[:80]!r}: {code} {content[:200]!r}")
            location = (headers.getRawHeaders("location") or [""])[0]
            self.assertNotIn("evil.com", location, f"{method} {path[:80]}")
            self.assertNotIn("\n", location)
        # Weird tokens on logout are not 500 either.
        for token in ("v2/", "v2/a/b", "v2/zzzzz-gj3su-000000000000000", "v2//x/y",
                      "v2/" + ids.system_root_token_uuid(self.cluster) + "/x", "\u00e9\u00e9"):
            code, _h, content = await self.send(
                "GET", "/logout", headers={"Authorization": "Bearer " + token})
            self.assertTrue(code < 500, f"{token!r}: {code} {content[:200]!r}")

    async def test_backslash_return_to_gets_no_token(self) -> None:
        await self.startNode()
        form = urlencode({"username": "alice", "password": "xyzzy",
                          "return_to": "https://evil.com\\.apps.example.org/"}).encode()
        code, headers, content = await self.send("POST", "/login", form)
        self.assertEqual(code, 400, content)
        self.assertFalse(headers.hasHeader("location"))

    async def test_logout_never_revokes_the_root_token(self) -> None:
        await self.startNode()
        code, _h, _c = await self.send("GET", "/logout",
                                       headers={"Authorization": "Bearer " + self.root})
        self.assertEqual(code, 200)
        await self.ok("GET", "users/current", token=self.root)


class KeepstoreAdminFuzzTests(TestCase):
    """Keepstore admin routes: root token only, size checked before reading, 4xx for junk."""

    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        from tests.helpers import http_client
        from tests.keep.test_keepstore import start_keepstore

        self.node = await start_keepstore(self)
        listener = self.node.node.getServiceNamed("keepstore")
        self.base = f"http://127.0.0.1:{listener.port}"
        self.port = listener.port
        self.client = http_client(self)
        self.root = {"Authorization": [f"Bearer {self.node.root_token}"]}

    async def call(self, method: str, path: str, body: bytes | None = None,
                   headers: dict[str, list[str]] | None = None) -> tuple[int, bytes]:
        r = await self.client.request(method, self.base + path, data=body,
                                      headers=self.root if headers is None else headers)
        return r.code, await r.content()

    async def test_a_real_users_token_is_403(self) -> None:
        user = await self.node.node.store.create_user(email="adm@example.org", username="adm",
                                                      is_admin=True, is_active=True)
        token = (await self.node.node.store.create_token(user.uuid)).v2
        for method, path in (("GET", "/mounts"), ("PUT", "/trash"), ("PUT", "/pull"),
                             ("TOUCH", "/" + "a" * 32), ("DELETE", "/" + "a" * 32),
                             ("PUT", "/untrash/" + "a" * 32), ("GET", "/index")):
            code, _ = await self.call(method, path, b"[]" if method == "PUT" else None,
                                      {"Authorization": [f"Bearer {token}"]})
            self.assertEqual(code, 403, f"{method} {path}")

    async def test_size_checked_before_the_body_is_read(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.defer import Deferred
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.internet.protocol import Protocol

        for auth in (b"", b"Authorization: Bearer " + self.node.root_token.encode() + b"\r\n"):
            got: Deferred[bytes] = Deferred()

            class P(Protocol):
                buf = b""

                def dataReceived(self, data: bytes) -> None:
                    self.buf += data
                    if b"\r\n\r\n" in self.buf and not got.called:
                        got.callback(self.buf)

            proto = P()
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), proto)
            proto.transport.write(b"PUT /trash HTTP/1.1\r\nHost: x\r\n" + auth
                                  + b"Content-Length: 999999999999\r\n\r\n[")
            answer = await got
            proto.transport.loseConnection()
            status = int(answer.split(b" ", 2)[1])
            self.assertEqual(status, 413 if auth else 401, answer[:200])

    async def test_junk_is_4xx(self) -> None:
        bodies = [b"", b"null", b"1", b'"x"', b"{}", b"[1]", b"[null]", b'[{"locator": 1}]',
                  b'[{"locator": "' + b"a" * 32 + b'", "block_mtime": 1e400}]',
                  b'[{"locator": "' + b"a" * 32 + b'+\xc2\xb2", "servers": ["http://x"]}]',
                  b'[{"locator": "' + b"a" * 32 + b'+3", "servers": "http://x"}]',
                  b'[{"locator": "' + b"a" * 32 + b'+3", "servers": [1]}]',
                  b'[{"locator": "' + b"a" * 32 + b'", "block_mtime": "1", "mount_uuid": 5}]',
                  b"\xff\xfe", b"[" * 100000, b"NaN", b'[{"locator": "' + b"A" * 32 + b'"}]']
        for path in ("/trash", "/pull"):
            for body in bodies:
                code, content = await self.call("PUT", path, body)
                self.assertTrue(400 <= code < 500, f"{path} {body[:60]!r}: {code} {content[:200]!r}")
        for method, path in (("GET", "/mounts/%ff/blocks"), ("GET", "/mounts/x/blocks?prefix=%ff"),
                             ("GET", "/mounts//blocks"), ("GET", "/mounts/a/b/c/d/e"),
                             ("PUT", "/untrash/%ff"), ("PUT", "/untrash/" + "g" * 32),
                             ("TOUCH", "/" + "a" * 32 + "+%ff"), ("DELETE", "/%00"),
                             ("GET", "/index/%ff%fe"), ("GET", "/index?prefix=%ff"),
                             ("PROPFIND", "/" + "a" * 32), ("GET", "/" + "a" * 32 + "+1+A" + "0" * 40
                                                            + "@zzzzzzzz")):
            code, content = await self.call(method, path)
            self.assertTrue(code < 500, f"{method} {path}: {code} {content[:200]!r}")
