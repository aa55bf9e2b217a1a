"""Several nodes, one truth: two gateway nodes on different ports that share
one PostgreSQL database and one S3 bucket (a real moto server on loopback).

Issue 6 asks that they serve the same users, tokens and collections, that a
block PUT through one is read through the other, and that a token revoked
through one is refused by the other on its next request once that node's
token cache (``ArvNode.TokenCacheTTL``, the written-down staleness bound)
has expired. Nothing here is faked: both nodes are whole arvnode nodes
started in this process, the database is PostgreSQL, the bucket is moto
with signature checking on.
"""
from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.defer import Deferred

from arvnode.keep.manifest import portable_data_hash
from tests.helpers import http_client, start_node, wait_for
from tests.integration.test_keepstores import Cluster, md5
from tests.keep.test_s3_volume import MotoTestCase
from tests.pgfixture import fresh_database

MiB = 1 << 20


class OneTruthOnBucketTests(MotoTestCase):
    timeout = 300

    async def setUp(self) -> None:
        db = fresh_database(self)
        self.cluster = Cluster(self)
        bucket = self.bucket()
        volume = {
            f"{self.cluster.id}-nyw5e-000000000000000": {
                "Driver": "S3",
                "DriverParameters": self.params(bucket),
                "Replication": 1,
            }
        }
        self.nodes = []
        for name in ("a", "b"):
            config, paths = self.cluster.config(name, Volumes=volume, **{"ArvNode.TokenCacheTTL": "1s"})
            config["Clusters"][self.cluster.id]["PostgreSQL"] = {"Connection": db}
            self.nodes.append(await start_node(self, config, paths))
        self.client = http_client(self)
        a = self.nodes[0]
        self.user = await a.node.store.create_user(email="one@example.com", is_active=True)
        self.record = await a.node.store.create_token(self.user.uuid)
        self.headers = {"Authorization": f"Bearer {self.record.v2}"}

    async def put_block(self, node: Any, data: bytes) -> str:
        r = await self.client.put(f"{node.keepproxy_url}/{md5(data)}", data=data, headers=self.headers)
        body = await r.text()
        self.assertEqual(r.code, 200, body)
        return body.strip()

    async def api(self, node: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        kw: dict[str, Any] = {"headers": {**self.headers, "Content-Type": "application/json"}}
        if body is not None:
            kw["data"] = json.dumps(body).encode()
        # Each test node has its own CA (tests/helpers.make_cluster_config).
        client = http_client(self, node.paths["ca"])
        r = await client.request(method, f"{node.controller_url}/arvados/v1/{path}", **kw)
        return r.code, json.loads(await r.text())

    async def test_block_and_collection_through_either_node(self) -> None:
        """A block PUT through a is read through b; a collection saved through
        b (with a's signature) reads back through a with the same PDH."""
        a, b = self.nodes
        data = os.urandom(3 * MiB + 7)
        signed = await self.put_block(a, data)
        got = await self.client.get(f"{b.keepproxy_url}/{signed}", headers=self.headers)
        self.assertEqual(got.code, 200)
        self.assertEqual(await got.content(), data)

        manifest = f". {signed} 0:{len(data)}:blob.bin\n"
        code, created = await self.api(b, "POST", "collections", {"manifest_text": manifest, "name": "shared"})
        self.assertEqual(code, 200, created)
        expected_pdh = portable_data_hash(f". {md5(data)}+{len(data)} 0:{len(data)}:blob.bin\n")
        self.assertEqual(created["portable_data_hash"], expected_pdh)
        code, fetched = await self.api(a, "GET", f"collections/{created['uuid']}")
        self.assertEqual(code, 200, fetched)
        self.assertEqual(fetched["portable_data_hash"], expected_pdh)
        # The manifest a signs is good on b's keepproxy: one signing key, one truth.
        locator = fetched["manifest_text"].split()[1]
        got = await self.client.get(f"{b.keepproxy_url}/{locator}", headers=self.headers)
        self.assertEqual((got.code, len(await got.content())), (200, len(data)))

    async def test_token_revoked_through_one_refused_by_other(self) -> None:
        """Revoked through a's API: a refuses it at once; b, which had it
        cached, refuses it within its TokenCacheTTL (1 s here)."""
        a, b = self.nodes
        code, me = await self.api(b, "GET", "users/current")
        self.assertEqual((code, me["uuid"]), (200, self.user.uuid))  # cached on b now

        admin = {"Authorization": f"Bearer {self.cluster.root}"}
        r = await http_client(self, a.paths["ca"]).delete(
            f"{a.controller_url}/arvados/v1/api_client_authorizations/{self.record.uuid}", headers=admin)
        self.assertEqual(r.code, 200, await r.text())
        code, _ = await self.api(a, "GET", "users/current")
        self.assertEqual(code, 401)

        codes: list[int] = []
        pending: list[Deferred[None]] = []

        async def ask_b() -> None:
            c, _ = await self.api(b, "GET", "users/current")
            codes.append(c)

        def refused() -> bool:
            if codes and codes[-1] == 401:
                return True
            if not pending or pending[-1].called:
                pending.append(Deferred.fromCoroutine(ask_b()))
            return False

        await wait_for(refused, timeout=30, interval=0.1)
        self.assertTrue(set(codes) <= {200, 401}, codes)
        # The same token is refused by b's keepproxy too.
        r = await self.client.put(f"{b.keepproxy_url}/{md5(b'x')}", data=b"x", headers=self.headers)
        self.assertEqual(r.code, 403)
        await r.text()
