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


class BufferSink(CollectSink):
    """Lends one buffer of ``size`` bytes (the fast path's sink shape).

    When the buffer is full it is "processed" (hashed) either at once or,
    with ``delay``, after that many seconds with the body paused meanwhile,
    as the keepproxy does while a batch is in flight.
    """

    def __init__(self, request: StreamingRequest, size: int, delay: float | None = None) -> None:
        super().__init__(request)
        self.buf = bytearray(size)
        self.fill = 0
        self.delay = delay
        self.busy = False
        self.filled_calls = 0
        self.paused_seen = False

    def body_buffer(self) -> memoryview | None:
        if self.busy:
            return None
        return memoryview(self.buf)[self.fill :]

    def body_filled(self, n: int) -> None:
        self.filled_calls += 1
        self.length += n
        self.fill += n
        if self.fill == len(self.buf):
            self._flush()

    def write(self, data: bytes) -> None:
        # The stock path (bytes that came with the headers, TLS): copy in.
        self.chunks += 1
        view = memoryview(data)
        while view:
            n = min(len(view), len(self.buf) - self.fill)
            self.buf[self.fill : self.fill + n] = view[:n]
            self.fill += n
            self.length += n
            view = view[n:]
            if self.fill == len(self.buf):
                self._flush()

    def _flush(self) -> None:
        self.md5.update(self.buf[: self.fill])
        self.fill = 0
        if self.delay is not None:
            self.busy = True
            self.request.pause_body()
            self.paused_seen = self.request.channel.transport not in reactor.getReaders()
            reactor.callLater(self.delay, self._done)

    def _done(self) -> None:
        self.busy = False
        self.request.resume_body()
        if self.finished_pending:
            self.finish()

    finished_pending = False

    def finish(self) -> None:
        if self.busy:
            self.finished_pending = True
            return
        self.md5.update(self.buf[: self.fill])
        self.fill = 0
        super().finish()


