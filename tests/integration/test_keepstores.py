"""Outgrowing one machine: a keepproxy node in front of keepstore nodes, and
two gateway nodes on one PostgreSQL database and one block store.

Every node is a real arvnode started in this process on loopback ports; the
keepproxy talks to the keepstores over HTTP exactly as it would across a LAN.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from arvnode import ids
from arvnode.keep.locator import sign_locator
from arvnode.keep.rendezvous import service_uuid_from_url, sort_services
from tests.helpers import RunningNode, http_client, make_cluster_config, start_node, wait_for
from tests.pgfixture import fresh_database

MiB = 1 << 20


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class Cluster:
    """Shared secrets of one cluster, so its nodes trust each other's signatures."""

    def __init__(self, testcase: TestCase) -> None:
        self.testcase = testcase
        rng = random.Random()
        self.id = ids.new_cluster_id(rng)
        self.root = ids.random_alnum(rng, 40)
        self.key = ids.random_alnum(rng, 40)

    def config(self, name: str, **extra: Any) -> tuple[dict[str, Any], dict[str, Path]]:
        base = Path(self.testcase.mktemp()) / name
        merged = {"SystemRootToken": self.root, "Collections.BlobSigningKey": self.key}
        merged.update(extra)
        return make_cluster_config(base, cluster_id=self.id, extra=merged)

    async def keepstore(self, name: str) -> RunningNode:
        """A node with one directory volume serving it on the keepstore API."""
        config, paths = self.config(
            name, **{"Services.Keepstore": {"InternalURLs": {"http://127.0.0.1:0/": {}}}}
        )
        return await start_node(self.testcase, config, paths)

    async def gateway(self, keepstores: list[str], name: str = "gw", **extra: Any) -> RunningNode:
        """A node without volumes whose keepproxy uses ``keepstores`` (URLs)."""
        extra = {"Services.Keepstore": {"InternalURLs": {u: {} for u in keepstores}}, **extra}
        config, paths = self.config(name, **extra)
        config["Clusters"][self.id].pop("Volumes")
        return await start_node(self.testcase, config, paths)


def keepstore_url(node: RunningNode) -> str:
    return f"http://127.0.0.1:{node.node.getServiceNamed('keepstore').port}/"


def block_file(node: RunningNode, hash: str) -> Path:
    return node.paths["data"] / "keep" / hash[:3] / hash


async def user_token(node: RunningNode) -> str:
    store = node.node.store
    user = await store.create_user(email="u@example.com", is_active=True)
    token = await store.create_token(user.uuid)
    return token.v2


class KeepproxyOverKeepstoresTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.cluster = Cluster(self)
        self.stores = [await self.cluster.keepstore("ks0"), await self.cluster.keepstore("ks1")]
        self.urls = [keepstore_url(n) for n in self.stores]
        self.gw = await self.cluster.gateway(self.urls)
        self.client = http_client(self)
        self.token = await user_token(self.gw)

    def auth(self, **more: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **more}

    def rendezvous(self, hash: str) -> list[RunningNode]:
        """The keepstore nodes in the order spec §4.7 probes them for ``hash``."""
        by_uuid = {service_uuid_from_url(self.cluster.id, u): n for u, n in zip(self.urls, self.stores)}
        return [by_uuid[u] for u in sort_services(hash, list(by_uuid))]

    async def put(self, data: bytes, replicas: int) -> Any:
        r = await self.client.put(
            f"{self.gw.keepproxy_url}/{md5(data)}", data=data,
            headers=self.auth(**{"X-Keep-Desired-Replicas": str(replicas)}),
        )
        return r, await r.text()

    async def test_two_replicas_on_two_keepstores(self) -> None:
        """Desired 2 → both keepstores hold the block, X-Keep-Replicas-Stored: 2,
        and the answer is a locator signed for the client's token."""
        data = os.urandom(3 * MiB + 17)
        r, body = await self.put(data, 2)
        self.assertEqual(r.code, 200, body)
        self.assertEqual(r.headers.getRawHeaders("X-Keep-Replicas-Stored"), ["2"])
        self.assertTrue(body.startswith(f"{md5(data)}+{len(data)}+A"), body)
        for node in self.stores:
            self.assertEqual(block_file(node, md5(data)).read_bytes(), data)
        got = await self.client.get(f"{self.gw.keepproxy_url}/{body}", headers=self.auth())
        self.assertEqual(got.code, 200)
        self.assertEqual(await got.content(), data)

    async def test_replicas_are_written_in_parallel(self) -> None:
        """Both keepstores' PUTs are in flight at the same time (not one after
        the other, as Arvados' keepproxy does with config-based discovery)."""
        spans: dict[int, list[float]] = {}
        for i, node in enumerate(self.stores):
            site = node.node.getServiceNamed("keepstore").site
            started, ended = site.request_started, site.request_ended

            def on_start(request: Any, i: int = i, started: Any = started) -> None:
                if request.method == b"PUT":
                    spans[i] = [reactor.seconds()]
                started(request)

            def on_end(request: Any, i: int = i, ended: Any = ended) -> None:
                if request.method == b"PUT" and i in spans:
                    spans[i].append(reactor.seconds())
                ended(request)

            site.request_started, site.request_ended = on_start, on_end
        data = os.urandom(4 * MiB)
        r, body = await self.put(data, 2)
        self.assertEqual(r.code, 200, body)
        (s0, e0), (s1, e1) = spans[0], spans[1]
        self.assertLess(max(s0, s1), min(e0, e1))  # the two intervals overlap

    async def test_one_replica_goes_to_first_in_rendezvous_order(self) -> None:
        """Desired 1 → the block lands on the heaviest keepstore only (spec §4.7),
        so clients and keep-balance look for it where it is."""
        data = os.urandom(1000)
        r, body = await self.put(data, 1)
        self.assertEqual(r.code, 200, body)
        first, second = self.rendezvous(md5(data))
        self.assertTrue(block_file(first, md5(data)).exists())
        self.assertFalse(block_file(second, md5(data)).exists())

    async def test_read_with_one_keepstore_stopped(self) -> None:
        """With the first keepstore in probe order down, reads fall back to the next."""
        data = os.urandom(2 * MiB)
        r, signed = await self.put(data, 2)
        self.assertEqual(r.code, 200, signed)
        first, _ = self.rendezvous(md5(data))
        await first.node.getServiceNamed("keepstore").stopService()
        got = await self.client.get(f"{self.gw.keepproxy_url}/{signed}", headers=self.auth())
        self.assertEqual(got.code, 200)
        self.assertEqual(await got.content(), data)
        head = await self.client.head(f"{self.gw.keepproxy_url}/{signed}", headers=self.auth())
        self.assertEqual(head.code, 200)
        self.assertEqual(head.headers.getRawHeaders("Content-Length"), [str(len(data))])

    async def test_write_skips_a_stopped_keepstore(self) -> None:
        """Desired 1 with the first keepstore down: the proxy writes to the next."""
        data = os.urandom(5000)
        first, second = self.rendezvous(md5(data))
        await first.node.getServiceNamed("keepstore").stopService()
        r, body = await self.put(data, 1)
        self.assertEqual(r.code, 200, body)
        self.assertEqual(r.headers.getRawHeaders("X-Keep-Replicas-Stored"), ["1"])
        self.assertTrue(block_file(second, md5(data)).exists())

    async def test_three_asked_of_two_keepstores(self) -> None:
        """3 replicas asked of 2 keepstores: 503, and X-Keep-Replicas-Stored says
        the 2 that were written (spec §4.5: the header reports what the
        upstream servers stored, on failure too); the two copies stay."""
        data = os.urandom(4096)
        r, body = await self.put(data, 3)
        self.assertEqual(r.code, 503, body)
        self.assertEqual(r.headers.getRawHeaders("X-Keep-Replicas-Stored"), ["2"])
        self.assertIn("Could not write sufficient replicas", body)
        for node in self.stores:
            self.assertTrue(block_file(node, md5(data)).exists())

    async def test_three_asked_with_one_keepstore_stopped(self) -> None:
        """The issue's sequence: with one of the two keepstores stopped, 3
        replicas asked → 503 with X-Keep-Replicas-Stored: 1 (the one live
        keepstore's copy, which stays)."""
        data = os.urandom(4096)
        stopped, live = self.rendezvous(md5(data))
        await stopped.node.getServiceNamed("keepstore").stopService()
        r, body = await self.put(data, 3)
        self.assertEqual(r.code, 503, body)
        self.assertEqual(r.headers.getRawHeaders("X-Keep-Replicas-Stored"), ["1"])
        self.assertTrue(block_file(live, md5(data)).exists())
        self.assertFalse(block_file(stopped, md5(data)).exists())

    async def test_all_keepstores_down(self) -> None:
        """No keepstore reachable: PUT 503 with 0 stored, GET 502 (an upstream
        failure, not a 500 and not a 404)."""
        data = os.urandom(100)
        r, signed = await self.put(data, 2)
        self.assertEqual(r.code, 200, signed)
        for node in self.stores:
            await node.node.getServiceNamed("keepstore").stopService()
        r2, body = await self.put(os.urandom(100), 1)
        self.assertEqual(r2.code, 503, body)
        self.assertEqual(r2.headers.getRawHeaders("X-Keep-Replicas-Stored"), ["0"])
        got = await self.client.get(f"{self.gw.keepproxy_url}/{signed}", headers=self.auth())
        self.assertEqual(got.code, 502)
        await got.content()

    async def test_missing_block_is_404(self) -> None:
        """Both keepstores answer 404 → the proxy answers 404."""
        data = b"never stored"
        proxy = self.gw.node.getServiceNamed("keepproxy").site.proxy
        loc = sign_locator(f"{md5(data)}+{len(data)}", self.token, self.cluster.key,
                           proxy.signing_ttl, proxy.now())
        got = await self.client.get(f"{self.gw.keepproxy_url}/{loc}", headers=self.auth())
        self.assertEqual(got.code, 404)
        await got.content()

    async def test_memory_stays_bounded(self) -> None:
        """A 24 MiB block through the proxy to two keepstores: the proxy holds at
        most its upload window, and on the way back at most a batch unhashed."""
        data = os.urandom(24 * MiB)
        r, signed = await self.put(data, 2)
        self.assertEqual(r.code, 200, signed)
        proxy = self.gw.node.getServiceNamed("keepproxy").site.proxy
        window = 8 * MiB  # ArvNode.Keepproxy.UploadWindow default
        self.assertLessEqual(proxy.upload_stats.max_held, window + 2 * 65536)
        self.assertEqual(proxy.upload_stats.held, 0)
        got = await self.client.get(f"{self.gw.keepproxy_url}/{signed}", headers=self.auth())
        self.assertEqual(got.code, 200)
        self.assertEqual(md5(await got.content()), md5(data))
        self.assertLessEqual(proxy.relay_stats.max_unhashed, window + 2 * 65536)

    async def test_index_through_the_proxy(self) -> None:
        """GET /index with the SystemRootToken lists the blocks of both keepstores."""
        data = os.urandom(10)
        r, _ = await self.put(data, 2)
        self.assertEqual(r.code, 200)
        got = await self.client.get(f"{self.gw.keepproxy_url}/index",
                                    headers={"Authorization": f"Bearer {self.cluster.root}"})
        self.assertEqual(got.code, 200)
        text = await got.text()
        self.assertEqual(text.count(f"{md5(data)}+10 "), 2, text)


