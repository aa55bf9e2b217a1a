"""Two keepstore wire facts end to end: the client's ``X-Request-Id`` reaches
the upstream keepstores (spec §4.2, §4.7), and full volumes answer 507
``insufficient storage`` (spec §5.2; through a keepproxy, 503 as Arvados'
keepproxy answers when it runs out of servers, §4.5/§4.7).

Every node is a real arvnode on loopback ports. "Full" is a real filesystem:
a 1 MiB tmpfs mounted over the volume's root, which needs the right to mount
(CI and this machine type run the tests as root). Nothing is injected: the
ENOSPC comes from the kernel.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from arvnode.keep.locator import sign_locator
from arvnode.keep.rendezvous import sort_services
from arvnode.keep.volume import VolumeFull
from arvnode.keep.volumes.upstream import UpstreamKeepstore
from tests.helpers import RunningNode, http_client, start_node, wait_for
from tests.http.rawclient import connect
from tests.integration.test_keepstores import Cluster, keepstore_url, user_token

KiB = 1 << 10
MiB = 1 << 20
TTL = 336 * 3600


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class AccessLog:
    """The access-log events (``arvnode.access``) of every node in this process."""

    def __init__(self, testcase: TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self._observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "arvnode.access":
            self.events.append(event)

    def seen(self, service: str, method: str) -> list[tuple[str, int]]:
        """``(request_id, status)`` of each logged ``method`` request of ``service``."""
        return [
            (e["request_id"], e["status"])
            for e in self.events
            if e.get("service") == service and e.get("method") == method
        ]


def mount_small_fs(testcase: TestCase, path: Path, size: str = "1m") -> None:
    """A real ``size`` tmpfs at ``path``, unmounted after the test (and
    after the nodes started later stopped: cleanups run last-in first-out)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
    )
    if done.returncode != 0:
        testcase.fail(
            f"cannot mount a {size} tmpfs at {path} (these tests need the right to mount,"
            f" as CI has running as root): {done.stderr.decode(errors='replace')}"
        )
    testcase.addCleanup(subprocess.run, ["umount", str(path)], check=True)


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


class RequestIdTests(TestCase):
    """The keepproxy passes its request's id to the upstream keepstore."""

    timeout = 120

    async def setUp(self) -> None:
        self.log = AccessLog(self)
        self.cluster = Cluster(self)
        self.store = await self.cluster.keepstore("ks")
        self.gw = await self.cluster.gateway([keepstore_url(self.store)])
        self.client = http_client(self)
        self.token = await user_token(self.gw)

    def auth(self, **more: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **more}

    async def seen_upstream(self, method: str, request_id: str) -> None:
        """The keepstore logged exactly one ``method``, and with ``request_id``."""
        await wait_for(lambda: self.log.seen("keepstore", method) != [])
        self.assertEqual([rid for rid, _ in self.log.seen("keepstore", method)], [request_id])

    async def test_client_request_id_reaches_the_keepstore(self) -> None:
        """PUT, GET and HEAD with the client's ``X-Request-Id``: the gateway
        echoes it, and the keepstore's access log names the same request."""
        data = os.urandom(300 * KiB)
        r = await self.client.put(
            f"{self.gw.keepproxy_url}/{md5(data)}", data=data,
            headers=self.auth(**{"X-Request-Id": "req-abcput0000000000001"}),
        )
        signed = await r.text()
        self.assertEqual(r.code, 200, signed)
        self.assertEqual(r.headers.getRawHeaders("X-Request-Id"), ["req-abcput0000000000001"])
        await self.seen_upstream("PUT", "req-abcput0000000000001")

        r = await self.client.get(
            f"{self.gw.keepproxy_url}/{signed}",
            headers=self.auth(**{"X-Request-Id": "req-abcget0000000000001"}),
        )
        self.assertEqual(await r.content(), data)
        self.assertEqual(r.headers.getRawHeaders("X-Request-Id"), ["req-abcget0000000000001"])
        await self.seen_upstream("GET", "req-abcget0000000000001")

        r = await self.client.head(
            f"{self.gw.keepproxy_url}/{signed}",
            headers=self.auth(**{"X-Request-Id": "req-abchead000000000001"}),
        )
        self.assertEqual(r.code, 200)
        await self.seen_upstream("HEAD", "req-abchead000000000001")

    async def test_generated_request_id_reaches_the_keepstore(self) -> None:
        """Without a client id, the keepstore sees the id the gateway made up
        and answered with (not one of its own)."""
        data = os.urandom(1000)
        r = await self.client.put(f"{self.gw.keepproxy_url}/{md5(data)}", data=data, headers=self.auth())
        signed = await r.text()
        self.assertEqual(r.code, 200, signed)
        (put_id,) = r.headers.getRawHeaders("X-Request-Id")
        self.assertTrue(put_id.startswith("req-"), put_id)
        await self.seen_upstream("PUT", put_id)

        r = await self.client.get(f"{self.gw.keepproxy_url}/{signed}", headers=self.auth())
        self.assertEqual(await r.content(), data)
        (get_id,) = r.headers.getRawHeaders("X-Request-Id")
        self.assertNotEqual(get_id, put_id)
        await self.seen_upstream("GET", get_id)


