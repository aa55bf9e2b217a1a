"""``/login``, ``/logout``, ``users/authenticate`` and the cache-drop admin call on one node.

What a user notices: the login form, where the browser is sent (and with
which token), which ``return_to`` targets are refused, that logging out
kills the token, and that only admins may drop cached tokens.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from twisted.trial.unittest import SynchronousTestCase

from arvnode import ids
from arvnode.api.login import return_to_problem
from tests.api.base import ApiTestCase

TRUSTED = "https://wb.example.com"
LOGIN = {
    "Login.Test": {"Enable": True, "Users": {
        "alice": {"Email": "alice@example.com", "Password": "xyzzy"},
        "bob": {"Email": "bob@example.com", "Password": "hunter2"},
    }},
    "Login.TrustedClients": {TRUSTED + "/": {}, "https://*.apps.example.org/": {}},
    "Users.NewUsersAreActive": True,
}


class ReturnToTests(SynchronousTestCase):
    """Which targets may receive a token (spec 8.5)."""

    trusted = ("https://wb.example.com/", "https://*.apps.example.org", "http://local.test:8080/")

    def ok(self, url: str, **kw: Any) -> None:
        self.assertIsNone(return_to_problem(url, self.trusted, **kw), url)

    def bad(self, url: str, fragment: str, **kw: Any) -> None:
        problem = return_to_problem(url, self.trusted, **kw)
        self.assertIsNotNone(problem, url)
        self.assertIn(fragment, str(problem))

    def test_exact_origin_any_path(self) -> None:
        self.ok("https://wb.example.com/token?x=1")
        self.ok("https://WB.example.com:443/")
        self.ok("http://local.test:8080/cb")

    def test_other_origins_refused(self) -> None:
        self.bad("https://evil.example.com/", "not in Login.TrustedClients")
        self.bad("http://wb.example.com/", "not in Login.TrustedClients")  # scheme differs
        self.bad("https://wb.example.com:8443/", "not in Login.TrustedClients")  # port differs
        self.bad("https://wb.example.com.evil.net/", "not in Login.TrustedClients")

    def test_wildcard_matches_subdomains_only(self) -> None:
        self.ok("https://a.apps.example.org/x")
        self.ok("https://b.c.apps.example.org/")
        self.bad("https://apps.example.org/", "not in Login.TrustedClients")
        self.bad("https://evilapps.example.org/", "not in Login.TrustedClients")

    def test_userinfo_and_non_http_refused(self) -> None:
        self.bad("https://me:pw@wb.example.com/", "user name or password")
        self.bad("javascript:alert(1)", "http(s)")
        self.bad("/relative", "http(s)")

    def test_private_networks_only_when_trusted(self) -> None:
        self.bad("http://127.0.0.1:3000/", "not in Login.TrustedClients")
        self.ok("http://127.0.0.1:3000/", trust_private_networks=True)
        self.ok("http://localhost:3000/", trust_private_networks=True)
        self.ok("https://10.1.2.3/", trust_private_networks=True)
        self.bad("https://8.8.8.8/", "not in Login.TrustedClients", trust_private_networks=True)


class LoginClusterTests(ApiTestCase):
    """The login cluster's own test login."""

    extra = LOGIN

    async def get(self, path: str, token: str | None = None) -> Any:
        headers = {"Authorization": [f"Bearer {token}"]} if token else {}
        return await self.client.request("GET", self.node.controller_url + path,
                                         headers=headers, allow_redirects=False)

    async def post_form(self, path: str, form: dict[str, str]) -> Any:
        return await self.client.request(
            "POST", self.node.controller_url + path, data=urlencode(form).encode(),
            headers={"Content-Type": ["application/x-www-form-urlencoded"]},
            allow_redirects=False)

    async def log_in(self, user: str = "alice", password: str = "xyzzy", remote: str = "",
                     return_to: str = TRUSTED + "/token") -> str:
        r = await self.post_form("/login", {"username": user, "password": password,
                                            "return_to": return_to, "remote": remote})
        await r.content()
        self.assertEqual(r.code, 303)
        location = r.headers.getRawHeaders("location")[0]
        self.assertTrue(location.startswith(return_to + "?api_token="), location)
        return parse_qs(urlsplit(location).query)["api_token"][0]

    async def test_form_then_token_for_a_new_user(self) -> None:
        await self.startNode()
        r = await self.get("/login?" + urlencode({"return_to": TRUSTED + "/token"}))
        page = (await r.content()).decode()
        self.assertEqual(r.code, 200)
        self.assertIn('name="password"', page)
        self.assertIn('value="https://wb.example.com/token"', page)
        self.assertIsNone(r.headers.getRawHeaders("access-control-allow-origin"))

        token = await self.log_in()
        self.assertTrue(token.startswith(f"v2/{self.cluster}-gj3su-"))
        me = await self.ok("GET", "users/current", token=token)
        self.assertEqual((me["email"], me["username"], me["is_active"]),
                         ("alice@example.com", "alice", True))
        # Logging in again finds the same user, with a new token.
        again = await self.log_in()
        self.assertNotEqual(again, token)
        self.assertEqual((await self.ok("GET", "users/current", token=again))["uuid"], me["uuid"])
        # The token can write (the user is active, NewUsersAreActive).
        await self.ok("POST", "collections", token=token, body={"collection": {"name": "mine"}})

    async def test_wrong_password_and_unknown_user_refused(self) -> None:
        await self.startNode()
        for user, password in (("alice", "wrong"), ("mallory", "xyzzy"), ("alice", "")):
            r = await self.post_form("/login", {"username": user, "password": password,
                                                "return_to": TRUSTED + "/"})
            page = (await r.content()).decode()
            self.assertEqual(r.code, 401, user)
            self.assertIn("Wrong username or password", page)
            self.assertIsNone(r.headers.getRawHeaders("location"))
        self.assertEqual([u.email for u in await self.store.list_users()
                          if u.email.endswith("example.com")], [])

    async def test_return_to_checked(self) -> None:
        await self.startNode()
        for target, fragment in (("https://evil.example.net/", "not in Login.TrustedClients"),
                                 ("https://x:y@wb.example.com/", "user name or password")):
            for method in ("GET", "POST"):
                if method == "GET":
                    r = await self.get("/login?" + urlencode({"return_to": target}))
                else:
                    r = await self.post_form("/login", {"username": "alice", "password": "xyzzy",
                                                        "return_to": target})
                body = await r.json()
                self.assertEqual(r.code, 400)
                self.assertIn("invalid return_to parameter", body["errors"][0])
                self.assertIn(fragment, body["errors"][0])
        r = await self.get("/login")
        self.assertEqual(r.code, 400)
        self.assertIn("missing return_to", (await r.json())["errors"][0])

    async def test_remote_gets_a_salted_token(self) -> None:
        """``remote=abcde``: the token is salted for abcde (spec 8.5, 3.3)."""
        await self.startNode()
        token = await self.log_in(remote="abcde")
        _, uuid, secret = token.split("/")
        self.assertEqual(len(secret), 40)
        row = await self.store.get_token(uuid)
        self.assertEqual(secret, ids.salted_secret(row.secret, "abcde"))
        # A salted token is not the user's key to this cluster's API.
        code, _ = await self.api("POST", "collections", token=token,
                                 body={"collection": {"name": "x"}})
        self.assertEqual(code, 401)
        r = await self.post_form("/login", {"username": "alice", "password": "xyzzy",
                                            "return_to": TRUSTED + "/", "remote": "bad id!"})
        self.assertEqual(r.code, 400)

    async def test_users_authenticate_json(self) -> None:
        await self.startNode()
        body = await self.ok("POST", "users/authenticate",
                             body={"username": "bob", "password": "hunter2"})
        self.assertEqual(body["kind"], "arvados#apiClientAuthorization")
        token = f"v2/{body['uuid']}/{body['api_token']}"
        me = await self.ok("GET", "users/current", token=token)
        self.assertEqual(me["email"], "bob@example.com")
        code, body = await self.api("POST", "users/authenticate",
                                    body={"username": "bob", "password": "nope"})
        self.assertEqual(code, 401)

    async def test_logout_revokes_and_redirects(self) -> None:
        await self.startNode()
        token = await self.log_in()
        r = await self.get("/logout?" + urlencode({"return_to": "https://evil.example.net/"}),
                           token=token)
        self.assertEqual(r.code, 400)
        self.assertIn("invalid return_to parameter", (await r.json())["errors"][0])
        await self.ok("GET", "users/current", token=token)  # a refused logout changes nothing

        r = await self.get("/logout?" + urlencode({"return_to": TRUSTED + "/bye"}), token=token)
        await r.content()
        self.assertEqual(r.code, 302)
        self.assertEqual(r.headers.getRawHeaders("location"), [TRUSTED + "/bye"])
        code, _ = await self.api("GET", "users/current", token=token)
        self.assertEqual(code, 401)
        # The root token survives a logout made with it.
        r = await self.get("/logout", token=self.root)
        self.assertEqual(r.code, 200)
        await self.ok("GET", "users/current", token=self.root)


