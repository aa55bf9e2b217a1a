"""``/login`` with ``Login.OpenIDConnect``: the browser's round trip through a provider.

A real OpenID provider (Keycloak, Google ...) cannot run here, so these
tests run a small one of their own (:class:`tests.oidc_provider.FakeProvider`,
shared with the access-token tests): twisted.web on a loopback port,
serving discovery, ``/authorize``, ``/token`` (RS256-signed ID tokens) and
``/jwks``. Each test can make the provider misbehave (unverified email,
another audience, another signing key, an expired token, an error at /token).

The node is real (in-process, HTTPS on loopback) and the "browser" is a
plain HTTP client that follows each redirect by hand, so every hop is
checked.
"""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import yaml
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from arvnode import ids
from arvnode.auth.oidc import StateInvalid, sign_state, state_key, verify_state
from arvnode.config import ConfigError, config_from_string, mask_secrets
from tests.api.base import ApiTestCase
from tests.helpers import http_client, make_cluster_config, start_node
from tests.oidc_provider import (
    CLIENT_ID, CLIENT_SECRET, TRUSTED, FakeProvider, new_key, oidc_config,
)
from tests.test_docs import CLUSTER, base_config


class Browser:
    """Follows redirects one hop at a time, as a browser would."""

    def __init__(self, testcase: Any, client: Any) -> None:
        self.t = testcase
        self.client = client

    async def get(self, url: str) -> tuple[int, str, Any]:
        r = await self.client.request("GET", url, allow_redirects=False)
        body = (await r.content()).decode("utf-8", "replace")
        location = (r.headers.getRawHeaders("location") or [""])[0]
        return r.code, location, body

    async def login(self, start: str, until: str = TRUSTED) -> tuple[int, str, str]:
        """Follow from ``start`` until an answer that is not a redirect, or a
        redirect to ``until``: (status, location, body)."""
        url = start
        for _hop in range(6):
            code, location, body = await self.get(url)
            if code not in (302, 303) or location.startswith(until):
                return code, location, body
            url = location
        self.t.fail("too many redirects")
        raise AssertionError


