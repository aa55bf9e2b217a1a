# -*- test-case-name: tests.http.test_streaming -*-
"""The streaming-request seam (arvnode.http.streaming) over real sockets.

These pin the Twisted internals the seam relies on (see the module docstring
there): run them whenever the Twisted pin in setup.cfg moves.
"""
from __future__ import annotations

import hashlib
import random
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource

from arvnode.http.streaming import StreamingRequest, StreamingSite, _ReadGate, plain_error
from arvnode.web.metrics import NodeMetrics
from tests.http.rawclient import RawHTTP, connect


class CollectSink:
    """Collects the body; answers 200 ``<md5> <length>`` when it is complete."""

    def __init__(self, request: StreamingRequest, respond: bool = True) -> None:
        self.request = request
        self.respond = respond
        self.md5 = hashlib.md5()
        self.length = 0
        self.chunks = 0
        self.max_chunk = 0
        self.finished = False
        self.failed: Failure | None = None

    def write(self, data: bytes) -> None:
        self.md5.update(data)
        self.length += len(data)
        self.chunks += 1
        self.max_chunk = max(self.max_chunk, len(data))

    def finish(self) -> None:
        self.finished = True
        if self.respond:
            plain_error(self.request, 200, f"{self.md5.hexdigest()} {self.length}")

    def fail(self, reason: Failure) -> None:
        self.failed = reason


