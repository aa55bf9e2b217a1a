# -*- test-case-name: tests.integration.test_login_cluster -*-
"""LoginCluster federation: a login cluster and two satellites, in-process, on loopback.

A user arrives at a satellite's ``/login``, is sent to the login cluster,
posts the test-login form, comes back with a token, and uses it on both
satellites (they validate it with the login cluster and copy the user).
Deactivation and logout on the login cluster reach the satellites within
one ``Login.RemoteTokenRefresh`` (2 s of real time here: the nodes' refresh
services run on the reactor; the bound is guaranteed by the inline
revalidation of a token past its deadline, so the test waits exactly one
interval and then expects refusal, no polling). ``arvnode cache drop``
(run as a real subprocess against a satellite) makes the next use
revalidate at once, long before the interval (5 minutes there).
"""
from __future__ import annotations

import json
import re
import sys
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import yaml
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.helpers import (
    deferred_sleep, http_client, make_cluster_config, start_node, subprocess_env,
)

LOGIN = "lgn00"
SAT1 = "sat01"
SAT2 = "sat02"
WORKBENCH = "https://wb.example.com"
INTERVAL = 2.0


class LoginClusterFederationTests(TestCase):
    timeout = 180

    async def start(self, refresh: str = "2s", satellites: tuple[str, ...] = (SAT1, SAT2)) -> None:
        self.base = Path(self.mktemp())
        cfg, paths = make_cluster_config(self.base / LOGIN, cluster_id=LOGIN, extra={
            "Login.Test": {"Enable": True, "Users": {
                "alice": {"Email": "alice@example.com", "Password": "xyzzy"}}},
            "Login.TrustedClients": {WORKBENCH + "/": {}},
            "Users.NewUsersAreActive": True,
        })
        self.login = await start_node(self, cfg, paths)
        # The test client trusts every node's CA (one per node).
        self.http = {LOGIN: http_client(self, paths["ca"])}
        self.sats: dict[str, Any] = {}
        self.sat_paths: dict[str, Any] = {}
        for cid in satellites:
            cfg, paths = make_cluster_config(self.base / cid, cluster_id=cid, extra={
                "Login.LoginCluster": LOGIN,
                "Login.RemoteTokenRefresh": refresh,
                "RemoteClusters": {LOGIN: {
                    "Host": f"127.0.0.1:{self.login.controller_port}", "Proxy": True,
                    "Insecure": True}},
            })
            self.sats[cid] = await start_node(self, cfg, paths)
            self.sat_paths[cid] = paths
            self.http[cid] = http_client(self, paths["ca"])

    def node(self, cid: str) -> Any:
        return self.login if cid == LOGIN else self.sats[cid]

    async def call(self, cid: str, method: str, path: str, token: str | None,
                   body: Any = None) -> tuple[int, Any]:
        headers = {"Accept": ["application/json"]}
        if token:
            headers["Authorization"] = [f"Bearer {token}"]
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = ["application/json"]
        r = await self.http[cid].request(method, self.node(cid).controller_url + "/arvados/v1/" + path,
                                         data=data, headers=headers)
        content = await r.content()
        return r.code, (json.loads(content) if content else None)

    async def browser_login(self, via: str, remote: str = "") -> str:
        """What a browser does: satellite /login → login cluster form → POST → return_to."""
        query = {"return_to": WORKBENCH + "/token"}
        if remote:
            query["remote"] = remote
        url = self.node(via).controller_url + "/login?" + urlencode(query)
        r = await self.http[via].get(url, allow_redirects=False)
        await r.content()
        self.assertEqual(r.code, 302)
        form_url = r.headers.getRawHeaders("location")[0]
        self.assertTrue(form_url.startswith(f"https://127.0.0.1:{self.login.controller_port}/login?"),
                        form_url)
        r = await self.http[LOGIN].get(form_url, allow_redirects=False)
        page = (await r.content()).decode()
        self.assertEqual(r.code, 200, page)
        action = re.search(r'<form method="POST" action="([^"]+)"', page).group(1)
        fields = {m.group(1): unescape(m.group(2))
                  for m in re.finditer(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page)}
        fields.update(username="alice", password="xyzzy")
        r = await self.http[LOGIN].post(
            urljoin(form_url, action), data=urlencode(fields).encode(),
            headers={"Content-Type": ["application/x-www-form-urlencoded"]},
            allow_redirects=False)
        await r.content()
        self.assertEqual(r.code, 303)
        location = r.headers.getRawHeaders("location")[0]
        self.assertTrue(location.startswith(WORKBENCH + "/token?api_token="), location)
        return parse_qs(urlsplit(location).query)["api_token"][0]

    async def assert_can_write(self, cid: str, token: str, name: str) -> None:
        code, body = await self.call(cid, "POST", "collections", token,
                                     {"collection": {"name": name}})
        self.assertEqual(code, 200, f"{cid}: {body}")
        self.assertTrue(body["uuid"].startswith(cid), body["uuid"])
        code, listing = await self.call(cid, "GET", "collections", token)
        self.assertEqual(code, 200, listing)
        self.assertIn(body["uuid"], [c["uuid"] for c in listing["items"]])

    async def assert_refused(self, cid: str, token: str) -> None:
        """A deactivated user: seen as inactive, and cannot change anything."""
        code, me = await self.call(cid, "GET", "users/current", token)
        self.assertEqual((code, me["is_active"]), (200, False), f"{cid}: {me}")
        code, body = await self.call(cid, "POST", "collections", token,
                                     {"collection": {"name": "after"}})
        self.assertEqual(code, 403, f"{cid}: {body}")
        self.assertIn("not active", body["errors"][0])

    async def test_login_use_everywhere_then_deactivate_and_logout(self) -> None:
        await self.start()
        token = await self.browser_login(via=SAT1)
        self.assertTrue(token.startswith(f"v2/{LOGIN}-gj3su-"), token)
        code, me = await self.call(LOGIN, "GET", "users/current", token)
        self.assertEqual(code, 200, me)
        user = me["uuid"]
        self.assertTrue(user.startswith(LOGIN))

        # The token works on both satellites, as the same user (copied there).
        for cid in (SAT1, SAT2):
            code, body = await self.call(cid, "GET", "users/current", token)
            self.assertEqual(code, 200, f"{cid}: {body}")
            self.assertEqual((body["uuid"], body["email"], body["is_active"]),
                             (user, "alice@example.com", True))
            await self.assert_can_write(cid, token, f"made on {cid}")
            copy = await self.sats[cid].node.store.get_user(user)
            self.assertEqual(copy.username, "alice")
        # User records come from the login cluster (forwarded, then mirrored).
        code, listing = await self.call(SAT2, "GET", "users", token)
        self.assertEqual(code, 200, listing)
        self.assertIn(user, [u["uuid"] for u in listing["items"]])
        # A change made through a satellite is made on the login cluster, and
        # the other satellite sees it (forwarded get, mirrored locally).
        code, body = await self.call(SAT1, "PUT", f"users/{user}", token,
                                     {"user": {"first_name": "Alicia"}})
        self.assertEqual((code, body.get("first_name")), (200, "Alicia"), body)
        self.assertEqual((await self.login.node.store.get_user(user)).first_name, "Alicia")
        self.assertEqual((await self.sats[SAT1].node.store.get_user(user)).first_name, "Alicia")
        code, body = await self.call(SAT2, "GET", f"users/{user}", token)
        self.assertEqual((code, body.get("first_name")), (200, "Alicia"), body)
        self.assertEqual((await self.sats[SAT2].node.store.get_user(user)).first_name, "Alicia")
        # A satellite's own token is never sent to the login cluster.
        code, body = await self.call(SAT2, "GET", "users", self.sats[SAT2].root_token)
        self.assertEqual(code, 401, body)
        self.assertIn("locally issued token", body["errors"][0])

        # A second session, logged out through satellite 1.
        other = await self.browser_login(via=SAT2)
        for cid in (SAT1, SAT2):
            self.assertEqual((await self.call(cid, "GET", "users/current", other))[0], 200)
        r = await self.http[SAT1].get(
            self.sats[SAT1].controller_url + "/logout?" + urlencode({"return_to": WORKBENCH + "/"}),
            headers={"Authorization": [f"Bearer {other}"]}, allow_redirects=False)
        await r.content()
        self.assertEqual(r.code, 302)
        chain = r.headers.getRawHeaders("location")[0]
        self.assertTrue(chain.startswith(f"https://127.0.0.1:{self.login.controller_port}/logout?"))
        r = await self.http[LOGIN].get(chain, allow_redirects=False)
        await r.content()
        self.assertEqual((r.code, r.headers.getRawHeaders("location")), (302, [WORKBENCH + "/"]))
        logged_out = reactor.seconds()
        # Revoked at the issuer and forgotten by satellite 1 at once ...
        self.assertEqual((await self.call(LOGIN, "GET", "users/current", other))[0], 401)
        self.assertEqual((await self.call(SAT1, "GET", "users/current", other))[0], 401)
        # ... and by satellite 2 within one interval.
        await deferred_sleep(max(0.0, logged_out + INTERVAL + 0.1 - reactor.seconds()))
        self.assertEqual((await self.call(SAT2, "GET", "users/current", other))[0], 401)
        # The first session is untouched.
        self.assertEqual((await self.call(SAT2, "GET", "users/current", token))[0], 200)

        # An admin deactivates the user on the login cluster.
        code, body = await self.call(LOGIN, "POST", f"users/{user}/unsetup", self.login.root_token)
        self.assertEqual((code, body["is_active"]), (200, False), body)
        deactivated = reactor.seconds()
        await self.assert_refused(LOGIN, token)
        await deferred_sleep(max(0.0, deactivated + INTERVAL + 0.1 - reactor.seconds()))
        for cid in (SAT1, SAT2):
            await self.assert_refused(cid, token)
            copy = await self.sats[cid].node.store.get_user(user)
            self.assertFalse(copy.is_active)

    async def test_token_for_one_satellite(self) -> None:
        """``remote=sat01``: the token comes back salted for sat01 (spec 8.5), so it
        works there and nowhere else."""
        await self.start()
        token = await self.browser_login(via=SAT1, remote=SAT1)
        self.assertEqual(len(token.split("/")[2]), 40)
        code, me = await self.call(SAT1, "GET", "users/current", token)
        self.assertEqual(code, 200, me)
        self.assertTrue(me["uuid"].startswith(LOGIN))
        await self.assert_can_write(SAT1, token, "salted")
        self.assertEqual((await self.call(SAT2, "GET", "users/current", token))[0], 401)

    async def test_cache_drop_revalidates_at_once(self) -> None:
        """RemoteTokenRefresh 5m: a deactivation on the login cluster would take
        up to 5 minutes to reach the satellite; ``arvnode cache drop --user-uuid``
        makes the next use ask the login cluster again."""
        await self.start(refresh="5m", satellites=(SAT1,))
        token = await self.browser_login(via=SAT1)
        sat = self.sats[SAT1]
        code, me = await self.call(SAT1, "GET", "users/current", token)
        self.assertEqual(code, 200, me)
        user = me["uuid"]
        code, _ = await self.call(LOGIN, "POST", f"users/{user}/unsetup", self.login.root_token)
        self.assertEqual(code, 200)
        # Still cached as active on the satellite.
        await self.assert_can_write(SAT1, token, "before the drop")

        config_path = self.base / "sat01.yml"
        config_path.write_text(yaml.safe_dump(sat.config_dict))
        out, err, status = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "arvnode.cli", "cache", "drop", "--user-uuid", user,
             "--config", str(config_path), "--url", sat.controller_url + "/",
             "--ca-file", str(self.sat_paths[SAT1]["ca"])],
            env=subprocess_env(), reactor=reactor)
        self.assertEqual(status, 0, (out, err))
        self.assertIn(b"dropped 1 cached answer(s)", out)
        await self.assert_refused(SAT1, token)

        # Without an admin token the call is refused, and the command says so.
        bad = dict(sat.config_dict)
        (cid, section), = bad["Clusters"].items()
        bad = {"Clusters": {cid: dict(section, SystemRootToken="x" * 40)}}
        config_path.write_text(yaml.safe_dump(bad))
        out, err, status = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "arvnode.cli", "cache", "drop", "--token-uuid", f"{LOGIN}-gj3su-000000000000001",
             "--config", str(config_path), "--url", sat.controller_url,
             "--ca-file", str(self.sat_paths[SAT1]["ca"])],
            env=subprocess_env(), reactor=reactor)
        self.assertEqual(status, 1)
        self.assertIn(b"401", err)

    async def test_admin_of_the_login_cluster_acts_through_a_satellite(self) -> None:
        """User admin on a satellite goes to the login cluster (spec 8.4), and the
        satellite's copy follows at once (RemoteTokenRefresh is 5m here)."""
        await self.start(refresh="5m", satellites=(SAT1,))
        token = await self.browser_login(via=SAT1)
        code, me = await self.call(SAT1, "GET", "users/current", token)
        self.assertEqual(code, 200, me)
        user = me["uuid"]
        # The login cluster's root token is an admin token on the satellite too.
        admin = self.login.root_token
        code, body = await self.call(SAT1, "POST", f"users/{user}/unsetup", admin)
        self.assertEqual((code, body.get("is_active")), (200, False), body)
        self.assertFalse((await self.login.node.store.get_user(user)).is_active)
        await self.assert_refused(SAT1, token)
        code, body = await self.call(SAT1, "POST", f"users/{user}/activate", admin)
        self.assertEqual((code, body.get("is_active")), (200, True), body)
        await self.assert_can_write(SAT1, token, "active again")
