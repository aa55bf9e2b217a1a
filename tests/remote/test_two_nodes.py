# -*- test-case-name: tests.remote.test_two_nodes -*-
"""Two real in-process nodes on loopback: a token issued by A used at B.

B validates A's token by asking A's own controller (users/current and
api_client_authorizations/current, spec §8.1), makes a local copy of the
user, and drops the token within ``Login.RemoteTokenRefresh`` (real time,
2 s here) once A revokes it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import treq
from twisted.trial.unittest import TestCase

from arvnode.auth.salting import salt_token
from arvnode.keep.locator import to_remote
from tests.helpers import http_client, make_cluster_config, start_node

A = "zaaaa"
B = "zbbbb"


class TwoNodeTests(TestCase):
    timeout = 120

    async def start(self, refresh: str = "5m") -> None:
        base = Path(self.mktemp())
        config_a, paths_a = make_cluster_config(base / "a", cluster_id=A)
        self.a = await start_node(self, config_a, paths_a)
        config_b, paths_b = make_cluster_config(base / "b", cluster_id=B, extra={
            "RemoteClusters": {A: {
                "Host": f"127.0.0.1:{self.a.controller_port}", "Proxy": True,
                "Insecure": True, "ActivateUsers": True,
            }},
            "Login.RemoteTokenRefresh": refresh,
        })
        self.b = await start_node(self, config_b, paths_b)
        self.http = http_client(self, paths_b["ca"])
        store = self.a.node.store
        self.user = await store.create_user(email="fed@a.example", username="fed",
                                            first_name="Fed", is_active=True)
        self.token = await store.create_token(self.user.uuid)

    async def current_at_b(self, token: str) -> tuple[int, Any]:
        r = await self.http.get(self.b.controller_url + "/arvados/v1/users/current",
                                headers={"Authorization": [f"Bearer {token}"]})
        body = await treq.content(r)
        return r.code, json.loads(body) if body else None

    async def test_token_of_a_works_at_b(self) -> None:
        """B answers users/current for A's token with A's user (copied, same UUID, active)."""
        await self.start()
        code, body = await self.current_at_b(self.token.v2)
        self.assertEqual(code, 200, body)
        self.assertEqual(body["uuid"], self.user.uuid)
        self.assertEqual(body["email"], "fed@a.example")
        self.assertTrue(body["is_active"])
        copy = await self.b.node.store.get_user(self.user.uuid)
        self.assertEqual(copy.username, "fed")

    async def test_salted_token_of_a_works_at_b(self) -> None:
        """The form A's controller forwards (salted for B) validates at A with
        ?remote=zbbbb, so B accepts it."""
        await self.start()
        code, body = await self.current_at_b(salt_token(self.token.v2, B))
        self.assertEqual(code, 200, body)
        self.assertEqual(body["uuid"], self.user.uuid)

    async def test_current_token_of_a_at_b(self) -> None:
        """api_client_authorizations/current at B describes A's token (its
        uuid and owner), without any secret."""
        await self.start()
        r = await self.http.get(self.b.controller_url + "/arvados/v1/api_client_authorizations/current",
                                headers={"Authorization": [f"Bearer {self.token.v2}"]})
        body = json.loads(await treq.content(r))
        self.assertEqual(r.code, 200, body)
        self.assertEqual((body["uuid"], body["owner_uuid"]), (self.token.uuid, self.user.uuid))
        self.assertNotIn("api_token", body)
        self.assertNotIn(self.token.secret, json.dumps(body))

    async def test_remote_user_visible_only_through_all_users_link(self) -> None:
        """Peer federation visibility: A's user, copied at B by using a token
        there, is invisible to B's own users until a B admin adds a can_read
        link from it to B's "All users" group; then they see it."""
        await self.start()
        code, _ = await self.current_at_b(self.token.v2)  # B copies A's user
        self.assertEqual(code, 200)
        b_store = self.b.node.store
        local = await b_store.create_user(email="local@b.example", is_active=True)
        local_token = (await b_store.create_token(local.uuid)).v2

        async def b_api(method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
            kw: dict[str, Any] = {"headers": {"Authorization": [f"Bearer {token}"],
                                              "Content-Type": ["application/json"]}}
            if body is not None:
                kw["data"] = json.dumps(body).encode()
            r = await self.http.request(method, self.b.controller_url + "/arvados/v1/" + path, **kw)
            return r.code, json.loads(await treq.content(r))

        # (users/<A uuid> itself would be forwarded to A: list B's own table.)
        code, listed = await b_api("GET", "users", local_token)
        self.assertNotIn(self.user.uuid, [u["uuid"] for u in listed["items"]])

        root = self.b.section["SystemRootToken"]
        code, link = await b_api("POST", "links", root, {
            "link_class": "permission", "name": "can_read", "tail_uuid": self.user.uuid,
            "head_uuid": f"{B}-j7d0g-fffffffffffffff"})
        self.assertEqual(code, 200, link)
        code, listed = await b_api("GET", "users", local_token)
        self.assertIn(self.user.uuid, [u["uuid"] for u in listed["items"]])

    async def test_revocation_within_real_interval(self) -> None:
        """RemoteTokenRefresh 2 s: after A revokes the token, B refuses it
        within the interval (plus scheduling slack on a loaded machine)."""
        await self.start(refresh="2s")
        code, _ = await self.current_at_b(self.token.v2)
        self.assertEqual(code, 200)
        from twisted.internet import reactor

        await self.a.node.authenticator.revoke(self.token.uuid)
        revoked_at = reactor.seconds()
        codes: list[int] = []

        async def probe() -> None:
            code, _ = await self.current_at_b(self.token.v2)
            codes.append(code)

        while True:
            await probe()
            if codes[-1] == 401:
                break
            self.assertEqual(codes[-1], 200)
            self.assertLess(reactor.seconds() - revoked_at, 10.0)
            await _sleep(0.2)
        elapsed = reactor.seconds() - revoked_at
        self.assertLess(elapsed, 2.0 + 3.0)

    async def test_issuer_down_is_502_naming_it(self) -> None:
        """A stopped: a token of A not yet cached at B gets 502 naming A, not 401."""
        await self.start()
        fresh = await self.a.node.store.create_token(self.user.uuid)
        await self.a.node.getServiceNamed("controller").stopService()
        code, body = await self.current_at_b(fresh.v2)
        self.assertIn(code, (502, 503), body)
        self.assertIn(f"remote cluster {A} unreachable", body["errors"][0])

    async def test_issuer_down_keepproxy_502_naming_it(self) -> None:
        """At B's keepproxy too: A unreachable → 502 naming A, not 403."""
        await self.start()
        fresh = await self.a.node.store.create_token(self.user.uuid)
        await self.a.node.getServiceNamed("controller").stopService()
        keep_http = http_client(self)
        r = await keep_http.get(self.b.keepproxy_url + "/acbd18db4cc2f85cedef654fccc4a4d8+3",
                                headers={"Authorization": [f"Bearer {fresh.v2}"]})
        self.assertEqual(r.code, 502)
        self.assertIn(f"remote cluster {A} unreachable", (await treq.content(r)).decode())


    async def test_node_wiring(self) -> None:
        """The refresh timer is a named service on the configured interval."""
        await self.start(refresh="2s")
        refresh = self.b.node.getServiceNamed("remote-token-refresh")
        self.assertEqual(refresh.interval, 2.0)
        self.assertTrue(refresh.running)
        keep = self.b.node.getServiceNamed("keepproxy")
        self.assertIsNotNone(keep.site.proxy.remote_keep)
        self.assertIs(keep.site.proxy.remote_keep, self.b.node.remote_keep)

    async def test_remote_block_through_b_keepproxy(self) -> None:
        """A block stored at A, read through B's keepproxy with A's token: B
        finds A's keep services via A's keep_services/accessible, fetches and
        checks it; with X-Keep-Signature: local it keeps a copy signed at B."""
        await self.start()
        data = b"block of cluster A " * 5000
        keep_http = http_client(self)
        r = await keep_http.put(self.a.keepproxy_url + "/" + hashlib.md5(data).hexdigest(),
                                data=data, headers={"Authorization": [f"Bearer {self.token.v2}"]})
        self.assertEqual(r.code, 200, await treq.content(r))
        signed = (await treq.content(r)).decode().strip()
        remote_locator = to_remote(signed, A)

        r = await keep_http.get(self.b.keepproxy_url + "/" + remote_locator,
                                headers={"Authorization": [f"Bearer {self.token.v2}"]})
        self.assertEqual(r.code, 200)
        self.assertEqual(await treq.content(r), data)

        r = await keep_http.get(self.b.keepproxy_url + "/" + remote_locator, headers={
            "Authorization": [f"Bearer {self.token.v2}"], "X-Keep-Signature": ["local, now"]})
        self.assertEqual(r.code, 200)
        self.assertEqual(await treq.content(r), data)
        local = r.headers.getRawHeaders("x-keep-locator")[0]
        await self.a.node.getServiceNamed("keepproxy").stopService()
        r = await keep_http.get(self.b.keepproxy_url + "/" + local,
                                headers={"Authorization": [f"Bearer {self.token.v2}"]})
        self.assertEqual(r.code, 200)
        self.assertEqual(await treq.content(r), data)


async def _sleep(seconds: float) -> None:
    from tests.helpers import deferred_sleep

    await deferred_sleep(seconds)
