# -*- test-case-name: tests.remote.test_keep -*-
"""Reading ``+R`` blocks through the keepproxy (:mod:`arvnode.remote.keep`).

Two real keepproxies on loopback (tests.keep.test_proxy_fixture): the local
one, and the remote cluster's, which holds the block and checks the salted
token's signature. The remote cluster's controller (only
``keep_services/accessible`` is needed) is :mod:`tests.remote.fakecluster`,
standing in until arvnode's controller serves that endpoint.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from arvnode.auth.identity import Identity
from arvnode.auth.salting import salt_token
from arvnode.keep.locator import sign_locator, to_remote
from arvnode.remote.client import RemoteClient
from arvnode.remote.keep import RemoteKeep
from tests.keep.test_proxy_fixture import IDENTITIES, KEY, TTL, USER, auth, start_keepproxy
from tests.remote.fakecluster import start_fake_cluster

PEER = "zbbbb"
SALTED = salt_token(USER, PEER)


class RemoteKeepTests(TestCase):
    async def setUp(self) -> None:
        self.fake = await start_fake_cluster(self, PEER)
        self.remote = await start_keepproxy(self)
        self.presented: list[str | None] = []

        async def remote_auth(token: str | None) -> Identity | None:
            self.presented.append(token)
            if token == SALTED:
                return Identity("zzzzz-tpzed-000000000000001", SALTED, "zzzzz-gj3su-000000000000001")
            return None

        self.remote.proxy._authenticate = remote_auth
        self.fake.keep_services = [{
            "uuid": f"{PEER}-bi6l4-000000000000000", "service_host": "127.0.0.1",
            "service_port": self.remote.port, "service_ssl_flag": False, "service_type": "proxy",
        }]
        self.client = RemoteClient(
            reactor=reactor, clock=reactor, local_cluster="zzzzz",
            remotes={PEER: self.fake.remote_entry(proxy=True)}, ca_file=str(self.fake.ca), timeout=30,
        )
        self.addCleanup(lambda: Deferred.fromCoroutine(self.client.close()))
        self.local = await start_keepproxy(self)
        self.remote_keep = RemoteKeep(self.client, reactor)
        self.local.proxy.remote_keep = self.remote_keep

    def put_remote(self, data: bytes, token: str = SALTED) -> str:
        """Store ``data`` on the remote; the +R locator a federated manifest carries."""
        h = hashlib.md5(data).hexdigest()
        self.remote.volumes[0].put_file(h, data)
        signed = sign_locator(f"{h}+{len(data)}", token, KEY, TTL, reactor.seconds())
        return to_remote(signed, PEER)

    async def get(self, locator: str, method: str = "GET", token: str = USER,
                  headers: dict[str, str] | None = None) -> Any:
        c = await self.local.client()
        h = auth(token)
        h.update(headers or {})
        response, _ = await c.request(method, "/" + locator, h)
        return response

    async def test_get_remote_block(self) -> None:
        """The bytes come from the remote, fetched with the salted token; the
        remote's services are discovered once (as an external client)."""
        data = os.urandom(3 * 1024 * 1024 + 17)
        locator = self.put_remote(data)
        self.assertIn(f"+R{PEER}-", locator)
        for _ in range(2):
            response = await self.get(locator)
            self.assertEqual(response.status, 200)
            self.assertEqual(response.body, data)
        self.assertEqual(set(self.presented), {SALTED})
        accessible = self.fake.calls_to("keep_services/accessible")
        self.assertEqual(len(accessible), 1)
        self.assertEqual(accessible[0]["headers"]["x-external-client"], ["1"])
        self.assertEqual(accessible[0]["headers"]["authorization"], [f"Bearer {SALTED}"])

    async def test_head_remote_block(self) -> None:
        data = b"remote head"
        response = await self.get(self.put_remote(data), "HEAD")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("content-length"), str(len(data)))

    async def test_local_copy(self) -> None:
        """X-Keep-Signature: local stores the block here and returns a locally
        signed locator that works with the remote gone."""
        data = b"copy me home" * 1000
        response = await self.get(self.put_remote(data), headers={"X-Keep-Signature": "local, 2026-01-01T00:00:00Z"})
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(response.body, data)
        local_locator = response.header("x-keep-locator")
        self.assertRegex(local_locator, rf"^{hashlib.md5(data).hexdigest()}\+{len(data)}\+A[0-9a-f]{{40}}@[0-9a-f]{{8}}$")
        self.assertTrue(self.local.volumes[0].has_block(hashlib.md5(data).hexdigest()))
        await self.fake.listening_port.stopListening()
        again = await self.get(local_locator)
        self.assertEqual(again.status, 200)
        self.assertEqual(again.body, data)

    async def test_local_copy_of_a_large_block_streams_in_batches(self) -> None:
        """A block of several batches is copied batch by batch (never whole
        in memory) and read back identical from the local copy."""
        import os

        data = os.urandom(3 * self.local.proxy.batch_size + 12345)
        response = await self.get(self.put_remote(data), headers={"X-Keep-Signature": "local"})
        self.assertEqual(response.status, 200, response.body[:200])
        self.assertEqual(response.body, data)
        self.assertTrue(self.local.volumes[0].has_block(hashlib.md5(data).hexdigest()))

    async def test_missing_block_404(self) -> None:
        data = b"never stored"
        h = hashlib.md5(data).hexdigest()
        locator = to_remote(sign_locator(f"{h}+{len(data)}", SALTED, KEY, TTL, reactor.seconds()), PEER)
        response = await self.get(locator)
        self.assertEqual(response.status, 404)

    async def test_bad_signature_403(self) -> None:
        """A signature the remote does not accept for the salted token → 403."""
        locator = self.put_remote(b"signed for someone else", token=salt_token(USER, "zcccc"))
        response = await self.get(locator)
        self.assertEqual(response.status, 403)
        self.assertIn(PEER, response.body.decode())

    async def test_unconfigured_cluster_400(self) -> None:
        locator = self.put_remote(b"x").replace(f"+R{PEER}-", "+Rzqqqq-")
        response = await self.get(locator)
        self.assertEqual(response.status, 400)
        self.assertIn("zqqqq", response.body.decode())

    async def test_remote_down_502(self) -> None:
        locator = self.put_remote(b"unreachable")
        await self.fake.listening_port.stopListening()
        response = await self.get(locator)
        self.assertEqual(response.status, 502)
        self.assertIn(f"remote cluster {PEER} unreachable", response.body.decode())

    async def test_wrong_bytes_from_remote_abort(self) -> None:
        """A remote keep service that answers 200 with other bytes: the md5
        check aborts the connection; the client never gets a complete block."""
        data = os.urandom(300000)
        h = hashlib.md5(data).hexdigest()
        self.fake.keep_services = [{
            "uuid": f"{PEER}-bi6l4-000000000000009", "service_host": "127.0.0.1",
            "service_port": self.fake.port, "service_ssl_flag": True, "service_type": "proxy",
        }]
        self.fake.echo_body = bytes(reversed(data))
        locator = to_remote(sign_locator(f"{h}+{len(data)}", SALTED, KEY, TTL, reactor.seconds()), PEER)
        c = await self.local.client()
        c.send(f"GET /{locator} HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {USER}\r\n\r\n".encode())
        await c.closed
        head, _, body = bytes(c.buffer).partition(b"\r\n\r\n")
        self.assertIn(b"200", head.split(b"\r\n")[0])
        self.assertLess(len(body), len(data))

    async def test_v1_token_uses_v2_form(self) -> None:
        """A v1 token is salted in its v2 form, as the controller salted it."""
        v1 = "v1tokensecret0123456789abcdefghijklmnopqrstuvwxyz01"
        IDENTITIES_V1 = Identity("zzzzz-tpzed-000000000000001", v1, "zzzzz-gj3su-000000000000001")

        async def local_auth(token: str | None) -> Identity | None:
            return IDENTITIES_V1 if token == v1 else IDENTITIES.get(token or "")

        self.local.proxy._authenticate = local_auth
        salted_v2 = salt_token(f"v2/zzzzz-gj3su-000000000000001/{v1}", PEER)

        async def remote_auth(token: str | None) -> Identity | None:
            return Identity("u", token, "t") if token == salted_v2 else None

        self.remote.proxy._authenticate = remote_auth
        data = b"v1 block"
        response = await self.get(self.put_remote(data, token=salted_v2), token=v1)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, data)