class Hook:
    """A header hook the test drives: PUTs wait for the test's decision."""

    def __init__(self) -> None:
        self.pending: list[tuple[StreamingRequest, Deferred[Any]]] = []
        self.events: list[Deferred[None]] = []
        self.cancelled: list[StreamingRequest] = []
        self.sync: str | None = None  # "refuse" | "accept": decide at once

    def __call__(self, request: StreamingRequest) -> Any:
        if request.method != b"PUT":
            return None
        if self.sync == "refuse":
            return self._refuse_now(request)
        if self.sync == "accept":
            return self._accept_now(request)
        d: Deferred[Any] = Deferred(lambda _: self.cancelled.append(request))
        self.pending.append((request, d))
        events, self.events = self.events, []
        for e in events:
            reactor.callLater(0, e.callback, None)  # not inside the server's stack
        return d

    async def _refuse_now(self, request: StreamingRequest) -> None:
        plain_error(request, 403, "refused")
        return None

    async def _accept_now(self, request: StreamingRequest) -> CollectSink:
        return CollectSink(request)

    def called(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.pending:
            d.callback(None)
        else:
            self.events.append(d)
        return d


class Echo(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return b"%s %d" % (request.method, len(request.content.getvalue()))


class Fixture:
    def __init__(self, testcase: TestCase) -> None:
        self.hook = Hook()
        self.site = StreamingSite(
            Echo(),
            header_hook=self.hook,
            service="test",
            clock=reactor,
            rng=random.Random(3),
            metrics=NodeMetrics(),
            management_token="",
            health_checks={},
            max_buffered_body=65536,
            drain_limit=1 << 20,
        )
        self.protocols: list[Any] = []
        build = self.site.buildProtocol

        def record(addr: Any) -> Any:
            p = build(addr)
            self.protocols.append(p)
            return p

        self.site.buildProtocol = record  # type: ignore[method-assign]
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.clients: list[RawHTTP] = []
        testcase.addCleanup(lambda: Deferred.fromCoroutine(self.cleanup()))

    async def client(self) -> RawHTTP:
        c = await connect(self.port.getHost().port)
        self.clients.append(c)
        return c

    async def cleanup(self) -> None:
        await self.port.stopListening()
        for c in self.clients:
            if not c.lost:
                c.transport.abortConnection()
        for p in self.protocols:
            if p.transport is not None and p.transport.connected:
                p.transport.abortConnection()
        await gatherResults([c.closed for c in self.clients])
        for _ in range(3):
            await deferLater(reactor, 0, lambda: None)


def put_head(length: int, *, expect: bool = True, extra: str = "") -> bytes:
    return (
        f"PUT /block HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n"
        + ("Expect: 100-continue\r\n" if expect else "")
        + extra
        + "\r\n"
    ).encode()


class ContinueTests(TestCase):
    """``100 Continue`` is sent only after the header hook accepted."""

    async def test_continue_after_async_accept(self) -> None:
        """No 100 while the hook decides; 100 after accept; body streamed, not spooled."""
        fx = Fixture(self)
        c = await fx.client()
        body = bytes(range(256)) * 8192  # 2 MiB
        c.send(put_head(len(body)))
        await fx.hook.called()
        request, decision = fx.hook.pending[0]
        self.assertEqual(request.method, b"PUT")
        self.assertEqual(request.path, b"/block")
        self.assertTrue(request.request_id.startswith("req-"))
        self.assertEqual(bytes(c.buffer), b"")  # nothing yet, certainly no 100
        sink = CollectSink(request)
        decision.callback(sink)
        interim = await c.read_response()
        assert interim is not None
        self.assertEqual(interim.status, 100)
        c.send(body)
        final = await c.read_response()
        assert final is not None
        self.assertEqual(final.status, 200)
        self.assertEqual(final.body, f"{hashlib.md5(body).hexdigest()} {len(body)}\n".encode())
        self.assertTrue(sink.finished)
        self.assertEqual(request.bytes_in, len(body))
        self.assertGreater(sink.chunks, 1)
        # The body never went to request.content.
        self.assertIsNone(getattr(request, "content", None))

    async def test_refusal_without_continue_or_body(self) -> None:
        """A refused Expect upload: final status, no 100, body never read, closed."""
        fx = Fixture(self)
        c = await fx.client()
        c.send(put_head(64 << 20))
        await fx.hook.called()
        request, decision = fx.hook.pending[0]
        plain_error(request, 403, "no")
        decision.callback(None)
        final = await c.read_response()
        assert final is not None
        self.assertEqual(final.status, 403)
        self.assertEqual(final.header("Connection"), "close")
        # A client that sends its body anyway is not read: the server closed.
        c.send(b"x" * 65536)
        await c.closed
        self.assertEqual(request.bytes_in, 0)
        self.assertEqual(bytes(c.buffer), b"")

    async def test_sync_refusal_with_body_in_same_packet(self) -> None:
        """A hook refusing synchronously while body bytes are already buffered:
        the answer arrives whole, the rest is drained, then the connection closes."""
        fx = Fixture(self)
        fx.hook.sync = "refuse"
        c = await fx.client()
        body = b"y" * 200000
        c.send(put_head(len(body), expect=False) + body)
        final = await c.read_response()
        assert final is not None
        self.assertEqual((final.status, final.body), (403, b"refused\n"))
        await c.closed
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_sync_refusal_zero_length(self) -> None:
        """Synchronous refusal of a Content-Length: 0 request: no stray processing."""
        fx = Fixture(self)
        fx.hook.sync = "refuse"
        c = await fx.client()
        c.send(put_head(0, expect=False))
        final = await c.read_response()
        assert final is not None
        self.assertEqual(final.status, 403)
        await c.closed
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_zero_length_async_accept(self) -> None:
        """Content-Length: 0 completes while the hook decides; the sink still finishes."""
        fx = Fixture(self)
        c = await fx.client()
        c.send(put_head(0, expect=False))
        await fx.hook.called()
        request, decision = fx.hook.pending[0]
        decision.callback(CollectSink(request))
        final = await c.read_response()
        assert final is not None
        self.assertEqual(final.body, f"{hashlib.md5(b'').hexdigest()} 0\n".encode())

    async def test_disconnect_while_deciding(self) -> None:
        """A client that leaves during the checks cancels the hook's work."""
        fx = Fixture(self)
        c = await fx.client()
        c.send(put_head(10))
        await fx.hook.called()
        request, _ = fx.hook.pending[0]
        finished = request.notifyFinish()
        c.transport.loseConnection()
        await c.closed
        await self.assertFailure(finished, Exception)
        self.assertEqual(fx.hook.cancelled, [request])


class KeepAliveTests(TestCase):
    """Streamed requests leave the connection usable."""

    async def test_pipelined_after_streamed(self) -> None:
        """A streamed PUT and a GET sent in one packet are both answered, in order."""
        fx = Fixture(self)
        fx.hook.sync = "accept"
        c = await fx.client()
        c.send(put_head(5, expect=False) + b"hello" + b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        first = await c.read_response()
        second = await c.read_response()
        assert first is not None and second is not None
        self.assertEqual(first.body, f"{hashlib.md5(b'hello').hexdigest()} 5\n".encode())
        self.assertEqual((second.status, second.body), (200, b"GET 0"))

    async def test_streamed_then_streamed(self) -> None:
        """Two streamed uploads on one connection, with Expect each time."""
        fx = Fixture(self)
        fx.hook.sync = "accept"
        c = await fx.client()
        for body in (b"a" * 100000, b"b" * 3):
            response, got_continue = await c.request(
                "PUT", "/block", {}, body, expect_continue=True
            )
            assert response is not None
            self.assertTrue(got_continue)
            self.assertEqual(
                response.body, f"{hashlib.md5(body).hexdigest()} {len(body)}\n".encode()
            )


class DeclinedRouteTests(TestCase):
    """Requests the hook declines are handled the stock way, with a body cap."""

    async def test_small_body_buffered(self) -> None:
        """A small body on a declined route reaches render in request.content."""
        fx = Fixture(self)
        c = await fx.client()
        response, got_continue = await c.request("POST", "/x", {}, b"0123456789", expect_continue=True)
        assert response is not None
        self.assertTrue(got_continue)
        self.assertEqual(response.body, b"POST 10")

    async def test_large_body_refused_at_header_time(self) -> None:
        """Over max_buffered_body: 413 before the body, no 100 Continue."""
        fx = Fixture(self)
        c = await fx.client()
        response, got_continue = await c.request(
            "POST", "/x", {}, b"z" * 100000, expect_continue=True
        )
        assert response is not None
        self.assertFalse(got_continue)
        self.assertEqual(response.status, 413)
        await c.closed

    async def test_invalid_content_length_reaches_hook(self) -> None:
        """'Content-Length: abc' is flagged for the hook instead of a bare 400."""
        fx = Fixture(self)
        c = await fx.client()
        c.send(b"PUT /block HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n")
        await fx.hook.called()
        request, decision = fx.hook.pending[0]
        self.assertTrue(request.content_length_invalid)
        self.assertIsNone(request.body_remaining())
        plain_error(request, 411, "length required")
        decision.callback(None)
        final = await c.read_response()
        assert final is not None
        self.assertEqual(final.status, 411)
        await c.closed


class BackpressureTests(TestCase):
    """Sink pauses stop the socket reads, whatever the channel does meanwhile."""

    async def test_channel_resume_does_not_undo_body_hold(self) -> None:
        """The channel's own resumeProducing (write buffer drained) leaves a
        body hold in place; releasing the hold resumes reading."""
        fx = Fixture(self)
        c = await fx.client()
        c.send(put_head(1 << 20))
        await fx.hook.called()
        request, decision = fx.hook.pending[0]
        sink = CollectSink(request)
        decision.callback(sink)
        await c.read_response()  # 100 Continue
        channel = request.channel
        request.pause_body()
        transport = channel.transport
        self.assertNotIn(transport, reactor.getReaders())
        channel.pauseProducing()  # as the transport does when its buffer fills
        channel.resumeProducing()  # ... and when it drains
        self.assertNotIn(transport, reactor.getReaders())
        request.resume_body()
        self.assertIn(transport, reactor.getReaders())
        c.send(b"q" * (1 << 20))
        final = await c.read_response()
        assert final is not None
        self.assertEqual(final.status, 200)


class ReadGateTests(SynchronousTestCase):
    """_ReadGate: the transport reads only when no party holds it."""

    def test_reasons_counted(self) -> None:
        """Pauses from different parties need their own resumes."""
        calls: list[str] = []

        class Producer:
            def pauseProducing(self) -> None:
                calls.append("pause")

            def resumeProducing(self) -> None:
                calls.append("resume")

        gate = _ReadGate(Producer())
        gate.pauseProducing()  # the channel
        gate.hold("body")  # the sink
        gate.resumeProducing()  # the channel again
        self.assertEqual(calls, ["pause"])
        gate.resumeProducing()  # repeated resume without pause: no effect
        gate.release("body")
        self.assertEqual(calls, ["pause", "resume"])
        gate.release("body")
        self.assertEqual(calls, ["pause", "resume"])