class NoLoginMethodTests(ApiTestCase):
    async def test_login_without_method_is_404(self) -> None:
        await self.startNode()
        r = await self.client.request("GET", self.node.controller_url + "/login?return_to=x",
                                      allow_redirects=False)
        body = await r.json()
        self.assertEqual(r.code, 404)
        self.assertIn("no login method", body["errors"][0])


class SatelliteRedirectTests(ApiTestCase):
    """``Login.LoginCluster: x`` on a satellite: /login goes to x (spec 8.4)."""

    extra = {"Login.LoginCluster": "lgn01",
             # Port 1: nothing listens, so the server-side revocation fails fast.
             "RemoteClusters": {"lgn01": {"Host": "127.0.0.1:1", "Proxy": True}}}

    async def test_login_and_logout_redirect_to_the_login_cluster(self) -> None:
        await self.startNode()
        target = TRUSTED + "/cb?x=1"
        r = await self.client.request(
            "GET", self.node.controller_url + "/login?" + urlencode(
                {"return_to": target, "remote": self.cluster}), allow_redirects=False)
        await r.content()
        self.assertEqual(r.code, 302)
        location = r.headers.getRawHeaders("location")[0]
        parts = urlsplit(location)
        self.assertEqual((parts.scheme, parts.netloc, parts.path),
                         ("https", "127.0.0.1:1", "/login"))
        self.assertEqual(parse_qs(parts.query), {"return_to": [target], "remote": [self.cluster]})

        # A token of the login cluster: dropped here, browser sent to its issuer.
        foreign = "v2/lgn01-gj3su-000000000000001/" + "s" * 50
        r = await self.client.request(
            "GET", self.node.controller_url + "/logout?" + urlencode({"return_to": TRUSTED}),
            headers={"Authorization": [f"Bearer {foreign}"]}, allow_redirects=False)
        await r.content()
        self.assertEqual(r.code, 302)
        self.assertEqual(r.headers.getRawHeaders("location"),
                         ["https://127.0.0.1:1/logout?"
                          + urlencode({"return_to": TRUSTED})])