class FastBodyTests(TestCase):
    """The recv_into body path (streaming.py point 4) over real sockets."""

    def _accept_with(self, fx: Fixture, make: Any) -> list[Any]:
        sinks: list[Any] = []

        async def accept(request: StreamingRequest) -> Any:
            sink = make(request)
            sinks.append(sink)
            return sink

        fx.hook.sync = "accept"
        fx.hook._accept_now = accept  # type: ignore[method-assign]
        return sinks

    async def test_body_received_into_sink_buffers(self) -> None:
        """A big body lands in the sink's buffer in few large reads, never past
        its end: the GET pipelined right behind it is answered too."""
        fx = Fixture(self)
        sinks = self._accept_with(fx, lambda r: BufferSink(r, 1 << 20))
        c = await fx.client()
        body = random.Random(5).randbytes(8 << 20 | 12345)
        c.send(put_head(len(body), expect=True))
        interim = await c.read_response()
        assert interim is not None
        self.assertEqual(interim.status, 100)
        c.send(body + b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
        final = await c.read_response()
        after = await c.read_response()
        assert final is not None and after is not None
        self.assertEqual(final.body, f"{hashlib.md5(body).hexdigest()} {len(body)}\n".encode())
        self.assertEqual((after.status, after.body), (200, b"GET 0"))
        sink = sinks[0]
        self.assertEqual(sink.request.bytes_in, len(body))
        # (Nearly) all of it by recv_into, in far fewer reads than 64 KiB ones.
        self.assertGreater(fx.site.fast_body_bytes, len(body) - 65536)
        self.assertLess(fx.site.fast_body_reads, len(body) // 65536)
        # The stock doRead is back for the next request.
        transport = fx.protocols[0].transport
        self.assertNotIn("doRead", vars(transport))

    async def test_body_with_headers_then_fast(self) -> None:
        """Body bytes that came in the headers' packet go the stock way first,
        the rest by recv_into; the sink sees them in order."""
        fx = Fixture(self)
        sinks = self._accept_with(fx, lambda r: BufferSink(r, 256 << 10))
        c = await fx.client()
        body = random.Random(6).randbytes(3 << 20)
        c.send(put_head(len(body), expect=False) + body[:1000])
        await deferLater(reactor, 0.05, lambda: None)
        c.send(body[1000:])
        final = await c.read_response()
        assert final is not None
        self.assertEqual(final.body, f"{hashlib.md5(body).hexdigest()} {len(body)}\n".encode())
        self.assertGreaterEqual(sinks[0].chunks, 1)
        self.assertGreater(sinks[0].filled_calls, 0)

    async def test_sink_pause_stops_reading(self) -> None:
        """A sink that has no room pauses the body: the socket is not read
        until it resumes, and the body still arrives whole."""
        fx = Fixture(self)
        sinks = self._accept_with(fx, lambda r: BufferSink(r, 512 << 10, delay=0.02))
        c = await fx.client()
        body = random.Random(7).randbytes(4 << 20)
        response, _ = await c.request("PUT", "/block", {}, body, expect_continue=True)
        assert response is not None
        self.assertEqual(response.body, f"{hashlib.md5(body).hexdigest()} {len(body)}\n".encode())
        self.assertTrue(sinks[0].paused_seen)
        self.assertGreater(fx.site.fast_body_bytes, 0)

    async def test_client_leaves_mid_body(self) -> None:
        """A client gone mid-body: the sink fails, the fast reader is removed."""
        fx = Fixture(self)
        sinks = self._accept_with(fx, lambda r: BufferSink(r, 1 << 20))
        c = await fx.client()
        c.send(put_head(4 << 20, expect=True))
        await c.read_response()
        c.send(b"z" * (1 << 20))
        while fx.site.fast_body_bytes < 1 << 20:
            await deferLater(reactor, 0.001, lambda: None)
        transport = fx.protocols[0].transport
        c.transport.loseConnection()
        while sinks[0].failed is None:
            await deferLater(reactor, 0.001, lambda: None)
        self.assertNotIn("doRead", vars(transport))

    async def test_behind_wrapping_factory(self) -> None:
        """Behind WrappingFactory (how the node's listeners track connections)
        the fast path still reads the socket itself."""
        from twisted.protocols.policies import WrappingFactory

        fx = Fixture(self)
        self._accept_with(fx, lambda r: BufferSink(r, 1 << 20))
        wrapped = reactor.listenTCP(0, WrappingFactory(fx.site), interface="127.0.0.1")
        self.addCleanup(wrapped.stopListening)
        c = await connect(wrapped.getHost().port)
        fx.clients.append(c)
        body = random.Random(10).randbytes(4 << 20)
        response, _ = await c.request("PUT", "/block", {}, body, expect_continue=True)
        assert response is not None
        self.assertEqual(response.body, f"{hashlib.md5(body).hexdigest()} {len(body)}\n".encode())
        self.assertGreater(fx.site.fast_body_bytes, len(body) // 2)

    async def test_chunked_body_uses_stock_path(self) -> None:
        """A chunked body (no Content-Length) is decoded by Twisted: the fast
        path only ever takes identity bodies of a declared length."""
        fx = Fixture(self)
        self._accept_with(fx, lambda r: BufferSink(r, 64 << 10))
        c = await fx.client()
        body = random.Random(11).randbytes(200000)
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 70000]), body[i : i + 70000])
            for i in range(0, len(body), 70000)
        )
        c.send(
            b"PUT /block HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunks
            + b"0\r\n\r\n"
        )
        final = await c.read_response()
        assert final is not None
        self.assertEqual(final.body, f"{hashlib.md5(body).hexdigest()} {len(body)}\n".encode())
        self.assertEqual(fx.site.fast_body_bytes, 0)

    async def test_disabled(self) -> None:
        """fast_body=False: the same sink gets the body through write()."""
        fx = Fixture(self)
        fx.site.fast_body = False
        self._accept_with(fx, lambda r: BufferSink(r, 1 << 20))
        c = await fx.client()
        body = random.Random(8).randbytes(2 << 20)
        response, _ = await c.request("PUT", "/block", {}, body, expect_continue=True)
        assert response is not None
        self.assertEqual(response.body, f"{hashlib.md5(body).hexdigest()} {len(body)}\n".encode())
        self.assertEqual(fx.site.fast_body_bytes, 0)

    async def test_tls_uses_stock_path(self) -> None:
        """Over TLS the fast path never engages, and the body arrives whole."""
        from twisted.internet import ssl
        from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
        from pathlib import Path

        from twisted.protocols.tls import TLSMemoryBIOFactory

        from arvnode.services import _NoALPN
        from arvnode.tls import ReloadableServerTLS, generate_ca_and_server

        d = Path(self.mktemp())
        d.mkdir()
        paths = generate_ca_and_server(d, common_name="test")
        fx = Fixture(self)
        self._accept_with(fx, lambda r: BufferSink(r, 1 << 20))
        # Wrapped as the node's HTTPListener wraps it.
        tls = ReloadableServerTLS(str(paths["cert"]), str(paths["key"]))
        tls_port = reactor.listenTCP(
            0, TLSMemoryBIOFactory(tls, False, _NoALPN(fx.site)), interface="127.0.0.1"
        )
        self.addCleanup(tls_port.stopListening)
        endpoint = SSL4ClientEndpoint(
            reactor, "127.0.0.1", tls_port.getHost().port, ssl.CertificateOptions(verify=False)
        )
        c = await connectProtocol(endpoint, RawHTTP())
        fx.clients.append(c)
        body = random.Random(9).randbytes(3 << 20)
        response, got_continue = await c.request("PUT", "/block", {}, body, expect_continue=True)
        assert response is not None
        self.assertTrue(got_continue)
        self.assertEqual(response.body, f"{hashlib.md5(body).hexdigest()} {len(body)}\n".encode())
        self.assertEqual(fx.site.fast_body_bytes, 0)