class OIDCLoginTests(ApiTestCase):
    """One node whose login method is OpenID Connect."""

    async def start(self, **more: Any) -> None:
        self.provider = FakeProvider().start(self)
        await self.startNode(**oidc_config(self.provider.issuer, **more))
        self.browser = Browser(self, self.client)

    def login_url(self, **query: str) -> str:
        query.setdefault("return_to", TRUSTED + "/token")
        return self.node.controller_url + "/login?" + urlencode(query)

    async def log_in(self, **query: str) -> str:
        code, location, body = await self.browser.login(self.login_url(**query))
        self.assertEqual(code, 303, body)
        self.assertTrue(location.startswith(TRUSTED + "/token?api_token="), location)
        return parse_qs(urlsplit(location).query)["api_token"][0]

    async def refused(self, status: int, fragment: str) -> None:
        code, _location, body = await self.browser.login(self.login_url())
        self.assertEqual(code, status, body)
        self.assertIn(fragment, json.loads(body)["errors"][0])

    async def test_browser_flow_end_to_end(self) -> None:
        logged: list[str] = []

        def observe(event: Any) -> None:
            logged.append(repr(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        await self.start()
        # Step 1 by hand: what the node asks the provider for.
        code, location, _ = await self.browser.get(self.login_url(remote=""))
        self.assertEqual(code, 302)
        parts = urlsplit(location)
        self.assertEqual(f"{parts.scheme}://{parts.netloc}{parts.path}",
                         self.provider.issuer + "/authorize")
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.assertEqual((q["response_type"], q["client_id"], q["scope"], q["prompt"]),
                         ("code", CLIENT_ID, "openid email profile", "select_account"))
        self.assertEqual(q["redirect_uri"], self.node.controller_url + "/login")
        self.assertTrue(q["state"] and q["nonce"])

        token = await self.log_in()
        self.assertTrue(token.startswith(f"v2/{self.cluster}-gj3su-"), token)
        me = await self.ok("GET", "users/current", token=token)
        self.assertEqual((me["email"], me["username"], me["first_name"], me["last_name"],
                          me["is_active"]),
                         ("carol@example.org", "carol", "Carol Ann", "Smith", True))
        # The secret went as HTTP Basic (the provider allows it), never in the form.
        last = self.provider.token_requests[-1]
        self.assertTrue(last["authorization"].startswith(b"Basic "))
        self.assertNotIn("client_secret", last["form"])
        # A second login finds the same user.
        again = await self.log_in()
        self.assertNotEqual(again, token)
        self.assertEqual((await self.ok("GET", "users/current", token=again))["uuid"], me["uuid"])
        await self.ok("POST", "collections", token=again, body={"collection": {"name": "mine"}})
        # Nothing secret was logged: codes, tokens, the client secret.
        text = "\n".join(logged)
        codes = [r["form"]["code"] for r in self.provider.token_requests]
        for label, secret in [("client secret", CLIENT_SECRET), ("token", token.split("/")[2]),
                              ("token", again.split("/")[2]), *(("code", c) for c in codes)]:
            self.assertFalse(secret in text, f"a {label} was logged")

    async def test_client_secret_post_when_that_is_all_the_provider_takes(self) -> None:
        await self.start()
        self.provider.auth_methods = ["client_secret_post"]
        token = await self.log_in()
        await self.ok("GET", "users/current", token=token)
        last = self.provider.token_requests[-1]
        self.assertIsNone(last["authorization"])
        self.assertEqual(last["form"]["client_secret"], CLIENT_SECRET)

    async def test_provider_rotates_its_signing_key(self) -> None:
        """A token signed with a key the cached JWKS lacks: the JWKS is fetched again."""
        await self.start()
        await self.log_in()
        self.provider.key, self.provider.kid = new_key(), "k2"
        token = await self.log_in()
        await self.ok("GET", "users/current", token=token)

    async def test_unverified_email_refused(self) -> None:
        await self.start()
        self.provider.claims = {"email_verified": False}
        await self.refused(401, "unverified email address 'carol@example.org'")
        self.provider.claims = {"email_verified": True, "email": None}
        await self.refused(401, "no email address")
        self.assertEqual([u for u in await self.store.list_users() if u.email == "carol@example.org"], [])

    async def test_bad_id_tokens_refused(self) -> None:
        await self.start()
        now = int(time.time())
        self.provider.claims = {"aud": "someone-else"}
        await self.refused(401, "not meant for this cluster")
        self.provider.claims = {"exp": now - 3600, "iat": now - 7200}
        await self.refused(401, "expired")
        self.provider.claims = {"iss": "http://127.0.0.1:1"}
        await self.refused(401, "not issued by")
        self.provider.claims = {"nonce": "another-login"}
        await self.refused(401, "nonce")
        self.provider.claims = {}
        self.provider.sign_key = new_key()  # same kid, another key
        await self.refused(401, "signature does not verify")

    async def test_tampered_state_refused(self) -> None:
        await self.start()
        _, location, _ = await self.browser.get(self.login_url())
        state = parse_qs(urlsplit(location).query)["state"][0]
        body, mac = state.split(".")
        forged = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        forged["u"] = "https://evil.example.net/steal"
        forged_body = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
        for bad in (forged_body + "." + mac, "garbage", state[:-3] + "AAA"):
            code, _, page = await self.browser.get(
                self.node.controller_url + "/login?" + urlencode({"code": "x", "state": bad}))
            self.assertEqual(code, 400, page)
            self.assertIn("invalid state parameter", json.loads(page)["errors"][0])
        self.assertEqual(self.provider.token_requests, [])

    async def test_token_endpoint_error_is_401_with_its_text(self) -> None:
        await self.start()
        self.provider.token_error = (400, {"error": "invalid_grant",
                                           "error_description": "Code expired"})
        code, _, body = await self.browser.login(self.login_url())
        self.assertEqual(code, 401, body)
        self.assertIn("invalid_grant: Code expired", body)
        self.assertNotIn(CLIENT_SECRET, body)

    async def test_provider_down_is_502_naming_the_issuer(self) -> None:
        await self.startNode(**oidc_config("http://127.0.0.1:1/realms/x"))
        r = await self.client.request("GET", self.node.controller_url + "/login?" + urlencode(
            {"return_to": TRUSTED + "/"}), allow_redirects=False)
        body = await r.json()
        self.assertEqual(r.code, 502)
        self.assertIn("http://127.0.0.1:1/realms/x", body["errors"][0])

    async def test_untrusted_return_to_is_400(self) -> None:
        await self.start()
        code, _, body = await self.browser.get(self.login_url(return_to="https://evil.example.net/"))
        self.assertEqual(code, 400)
        self.assertIn("not in Login.TrustedClients", json.loads(body)["errors"][0])
        self.assertEqual(self.provider.authorize_requests, [])
        code, _, body = await self.browser.get(self.node.controller_url + "/login")
        self.assertEqual(code, 400)

    async def test_remote_gets_a_salted_token(self) -> None:
        await self.start()
        token = await self.log_in(remote="abcde")
        _, uuid, secret = token.split("/")
        self.assertEqual(len(secret), 40)
        row = await self.store.get_token(uuid)
        self.assertEqual(secret, ids.salted_secret(row.secret, "abcde"))
        code, _ = await self.api("GET", "users/current", token=token)
        self.assertEqual(code, 401)


class OIDCLoginClusterTests(TestCase):
    """A satellite sends /login to its login cluster, which logs in with OpenID Connect."""

    timeout = 120

    async def test_satellite_login_through_oidc_login_cluster(self) -> None:
        provider = FakeProvider().start(self)
        base = Path(self.mktemp())
        cfg, paths = make_cluster_config(base / "lgn00", cluster_id="lgn00",
                                         extra=oidc_config(provider.issuer))
        login = await start_node(self, cfg, paths)
        login_http = http_client(self, paths["ca"])
        cfg, paths = make_cluster_config(base / "sat01", cluster_id="sat01", extra={
            "Login.LoginCluster": "lgn00",
            "RemoteClusters": {"lgn00": {"Host": f"127.0.0.1:{login.controller_port}",
                                         "Proxy": True, "Insecure": True}}})
        sat = await start_node(self, cfg, paths)
        sat_http = http_client(self, paths["ca"])

        url = sat.controller_url + "/login?" + urlencode({"return_to": TRUSTED + "/t",
                                                          "remote": "sat01"})
        code, location, _ = await Browser(self, sat_http).get(url)
        self.assertEqual(code, 302)
        self.assertTrue(location.startswith(login.controller_url + "/login?"), location)
        code, location, body = await Browser(self, login_http).login(location)
        self.assertEqual(code, 303, body)
        token = parse_qs(urlsplit(location).query)["api_token"][0]
        self.assertTrue(token.startswith("v2/lgn00-gj3su-"), token)
        r = await sat_http.request("GET", sat.controller_url + "/arvados/v1/users/current",
                                   headers={"Authorization": [f"Bearer {token}"]})
        me = await r.json()
        self.assertEqual(r.code, 200, me)
        self.assertEqual((me["email"], me["uuid"][:5]), ("carol@example.org", "lgn00"))


class StateTests(SynchronousTestCase):
    key = state_key("a" * 40)

    def test_round_trip_and_expiry(self) -> None:
        state = sign_state(self.key, 1000.0, TRUSTED + "/x", "abcde")
        self.assertEqual(verify_state(self.key, state, 1100.0), (TRUSTED + "/x", "abcde"))
        self.assertRaises(StateInvalid, verify_state, self.key, state, 1000.0 + 301)
        self.assertRaises(StateInvalid, verify_state, state_key("b" * 40), state, 1100.0)
        self.assertNotEqual(sign_state(self.key, 1000.0, "u", ""), sign_state(self.key, 1000.0, "u", ""))


class OIDCConfigTests(SynchronousTestCase):
    def load(self, **login: Any) -> Any:
        data = base_config()
        data["Clusters"][CLUSTER]["Login"].update(login)
        return config_from_string(yaml.safe_dump(data))

    def problems(self, **login: Any) -> str:
        with self.assertRaises(ConfigError) as caught:
            self.load(**login)
        return str(caught.exception)

    def test_required_keys_and_https(self) -> None:
        text = self.problems(OpenIDConnect={"Enable": True})
        for key in ("Issuer", "ClientID", "ClientSecret"):
            self.assertIn(f"Login.OpenIDConnect.{key}: got nothing", text)
        text = self.problems(OpenIDConnect={"Enable": True, "Issuer": "http://kc.example.org/",
                                            "ClientID": "x", "ClientSecret": "y"})
        self.assertIn("http is allowed only for a loopback address", text)
        # Disabled: nothing is required.
        self.load(OpenIDConnect={"Enable": False})

    def test_one_login_method_at_a_time(self) -> None:
        oidc = {"Enable": True, "Issuer": "https://kc.example.org/realms/a", "ClientID": "x",
                "ClientSecret": "y"}
        text = self.problems(Test={"Enable": True}, OpenIDConnect=oidc)
        self.assertIn("Login.Test.Enable, Login.OpenIDConnect.Enable", text)
        text = self.problems(Google={"Enable": True, "ClientID": "g", "ClientSecret": "h"},
                             OpenIDConnect=oidc)
        self.assertIn("Login.OpenIDConnect.Enable, Login.Google.Enable", text)

    def test_config_check_masks_the_client_secret(self) -> None:
        config = self.load(OpenIDConnect={"Enable": True, "Issuer": "https://kc.example.org/r",
                                          "ClientID": "x", "ClientSecret": CLIENT_SECRET})
        self.assertEqual(config.login.oidc.client_secret, CLIENT_SECRET)
        shown = mask_secrets(config)["Clusters"][CLUSTER]["Login"]["OpenIDConnect"]
        self.assertEqual((shown["ClientSecret"], shown["ClientID"]), ("***", "x"))
        self.assertNotIn(CLIENT_SECRET, repr(config))
        google = self.load(Google={"Enable": True, "ClientID": "g", "ClientSecret": "h"})
        self.assertEqual(google.login.oidc.issuer, "https://accounts.google.com")