class CacheDropTests(ApiTestCase):
    async def drop(self, token: str | None, **form: str) -> tuple[int, Any]:
        headers = {"Content-Type": ["application/x-www-form-urlencoded"]}
        if token:
            headers["Authorization"] = [f"Bearer {token}"]
        r = await self.client.request("POST", self.node.controller_url + "/_arvnode/cache/drop",
                                      data=urlencode(form).encode(), headers=headers)
        return r.code, await r.json()

    async def test_admin_only_and_validated(self) -> None:
        await self.startNode()
        user, token = await self.make_user(name="carol")
        code, body = await self.drop(None, user_uuid=user)
        self.assertEqual(code, 401)
        code, body = await self.drop(token, user_uuid=user)
        self.assertEqual(code, 403)
        self.assertIn("only admins", body["errors"][0])
        code, body = await self.drop(self.root)
        self.assertEqual(code, 400)
        code, body = await self.drop(self.root, user_uuid="not-a-uuid")
        self.assertEqual(code, 422)
        code, body = await self.drop(self.root, token_uuid=user)  # a user uuid as token uuid
        self.assertEqual(code, 422)

        await self.ok("GET", "users/current", token=token)  # cached now
        code, body = await self.drop(self.root, user_uuid=user)
        self.assertEqual(code, 200, body)
        self.assertEqual(body["dropped"], 1)
        self.assertEqual(body["user_uuid"], user)
        await self.ok("GET", "users/current", token=token)  # still valid: looked up again