class LoopTests(TestCase):
    timeout = 60

    async def test_keepproxy_named_as_keepstore_is_a_loop(self) -> None:
        """A gateway whose keepstore list names another keepproxy: that proxy sees
        Via: keepproxy and refuses; the client gets 503 / 502 at once, not a hang."""
        cluster = Cluster(self)
        other = await cluster.gateway([], name="other")
        gw = await cluster.gateway([other.keepproxy_url + "/"])
        token = await user_token(gw)
        client = http_client(self)
        data = b"loop"
        r = await client.put(f"{gw.keepproxy_url}/{md5(data)}", data=data,
                             headers={"Authorization": f"Bearer {token}"})
        self.assertEqual(r.code, 503)
        self.assertEqual(r.headers.getRawHeaders("X-Keep-Replicas-Stored"), ["0"])
        await r.text()
        proxy = gw.node.getServiceNamed("keepproxy").site.proxy
        loc = sign_locator(f"{md5(data)}+4", token, cluster.key, proxy.signing_ttl, proxy.now())
        got = await client.get(f"{gw.keepproxy_url}/{loc}", headers={"Authorization": f"Bearer {token}"})
        self.assertEqual(got.code, 502)
        self.assertIn("loop detected", await got.text())


class OneTruthTests(TestCase):
    """Two gateway nodes on one PostgreSQL database and one block directory."""

    timeout = 120

    async def setUp(self) -> None:
        self.db = fresh_database(self)
        self.cluster = Cluster(self)
        shared_keep = Path(self.mktemp()) / "shared-keep"
        volume = {
            f"{self.cluster.id}-nyw5e-000000000000000": {
                "Driver": "Directory", "DriverParameters": {"Root": str(shared_keep)},
                "Replication": 1,
            }
        }
        self.nodes = []
        for name in ("a", "b"):
            config, paths = self.cluster.config(
                name, Volumes=volume, **{"ArvNode.TokenCacheTTL": "1s"}
            )
            config["Clusters"][self.cluster.id]["PostgreSQL"] = {"Connection": self.db}
            self.nodes.append(await start_node(self, config, paths))
        self.client = http_client(self)

    async def test_block_put_through_one_read_through_other(self) -> None:
        a, b = self.nodes
        token = await user_token(a)
        data = os.urandom(MiB)
        r = await self.client.put(f"{a.keepproxy_url}/{md5(data)}", data=data,
                                  headers={"Authorization": f"Bearer {token}"})
        signed = await r.text()
        self.assertEqual(r.code, 200, signed)
        got = await self.client.get(f"{b.keepproxy_url}/{signed}",
                                    headers={"Authorization": f"Bearer {token}"})
        self.assertEqual(got.code, 200)
        self.assertEqual(await got.content(), data)

    async def test_token_revoked_through_one_refused_by_other(self) -> None:
        """Revoked on node a (store + a's authenticator) → node b refuses it
        within its TokenCacheTTL (1 s here), although b had it cached."""
        a, b = self.nodes
        user = await a.node.store.create_user(email="r@example.com", is_active=True)
        record = await a.node.store.create_token(user.uuid)
        token = record.v2
        data = b"one truth"
        headers = {"Authorization": f"Bearer {token}"}
        r = await self.client.put(f"{b.keepproxy_url}/{md5(data)}", data=data, headers=headers)
        self.assertEqual(r.code, 200, await r.text())  # b has the token cached now
        self.assertTrue(await a.node.authenticator.revoke(record.uuid))
        revoked_at = b.node.getServiceNamed("keepproxy").site.clock.seconds()
        r = await self.client.put(f"{a.keepproxy_url}/{md5(data)}", data=data, headers=headers)
        self.assertEqual(r.code, 403)  # the revoking node: at once
        await r.text()
        codes: list[int] = []

        async def refused_by_b() -> None:
            resp = await self.client.put(f"{b.keepproxy_url}/{md5(data)}", data=data, headers=headers)
            await resp.text()
            codes.append(resp.code)

        done = []

        def check() -> bool:
            if codes and codes[-1] == 403:
                return True
            if not done or done[-1].called:
                done.append(Deferred.fromCoroutine(refused_by_b()))
            return False

        await wait_for(check, timeout=30, interval=0.1)
        elapsed = b.node.getServiceNamed("keepproxy").site.clock.seconds() - revoked_at
        # The bound is the TTL; allow for a request in flight on a loaded machine.
        self.assertLess(elapsed, 1.0 + 5.0)
        self.assertTrue(all(c in (200, 403) for c in codes), codes)