class FullVolumeTests(TestCase):
    """The keepstore role: 507 when every writable volume is full, 503 when
    some failed otherwise; a full volume keeps no partial or temp file."""

    timeout = 120

    async def setUp(self) -> None:
        self.log = AccessLog(self)
        self.cluster = Cluster(self)
        self.client = http_client(self)

    async def keepstore(self, roots: dict[str, str]) -> tuple[RunningNode, dict[str, Path]]:
        """A keepstore node with one directory volume per ``roots`` entry
        (name → "full" on a 1 MiB tmpfs, or "plain"); returns the node and
        each volume's root by name."""
        config, paths = self.cluster.config(
            "ks", **{"Services.Keepstore": {"InternalURLs": {"http://127.0.0.1:0/": {}}}}
        )
        volumes: dict[str, Any] = {}
        self.uuids: dict[str, str] = {}
        where: dict[str, Path] = {}
        for i, (name, kind) in enumerate(sorted(roots.items())):
            root = paths["data"] / f"keep-{name}"
            if kind == "full":
                mount_small_fs(self, root)
            uuid = f"{self.cluster.id}-nyw5e-{i:015d}"
            volumes[uuid] = {"Driver": "Directory", "DriverParameters": {"Root": str(root)},
                             "Replication": 1}
            self.uuids[name] = uuid
            where[name] = root
        config["Clusters"][self.cluster.id]["Volumes"] = volumes
        node = await start_node(self, config, paths)
        return node, where

    async def put(self, node: RunningNode, data: bytes) -> tuple[int, str]:
        r = await self.client.put(f"{keepstore_url(node)}{md5(data)}", data=data)
        return r.code, await r.text()

    async def test_full_volume_answers_507(self) -> None:
        """A block larger than the free space: 507 ``insufficient storage``,
        before any byte is written (nothing left under the root); a block
        that fits is still taken."""
        node, roots = await self.keepstore({"a": "full"})
        code, body = await self.put(node, os.urandom(2 * MiB))
        self.assertEqual((code, body), (507, "insufficient storage\n"))
        self.assertEqual(files_under(roots["a"]), [])
        small = os.urandom(1000)
        code, body = await self.put(node, small)
        self.assertEqual(code, 200, body)
        self.assertEqual(files_under(roots["a"]), [f"{md5(small)[:3]}/{md5(small)}"])

    async def test_disk_fills_during_the_write(self) -> None:
        """The disk fills between the open and the body (ENOSPC mid-write):
        507, and the temp file is gone (nothing partial is readable)."""
        node, roots = await self.keepstore({"a": "full"})
        data = os.urandom(600 * KiB)
        conn = await connect(node.node.getServiceNamed("keepstore").port)
        self.addCleanup(conn.transport.loseConnection)
        conn.send(
            f"PUT /{md5(data)} HTTP/1.1\r\nHost: ks\r\nContent-Length: {len(data)}\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        first = await conn.read_response()
        assert first is not None
        self.assertEqual(first.status, 100)  # the writer is open: space was checked
        (roots["a"] / "filler").write_bytes(b"\0" * (700 * KiB))
        conn.send(data)
        final = await conn.read_response()
        assert final is not None
        self.assertEqual((final.status, final.body), (507, b"insufficient storage\n"))
        self.assertEqual(files_under(roots["a"]), ["filler"])
        signed = sign_locator(
            f"{md5(data)}+{len(data)}", self.cluster.root, self.cluster.key, TTL, reactor.seconds()
        )
        r = await self.client.get(
            f"{keepstore_url(node)}{signed}", headers={"Authorization": f"Bearer {self.cluster.root}"}
        )
        self.assertEqual(r.code, 404)

    async def test_full_and_broken_answers_503(self) -> None:
        """One volume full, the other failing for another reason: 503
        ``volume unavailable`` (not every volume was full)."""
        node, roots = await self.keepstore({"a": "full", "b": "plain"})
        os.rmdir(roots["b"])
        roots["b"].write_bytes(b"")  # the root turned into a file: not "full"
        code, body = await self.put(node, os.urandom(2 * MiB))
        self.assertEqual((code, body), (503, "volume unavailable\n"))
        self.assertEqual(files_under(roots["a"]), [])

    async def test_full_volume_is_passed_over(self) -> None:
        """The first volume in rendezvous order is full: the block goes to the
        next one (the space is checked at open, before the body streams)."""
        node, roots = await self.keepstore({"a": "full", "b": "plain"})
        while True:
            data = os.urandom(2 * MiB)
            if sort_services(md5(data), list(self.uuids.values()))[0] == self.uuids["a"]:
                break
        code, body = await self.put(node, data)
        self.assertEqual(code, 200, body)
        self.assertEqual((roots["b"] / md5(data)[:3] / md5(data)).read_bytes(), data)
        self.assertEqual(files_under(roots["a"]), [])

    async def test_keepproxy_over_a_full_keepstore(self) -> None:
        """The gateway's only keepstore answers 507: the gateway answers 503
        ``Could not write sufficient replicas`` naming the 507 (Arvados'
        keepproxy, out of servers), with ``X-Keep-Replicas-Stored: 0``, and
        asked that keepstore once (507 is not retried)."""
        node, roots = await self.keepstore({"a": "full"})
        gw = await self.cluster.gateway([keepstore_url(node)])
        token = await user_token(gw)
        data = os.urandom(2 * MiB)
        r = await self.client.put(
            f"{gw.keepproxy_url}/{md5(data)}", data=data, headers={"Authorization": f"Bearer {token}"}
        )
        body = await r.text()
        self.assertEqual(r.code, 503, body)
        self.assertIn("Could not write sufficient replicas", body)
        self.assertIn("507", body)
        self.assertEqual(r.headers.getRawHeaders("X-Keep-Replicas-Stored"), ["0"])
        (request_id,) = r.headers.getRawHeaders("X-Request-Id")
        self.assertEqual(self.log.seen("keepstore", "PUT"), [(request_id, 507)])
        self.assertEqual(files_under(roots["a"]), [])

    async def test_upstream_volume_counts_507_as_full(self) -> None:
        """The upstream-keepstore volume turns a keepstore's 507 into
        VolumeFull (however early it comes: at open, on a write or at commit),
        so a keepstore role over it would answer 507 too."""
        node, _ = await self.keepstore({"a": "full"})
        volume = UpstreamKeepstore(
            f"{self.cluster.id}-bi6l4-000000000000000", keepstore_url(node),
            reactor=reactor, clock=reactor, token=self.cluster.root,
            signing_key=self.cluster.key, signing_ttl=TTL,
        )
        self.addCleanup(volume.stop)
        data = os.urandom(2 * MiB)

        async def put() -> None:
            writer = await volume.open_write(md5(data), len(data), request_id="req-full0000000000000001")
            try:
                await writer.write(data)
                await writer.commit()
            finally:
                await writer.abort()

        await self.assertFailure(Deferred.fromCoroutine(put()), VolumeFull)
        self.assertEqual(self.log.seen("keepstore", "PUT"), [("req-full0000000000000001", 507)])