class OverlongLineTests(TestCase):
    """A request or header line longer than the channel's MAX_LENGTH gets an
    answer saying so and the connection closes (stock Twisted hangs up
    without a word; under TLS it then lingers until the idle timeout)."""

    async def test_request_line_too_long_is_414(self) -> None:
        fx = Fixture(self)
        c = await fx.client()
        c.send(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        response = await c.read_response()
        assert response is not None
        self.assertEqual(response.status, 414)
        self.assertIn(b"request line is longer than 16384 bytes", response.body)
        await c.closed

    async def test_header_line_too_long_is_431(self) -> None:
        fx = Fixture(self)
        c = await fx.client()
        c.send(b"GET /x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n")
        response = await c.read_response()
        assert response is not None
        self.assertEqual(response.status, 431)
        self.assertIn(b"a header line is longer", response.body)
        await c.closed



class OverlongLineAbortTests(SynchronousTestCase):
    def test_client_that_stays_is_cut_after_abort_timeout(self) -> None:
        """A client that never closes (as a TLS client that sends no
        close_notify) cannot hold the connection: it is aborted once the
        channel's ``abortTimeout`` has passed on the site's clock."""
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        clock = Clock()
        site = StreamingSite(Echo(), header_hook=Hook(), service="test", clock=clock,
                             rng=random.Random(3), metrics=NodeMetrics(), management_token="",
                             health_checks={}, max_buffered_body=65536, drain_limit=1 << 20)
        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /" + b"a" * 20000)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 414 URI Too Long\r\n"))
        self.assertTrue(transport.disconnecting)
        self.assertFalse(getattr(transport, "disconnected", False))
        clock.advance(channel.abortTimeout)
        self.assertTrue(transport.disconnected)