class RegisteredKeepServiceTests(TestCase):
    """A gateway with no volumes and no Services.Keepstore uses keepstores that
    an admin registered as keep_services of type disk (Arvados'
    ``arv keep_service create --service-type disk``), from its next start."""

    timeout = 120

    async def test_disk_keep_service_becomes_upstream(self) -> None:
        cluster = Cluster(self)
        ks = await cluster.keepstore("ks")
        port = ks.node.getServiceNamed("keepstore").port
        config, paths = cluster.config("gw")
        config["Clusters"][cluster.id].pop("Volumes")
        gw = await start_node(self, config, paths)
        api = http_client(self, paths["ca"])
        root = {"Authorization": f"Bearer {cluster.root}", "Content-Type": "application/json"}
        r = await api.post(f"{gw.controller_url}/arvados/v1/keep_services", headers=root,
                           data=json.dumps({"service_host": "127.0.0.1", "service_port": port,
                                            "service_ssl_flag": False, "service_type": "disk"}).encode())
        record = json.loads(await r.text())
        self.assertEqual(r.code, 200, record)
        token = await user_token(gw)
        client = http_client(self)
        data = os.urandom(MiB + 3)
        headers = {"Authorization": f"Bearer {token}"}
        r = await client.put(f"{gw.keepproxy_url}/{md5(data)}", data=data, headers=headers)
        self.assertEqual(r.code, 503, "no volume yet: nowhere to write")
        await r.text()

        await gw.node.stopService()  # restart the gateway on the same state
        gw2 = await start_node(self, config, paths)
        r = await client.put(f"{gw2.keepproxy_url}/{md5(data)}", data=data, headers=headers)
        signed = await r.text()
        self.assertEqual(r.code, 200, signed)
        self.assertTrue(block_file(ks, md5(data)).exists())
        r = await client.get(f"{gw2.keepproxy_url}/{signed.strip()}", headers=headers)
        self.assertEqual((r.code, await r.content()), (200, data))
