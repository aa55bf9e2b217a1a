"""The keepstore API (spec §5) of a node, the upstream-keepstore volume that
talks to it, and the rule that decides a node's keepstore role.

A real node with the keepstore role listens on a loopback port; requests are
real HTTP (treq, or raw bytes where the exact exchange matters).
"""
from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

from attrs import define, field
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from arvnode.config import URL, ServiceConfig
from arvnode.keep.keepstore import RoleError, keepstore_role
from arvnode.keep.locator import sign_locator
from arvnode.keep.volume import IVolume, VolumeError
from arvnode.keep.volumes.upstream import UpstreamKeepstore
from tests.helpers import RunningNode, http_client, make_cluster_config, start_node, wait_for
from tests.http.rawclient import connect

TTL = 336 * 3600


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


async def start_keepstore(testcase: TestCase, **extra: Any) -> RunningNode:
    rng = random.Random()
    config, paths = make_cluster_config(
        Path(testcase.mktemp()),
        rng=rng,
        extra={"Services.Keepstore": {"InternalURLs": {"http://127.0.0.1:0/": {}}}, **extra},
    )
    return await start_node(testcase, config, paths)


class KeepstoreAPITests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.node = await start_keepstore(self)
        self.port = self.node.node.getServiceNamed("keepstore").port
        self.base = f"http://127.0.0.1:{self.port}"
        self.key = self.node.section["Collections"]["BlobSigningKey"]
        self.client = http_client(self)

    def sign(self, data: bytes, token: str, now: float | None = None, size: bool = True) -> str:
        loc = f"{md5(data)}+{len(data)}" if size else md5(data)
        return sign_locator(loc, token, self.key, TTL, reactor.seconds() if now is None else now)

    def stored(self, data: bytes) -> Path:
        h = md5(data)
        return self.node.paths["data"] / "keep" / h[:3] / h

    async def put(self, data: bytes, path: str | None = None, **headers: str) -> tuple[Any, str]:
        r = await self.client.put(f"{self.base}/{path or md5(data)}", data=data, headers=headers)
        return r, await r.text()

    async def test_put_needs_no_token_and_answers_like_keepstore(self) -> None:
        """PUT without a token stores the block (keepstore trusts its network) and
        answers ``hash+size\\n`` with the replica and class headers."""
        data = os.urandom(100_000)
        r, body = await self.put(data)
        self.assertEqual(r.code, 200, body)
        self.assertEqual(body, f"{md5(data)}+{len(data)}\n")
        self.assertEqual(r.headers.getRawHeaders("X-Keep-Replicas-Stored"), ["1"])
        self.assertEqual(r.headers.getRawHeaders("X-Keep-Storage-Classes-Confirmed"), ["default=1"])
        self.assertEqual(self.stored(data).read_bytes(), data)

    async def test_put_with_token_returns_signed_locator(self) -> None:
        """With a token the answer is signed for it, and that signature reads back."""
        data = b"signed please"
        r, body = await self.put(data, Authorization="Bearer sometoken")
        self.assertEqual(r.code, 200, body)
        self.assertTrue(body.endswith("\n"))
        loc = body.strip()
        self.assertRegex(loc, rf"^{md5(data)}\+{len(data)}\+A[0-9a-f]{{40}}@[0-9a-f]{{8}}$")
        got = await self.client.get(f"{self.base}/{loc}", headers={"Authorization": "Bearer sometoken"})
        self.assertEqual(got.code, 200)
        self.assertEqual(await got.content(), data)

    async def test_put_hash_mismatch_is_400_and_keeps_nothing(self) -> None:
        data = b"what was sent"
        r, body = await self.put(data, path=md5(b"something else"))
        self.assertEqual(r.code, 400)
        self.assertIn(f"content hash {md5(data)} did not match specified locator", body)
        keep = self.node.paths["data"] / "keep"
        self.assertEqual([p for p in keep.rglob("*") if p.is_file()], [])

    async def test_put_size_hint_mismatch_is_400(self) -> None:
        data = b"12345"
        r, body = await self.put(data, path=f"{md5(data)}+6")
        self.assertEqual(r.code, 400)
        self.assertIn("size hint", body)

    async def test_put_limits_before_the_body(self) -> None:
        """No Content-Length → 411; over 64 MiB → 413; neither reads the body."""
        c = await connect(self.port)
        self.addCleanup(c.transport.loseConnection)
        c.send(f"PUT /{md5(b'')} HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        response = await c.read_response()
        assert response is not None
        self.assertEqual(response.status, 411)
        c2 = await connect(self.port)
        self.addCleanup(c2.transport.loseConnection)
        response, got_continue = await c2.request(
            "PUT", f"/{md5(b'x')}", {"Content-Length": str(64 * 1024 * 1024 + 1)},
            None, expect_continue=True,
        )
        assert response is not None
        self.assertEqual(response.status, 413)
        self.assertFalse(got_continue)

    async def test_get_signature_checks(self) -> None:
        """As keepstore: no token 401, bad signature 400, expired 401, good 200,
        also without a size hint (arvnode's superset); HEAD gives the size."""
        data = os.urandom(5000)
        r, _ = await self.put(data)
        self.assertEqual(r.code, 200)
        good = self.sign(data, "tok")
        cases = [
            (good, {}, 401, "no token provided"),
            (good, {"Authorization": "Bearer other"}, 400, "invalid signature"),
            (f"{md5(data)}+{len(data)}", {"Authorization": "Bearer tok"}, 400, "invalid signature"),
            (self.sign(data, "tok", now=reactor.seconds() - TTL - 10), {"Authorization": "Bearer tok"},
             401, "expired signature"),
            (f"{md5(data)}+zz", {"Authorization": "Bearer tok"}, 400, "invalid locator"),
        ]
        for loc, headers, code, text in cases:
            got = await self.client.get(f"{self.base}/{loc}", headers=headers)
            self.assertEqual(got.code, code, loc)
            self.assertIn(text, await got.text())
        for loc in (good, self.sign(data, "tok", size=False)):
            got = await self.client.get(f"{self.base}/{loc}?api_token=tok")
            self.assertEqual(got.code, 200)
            self.assertEqual(await got.content(), data)
        head = await self.client.head(f"{self.base}/{good}", headers={"Authorization": "Bearer tok"})
        self.assertEqual(head.code, 200)
        self.assertEqual(head.headers.getRawHeaders("Content-Length"), [str(len(data))])

    async def test_missing_block_is_404_and_via_keepproxy_is_fine(self) -> None:
        """A keepproxy's request (Via: ... keepproxy) is this API's normal caller."""
        loc = self.sign(b"absent", "tok")
        got = await self.client.get(f"{self.base}/{loc}", headers={
            "Authorization": "Bearer tok", "Via": "HTTP/1.1 keepproxy"})
        self.assertEqual(got.code, 404)
        await got.content()

    async def test_index_needs_the_system_root_token(self) -> None:
        data = b"indexed"
        r, _ = await self.put(data)
        self.assertEqual(r.code, 200)
        got = await self.client.get(f"{self.base}/index")
        self.assertEqual(got.code, 401)
        await got.content()
        got = await self.client.get(f"{self.base}/index", headers={"Authorization": "Bearer nope"})
        self.assertEqual(got.code, 403)
        await got.content()
        root = {"Authorization": f"Bearer {self.node.root_token}"}
        for path in ("/index", f"/index/{md5(data)[:3]}", f"/index?prefix={md5(data)[:5]}"):
            got = await self.client.get(self.base + path, headers=root)
            self.assertEqual(got.code, 200, path)
            text = await got.text()
            self.assertRegex(text, rf"^{md5(data)}\+7 \d+\n\n$")
        got = await self.client.get(f"{self.base}/index/fff", headers=root)
        text = await got.text()
        self.assertEqual(text, "\n" if not md5(data).startswith("fff") else text)

    async def test_admin_delete_of_an_absent_block_and_unknown_routes(self) -> None:
        """DELETE (an admin route; tests/keep/test_block_trash.py has the rest)
        of a block no volume has is 404; an unknown route is 400."""
        got = await self.client.request("DELETE", f"{self.base}/{md5(b'x')}",
                                        headers={"Authorization": f"Bearer {self.node.root_token}"})
        self.assertEqual(got.code, 404)
        await got.content()
        got = await self.client.get(f"{self.base}/nonsense")
        self.assertEqual(got.code, 400)
        await got.content()


@define
class _Collector:
    """An IConsumer that collects what a reader produces."""

    chunks: list[bytes] = field(factory=list)
    producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.chunks.append(data)


class UpstreamVolumeTests(TestCase):
    """The upstream volume against a real keepstore node."""

    timeout = 60

    async def setUp(self) -> None:
        self.node = await start_keepstore(self)
        port = self.node.node.getServiceNamed("keepstore").port
        self.volume = UpstreamKeepstore(
            "zzzzz-bi6l4-000000000000000", f"http://127.0.0.1:{port}/",
            reactor=reactor, clock=reactor, token=self.node.root_token,
            signing_key=self.node.section["Collections"]["BlobSigningKey"], signing_ttl=TTL,
        )
        self.addCleanup(self.volume.stop)

    async def write(self, data: bytes, chunk: int = 65536) -> Any:
        writer = await self.volume.open_write(md5(data), len(data))
        for i in range(0, len(data), chunk):
            await writer.write(data[i:i + chunk])
        return writer

    def test_provides_ivolume(self) -> None:
        verifyObject(IVolume, self.volume)

    async def test_produce_after_the_whole_body_arrived(self) -> None:
        """A reader whose GET answer ended before ``produce`` (the caller
        did other work first, as a pull does) still returns a Deferred that
        fires after the data (it used to return None)."""
        data = os.urandom(1000)
        writer = await self.write(data)
        await writer.commit()
        reader = await self.volume.open_read(md5(data))
        await wait_for(lambda: reader._end is not None)
        sink = _Collector()
        done = reader.produce(sink)
        self.assertIsNotNone(done)
        await done
        self.assertEqual(b"".join(sink.chunks), data)

    async def test_write_stat_read_index(self) -> None:
        data = os.urandom(300_000)
        writer = await self.write(data)
        await writer.commit()
        self.assertEqual(writer.replicas_reported, 1)
        self.assertEqual(await self.volume.stat(md5(data)), len(data))
        self.assertIsNone(await self.volume.stat(md5(b"nope")))
        self.assertIsNone(await self.volume.open_read(md5(b"nope")))
        reader = await self.volume.open_read(md5(data))
        self.assertEqual(reader.size, len(data))
        sink = _Collector()
        await reader.produce(sink)
        self.assertEqual(b"".join(sink.chunks), data)
        self.assertEqual([(h, s) for h, s, _ in await self.volume.index(md5(data)[:2])],
                         [(md5(data), len(data))])

    async def test_nothing_lands_before_commit(self) -> None:
        """All bytes sent but no commit: the keepstore has nothing; after abort
        it still has nothing (no temp file left either)."""
        data = os.urandom(200_000)
        writer = await self.write(data)
        keep = self.node.paths["data"] / "keep"
        site = self.node.node.getServiceNamed("keepstore").site
        # The keepstore got all but the last byte and is waiting for it.
        await wait_for(lambda: any(r.bytes_in == len(data) - 1 for r in site.inflight))
        self.assertIsNone(await self.volume.stat(md5(data)))
        await writer.abort()
        await wait_for(lambda: not site.inflight, timeout=10)
        self.assertEqual([p for p in keep.rglob("*") if p.is_file()], [])

    async def test_keepstore_down_fails_open(self) -> None:
        """A keepstore that does not answer fails open_write/stat/open_read with a
        VolumeError (the proxy then tries the next one)."""
        await self.node.node.getServiceNamed("keepstore").stopService()
        with self.assertRaises(VolumeError):
            await self.volume.open_write(md5(b"x"), 1)
        with self.assertRaises(VolumeError):
            await self.volume.stat(md5(b"x"))
        with self.assertRaises(VolumeError):
            await self.volume.open_read(md5(b"x"))

    async def test_refused_put_is_a_volume_error(self) -> None:
        """A body whose md5 is not the hash: the keepstore's 400 becomes a
        VolumeError at commit, naming the keepstore and its reason."""
        data = b"not what the name says"
        writer = await self.volume.open_write(md5(b"other"), len(data))
        await writer.write(data)
        with self.assertRaises(VolumeError) as cm:
            await writer.commit()
        self.assertIn("HTTP 400", str(cm.exception))
        self.assertIn("did not match", str(cm.exception))


class RoleRuleTests(SynchronousTestCase):
    """Which keepstore a node is (docs/scale-out.md)."""

    def service(self, *urls: str) -> ServiceConfig:
        return ServiceConfig(internal_urls=tuple(URL.parse(u) for u in urls))

    def test_no_volumes_never_a_keepstore(self) -> None:
        svc = self.service("http://127.0.0.1:25107/", "http://127.0.0.1:25108/")
        own, ups = keepstore_role(svc, has_local_volumes=False)
        self.assertIsNone(own)
        self.assertEqual(len(ups), 2)

    def test_one_local_entry_is_own(self) -> None:
        svc = self.service("http://10.99.0.1:25107/", "http://127.0.0.1:25107/")
        own, ups = keepstore_role(svc, has_local_volumes=True,
                                  is_local=lambda h: h == "127.0.0.1")
        self.assertEqual(str(own), "http://127.0.0.1:25107/")
        self.assertEqual([str(u) for u in ups], ["http://10.99.0.1:25107/"])

    def test_several_local_entries_need_a_choice(self) -> None:
        svc = self.service("http://127.0.0.1:25107/", "http://127.0.0.1:25108/")
        with self.assertRaises(RoleError) as cm:
            keepstore_role(svc, has_local_volumes=True)
        self.assertIn("ARVADOS_SERVICE_INTERNAL_URL", str(cm.exception))
        own, ups = keepstore_role(svc, has_local_volumes=True, own_url="http://127.0.0.1:25108")
        self.assertEqual(own.port, 25108)
        self.assertEqual([u.port for u in ups], [25107])
        own, ups = keepstore_role(svc, has_local_volumes=True, own_url="")
        self.assertIsNone(own)
        self.assertEqual(len(ups), 2)
        with self.assertRaises(RoleError):
            keepstore_role(svc, has_local_volumes=True, own_url="http://127.0.0.1:9/")

    def test_remote_host_is_not_local(self) -> None:
        """An address of another machine cannot be bound here (Arvados' test)."""
        from arvnode.keep.keepstore import _is_local_host

        self.assertTrue(_is_local_host("127.0.0.1"))
        self.assertFalse(_is_local_host("192.0.2.1"))  # TEST-NET-1, never local
        self.assertFalse(_is_local_host("no-such-host.invalid"))


class SilentUpstreamTests(TestCase):
    """A keepstore that accepts connections and never answers (hung host)."""

    timeout = 30

    async def test_timeouts_on_the_injected_clock(self) -> None:
        """HEAD, GET and a stuck PUT fail with a VolumeError after ``timeout``
        seconds of the volume's clock, instead of hanging the proxy."""
        from twisted.internet.endpoints import TCP4ServerEndpoint
        from twisted.internet.protocol import Factory, Protocol
        from twisted.internet.task import Clock

        accepted: list[Any] = []

        class Silent(Protocol):
            def connectionMade(self) -> None:
                accepted.append(self)
                self.transport.pauseProducing()  # read nothing: the PUT's buffer fills

        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Silent))
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: [p.transport.abortConnection() for p in accepted])
        clock = Clock()
        volume = UpstreamKeepstore(
            "zzzzz-bi6l4-000000000000000", f"http://127.0.0.1:{port.getHost().port}/",
            reactor=reactor, clock=clock, token="t", signing_key="k", signing_ttl=TTL, timeout=5,
        )
        self.addCleanup(volume.stop)
        stat = volume.stat(md5(b"x"))
        read = volume.open_read(md5(b"x"))
        await wait_for(lambda: len(accepted) >= 2)
        clock.advance(5)
        for d in (stat, read):
            with self.assertRaises(VolumeError) as cm:
                await d
            self.assertIn("no answer within 5", str(cm.exception))
        writer = await volume.open_write(md5(b"y" * (8 << 20)), 8 << 20)
        blocked = None
        for _ in range(64):
            blocked = writer.write(b"y" * (1 << 20))
            if not blocked.called:
                break
            await blocked
        assert blocked is not None and not blocked.called, "the send buffer never filled"
        clock.advance(5)
        with self.assertRaises(VolumeError):
            await blocked
        await writer.abort()
