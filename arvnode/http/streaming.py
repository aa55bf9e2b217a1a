"""The streaming-request seam: act on a request at header time, then take its
body chunk by chunk with flow control.

Why this exists: stock ``twisted.web`` spools every request body (to a temp
file past 100 000 bytes) before ``render`` runs, and ``HTTPChannel`` answers
``Expect: 100-continue`` synchronously inside ``allHeadersReceived``, before
any asynchronous check (a token looked up in the database) can refuse the
upload. The keepproxy must refuse a 64 MiB upload *before* the client sends
it, and must hold a few MiB per upload rather than a whole block. So this
module owns three moments of the HTTP/1.1 exchange:

1. **Headers received.** :class:`StreamingChannel` stops reading (the
   transport is paused and the line parser stops delivering what it already
   buffered), and asks the site's *header hook* what to do. The hook may
   take as long as it needs. It either returns a :class:`BodySink` (then the
   channel sends ``100 Continue`` if the client asked for it and resumes
   reading) or answers the request itself (then no ``100 Continue`` is ever
   sent, the body is not read, and the connection is closed).
2. **Body chunks.** Each chunk goes straight to the sink; ``request.content``
   stays an empty ``BytesIO``. The sink calls :meth:`StreamingRequest.pause_body`
   / :meth:`~StreamingRequest.resume_body` for backpressure. The client's
   transport is shared with the channel's own pipelining pauses, so pausing is
   reason-counted (:class:`_ReadGate`): the socket is read again only when
   *nobody* wants it paused. The idle timeout is suspended while the server
   is the one holding things up (a slow volume must not get a steady client
   dropped) and runs again as soon as reading resumes.
3. **An answer before the body ended** (refusal, or a mid-body failure). The
   response carries ``Connection: close``; the channel then closes at once
   if the client never got ``100 Continue`` (it has not sent the body), or
   reads and discards up to ``drain_limit`` bytes first (closing a socket with
   unread data makes the kernel send RST, which can destroy the response
   before the client reads it), then closes.

4. **The fast body path** (DESIGN.md §3; spec/put-path-measurements.md). If
   the sink also offers buffers (:class:`BufferedBodySink`) and the connection
   is plain TCP, the body is read by :class:`_RecvIntoReader`: the
   transport's ``doRead`` is replaced, for the body only, by a
   ``socket.recv_into`` straight into the sink's (reusable, ~4 MiB) buffer,
   never reading past the declared length. That skips Twisted's 64 KiB
   ``recv`` → ``dataReceived`` → ``LineReceiver`` → decoder →
   ``handleContentChunk`` path, which cost the reactor thread twice the CPU.
   The identity decoder's count is kept in step, so whenever the fast path
   steps aside (bytes still in the line parser's buffer, reading held, an
   early answer) the stock path carries on exactly where it left off; at the
   last byte the decoder is told the body is complete and the request ends
   the stock way. TLS transports (``TLSMemoryBIOProtocol``) always use the
   stock path.

Requests the hook does not want (it returns None) are handled the stock way:
body buffered in memory, capped at ``max_buffered_body`` (413 beyond it),
then ``process``/``render`` as usual.

**Twisted internals this relies on** (so the range is pinned in setup.cfg,
``twisted >= 24.7, < 26``, and tested against 25.5): ``HTTPChannel.
allHeadersReceived`` / ``headerReceived`` / ``allContentReceived`` /
``requestDone`` / ``rawDataReceived`` / ``lineReceived``, the attributes
``_command``, ``_path``, ``_version``, ``_networkProducer``,
``_handlingRequest``, ``_send100Continue``, and ``LineReceiver.paused`` /
``_buffer`` / ``_busyReceiving`` / ``line_mode``; for the fast body path,
``HTTPChannel._transferDecoder`` being an ``_IdentityTransferDecoder`` with
``contentLength`` / ``dataReceived``, ``twisted.internet.tcp.Connection``
having ``socket`` and a ``doRead`` that the reactor looks up on the instance,
and ``policies.ProtocolWrapper`` (``WrappingFactory``) only forwarding bytes
(checked by :func:`fast_body_supported`; anything unexpected means the stock
path). ``tests/http/test_streaming.py`` covers each
with raw sockets; run it when moving the Twisted pin.
"""
from __future__ import annotations

import inspect
from io import BytesIO
from typing import Any, Awaitable, Callable, Protocol, cast

import twisted
from twisted.internet import main as _imain
from twisted.internet import tcp as _tcp
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import policies as _policies
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.web import http as _http
from twisted.web.http import HTTPChannel, parse_qs
from zope.interface import implementer

from arvnode.http.site import NodeRequest, NodeSite

__all__ = [
    "BodySink",
    "BufferedBodySink",
    "fast_body_supported",
    "HeaderHook",
    "StreamingChannel",
    "StreamingRequest",
    "StreamingSite",
    "TESTED_TWISTED",
]

#: Twisted versions this seam was written and tested against (setup.cfg pin).
TESTED_TWISTED = ((24, 7), (26, 0))


class BodySink(Protocol):
    """Where a streamed request body goes.

    ``write`` gets every chunk in order (it may call ``request.pause_body()``);
    ``finish`` is called once the whole declared body arrived; ``fail`` if the
    connection is lost (client gone, idle timeout) before the response was
    finished. After ``fail`` nothing else is called.
    """

    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...

    def fail(self, reason: Failure) -> None: ...


class BufferedBodySink(BodySink, Protocol):
    """A sink that lends its own buffers, so the body can be received straight
    into them (the fast path, module docstring point 4).

    ``body_buffer()`` gives a fresh writable byte view for the next bytes
    (released by the reader after one ``recv_into``), or None when there is
    no room now (the sink then has called ``pause_body``, or wants the stock
    ``write`` path); ``body_filled(n)`` says ``n`` bytes were received at the
    start of that view. A sink sees a mix of ``write`` and
    ``body_filled`` calls, in body order.
    """

    def body_buffer(self) -> memoryview | None: ...

    def body_filled(self, n: int) -> None: ...


def _socket_transport(channel: Any) -> Any:
    """The TCP connection under ``channel``: its transport, or the transport
    of plain forwarding :class:`~twisted.protocols.policies.ProtocolWrapper` s
    (the node's listeners wrap sites in ``WrappingFactory`` to track
    connections). Anything else, TLS included (``TLSMemoryBIOProtocol`` is a
    ProtocolWrapper *subclass*), gives None."""
    transport = getattr(channel, "transport", None)
    while type(transport) is _policies.ProtocolWrapper:
        transport = getattr(transport, "transport", None)
    if isinstance(transport, _tcp.Connection) and not getattr(transport, "TLS", False):
        return transport
    return None


def fast_body_supported(channel: Any) -> bool:
    """Whether :class:`_RecvIntoReader` may take over ``channel``'s body reads:
    plain TCP (possibly behind forwarding wrappers, never TLS) and Twisted
    internals shaped as tested."""
    transport = _socket_transport(channel)
    decoder = getattr(channel, "_transferDecoder", None)
    identity = getattr(_http, "_IdentityTransferDecoder", None)
    return bool(
        transport is not None
        and hasattr(getattr(transport, "socket", None), "recv_into")
        and "doRead" not in vars(transport)
        and identity is not None
        and type(decoder) is identity
        and isinstance(getattr(decoder, "contentLength", None), int)
        and hasattr(channel, "line_mode")
        and hasattr(channel, "_buffer")
    )


class _RecvIntoReader:
    """The transport's ``doRead`` while a streamed body arrives (module
    docstring point 4). Steps aside to the stock ``doRead`` whenever the
    channel is not in the plain "receiving this body" state, and removes
    itself at the end of the body or of the connection."""

    def __init__(self, channel: "StreamingChannel", request: "StreamingRequest") -> None:
        self._channel = channel
        self._request = request
        self._transport: Any = _socket_transport(channel)
        self._decoder: Any = channel._transferDecoder
        self._stock = type(self._transport).doRead.__get__(self._transport)
        self.reads = 0
        self.bytes = 0
        self._transport.doRead = self.doRead

    def uninstall(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None and vars(transport).get("doRead") == self.doRead:
            del transport.doRead
        if self._channel._fast is self:
            self._channel._fast = None

    def doRead(self) -> object:
        ch, req, transport = self._channel, self._request, self._transport
        if transport is None:  # pragma: no cover - uninstalled meanwhile
            return self._stock()
        decoder = self._decoder
        sink = req.sink
        if (
            ch._transferDecoder is not decoder
            or req.body_complete
            or ch._discarding
            or sink is None
            or decoder.contentLength <= 0
        ):
            self.uninstall()
            return self._stock()
        if ch.paused or ch._buffer or ch.line_mode or ch._handlingRequest:
            return self._stock()
        view = sink.body_buffer()  # type: ignore[attr-defined]
        if view is None or not view.nbytes:
            if view is not None:
                view.release()
            if ch.paused:
                return None  # the sink paused the body: the gate stopped reading
            return self._stock()
        try:
            n = transport.socket.recv_into(view, min(view.nbytes, decoder.contentLength))
        except BlockingIOError:
            return None
        except InterruptedError:
            return None
        except OSError:
            return _imain.CONNECTION_LOST
        finally:
            view.release()
        if not n:
            return _imain.CONNECTION_DONE
        self.reads += 1
        self.bytes += n
        site = ch.site
        site.fast_body_reads += 1
        site.fast_body_bytes += n
        ch.resetTimeout()
        req.bytes_in += n
        decoder.contentLength -= n
        last = decoder.contentLength == 0
        if last:
            self.uninstall()
        sink.body_filled(n)  # type: ignore[attr-defined]
        if last and ch._transferDecoder is decoder and not ch._discarding:
            # End the body the stock way: handleContentChunk(b""), then
            # _finishRequestBody -> allContentReceived -> requestReceived.
            decoder.dataReceived(b"")
        return None


#: ``hook(request)`` at header time: None = "not mine, handle it the stock way";
#: otherwise an awaitable giving a :class:`BodySink` (accept) or None (the hook
#: has already answered: refused).
HeaderHook = Callable[["StreamingRequest"], "Awaitable[BodySink | None] | None"]


@implementer(IPushProducer)
class _ReadGate:
    """Stands in for the channel's ``_networkProducer`` (the transport).

    ``HTTPChannel`` pauses and resumes the transport for its own reasons
    (a full send buffer, pipelined requests); the streaming request pauses it
    for others (header checks, a full sink). Each party holds a named reason;
    the transport reads only when no reason is held, so one party's resume
    can never undo another's pause.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.reasons: set[str] = set()

    def hold(self, reason: str) -> None:
        if reason in self.reasons:
            return
        first = not self.reasons
        self.reasons.add(reason)
        if first:
            self._inner.pauseProducing()

    def release(self, reason: str) -> None:
        if reason not in self.reasons:
            return
        self.reasons.discard(reason)
        if not self.reasons:
            self._inner.resumeProducing()

    # What HTTPChannel calls on its _networkProducer.
    def pauseProducing(self) -> None:
        self.hold("channel")

    def resumeProducing(self) -> None:
        self.release("channel")

    def stopProducing(self) -> None:
        self._inner.stopProducing()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._inner.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._inner.unregisterProducer()


class StreamingChannel(HTTPChannel):
    """``HTTPChannel`` that lets a :class:`StreamingRequest` own the moment
    the headers are complete (see the module docstring)."""

    _gate: _ReadGate | None = None
    #: Our own hold reasons (a subset of the gate's).
    _holds: frozenset[str] = frozenset()
    _idle_suspended = False
    _idle_saved: float | None = None
    #: After an early answer: bytes still to read and drop before closing.
    _discarding = False
    _drain_left = 0
    _drain_abort = False
    #: While holding lazily, stop reading the socket past this many buffered bytes.
    hold_buffer_limit = 65536
    #: The recv_into body reader while one is installed.
    _fast: _RecvIntoReader | None = None
    #: Set by ``Site.buildProtocol`` (undeclared on HTTPChannel).
    site: StreamingSite

    # -- setup ---------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self._gate = _ReadGate(self._networkProducer)
        self._networkProducer = self._gate

    # -- reading control -----------------------------------------------------

    def hold_reading(self, reason: str, *, lazy: bool = False) -> None:
        """Stop handing the request bytes for ``reason`` until :meth:`release_reading`.

        The socket stops being read at once, or with ``lazy`` only once
        :attr:`hold_buffer_limit` bytes are buffered: a client waiting for
        ``100 Continue`` sends nothing, and reading on lets us notice at once
        if it hangs up while the header checks run.
        """
        if self._gate is None or reason in self._holds:
            return
        self._holds = self._holds | {reason}
        self.paused = True  # LineReceiver: stop handing out what it buffered
        if not lazy:
            self._gate.hold(reason)
        if not self._handlingRequest and not self._idle_suspended and not self._discarding:
            # The server is the slow party now: the idle timer is for clients.
            self._idle_suspended = True
            self._idle_saved = self.setTimeout(None)

    def release_reading(self, reason: str) -> None:
        """Drop ``reason``; read again when no other reason is held."""
        if self._gate is None or reason not in self._holds:
            return
        self._holds = self._holds - {reason}
        self._gate.release(reason)
        if self._holds:
            return
        self._gate.release("overflow")
        self._restore_idle_timeout()
        self.paused = False
        if self._buffer and not self._busyReceiving and self.transport is not None:
            # Deliver what the line parser kept while we were holding.
            LineReceiver.dataReceived(self, b"")

    def _release_all(self) -> None:
        if self._gate is not None:
            for reason in self._holds | {"overflow"}:
                self._gate.release(reason)
        self._holds = frozenset()
        self._restore_idle_timeout()
        self.paused = False

    def _restore_idle_timeout(self) -> None:
        if self._idle_suspended:
            self._idle_suspended = False
            if not self._handlingRequest:
                self.setTimeout(self._idle_saved)

    def send_continue(self) -> None:
        """``100 Continue`` (only ever after the header hook accepted)."""
        self._send100Continue()

    def start_fast_body(self, request: "StreamingRequest") -> bool:
        """Receive ``request``'s body with ``recv_into`` when possible."""
        if self._fast is not None or not getattr(self.site, "fast_body", False):
            return False
        if not fast_body_supported(self):
            return False
        self._fast = _RecvIntoReader(self, request)
        return True

    # -- HTTPChannel hooks ---------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self._holds and self._gate is not None and len(self._buffer) > self.hold_buffer_limit:
            self._gate.hold("overflow")

    def lineLengthExceeded(self, line: bytes) -> None:
        """A request line or header line longer than ``MAX_LENGTH``.

        Stock LineReceiver hangs up without a word, and under TLS the hang-up
        then waits for the client's close_notify until the idle timeout. The
        client gets told what was wrong instead (414 or 431), and is cut off
        if it has not gone within ``abortTimeout``."""
        first = getattr(self, "_HTTPChannel__first_line", True)
        if first:
            status, what = b"414 URI Too Long", "the request line"
        else:
            status, what = b"431 Request Header Fields Too Large", "a header line"
        body = f"{what} is longer than {self.MAX_LENGTH} bytes\n".encode()
        assert self.transport is not None  # a line arrived: we are connected
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
        )
        if self.abortTimeout is not None and self._abortingCall is None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()

    def headerReceived(self, line: bytes) -> bool:
        name, sep, value = line.partition(b":")
        if sep and name.lower() == b"content-length":
            value = value.strip(b" \t")
            request = self.requests[-1]
            if not value.isdigit() and isinstance(request, StreamingRequest):
                # Stock Twisted answers a bare 400 and hangs up; Keep clients
                # expect 411 with the usual headers, so let the request decide.
                request.content_length_invalid = True
                return True
        return bool(super().headerReceived(line))

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        if not isinstance(request, StreamingRequest):
            super().allHeadersReceived()
            return
        # What the stock method does, minus the unconditional 100 Continue.
        request.parseCookies()
        self.persistent = self.checkPersistence(request, self._version)
        if request.content_length_invalid:
            # Where this body ends is anyone's guess: no next request here.
            self.persistent = False
            request.setHeader(b"Connection", b"close")
        request.gotLength(self.length)
        expect = request.requestHeaders.getRawHeaders(b"Expect")
        wants_continue = bool(
            expect and expect[0].lower() == b"100-continue" and self._version == b"HTTP/1.1"
        )
        request.headers_complete(
            self._command, self._path, self._version, wants_continue=wants_continue
        )

    def allContentReceived(self) -> None:
        if self._discarding:
            return
        # The stock method saves the idle timeout to restore it after the
        # response; make sure it saves the real one, not our suspension.
        self._restore_idle_timeout()
        super().allContentReceived()

    def lineReceived(self, line: bytes) -> None:
        if self._discarding:
            self._discard(len(line) + 2)
            return
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if self._discarding:
            self._discard(len(data))
            return
        super().rawDataReceived(data)

    def requestDone(self, request: Any) -> None:
        if self._fast is not None:
            self._fast.uninstall()
        self._release_all()
        if isinstance(request, StreamingRequest) and not request.body_complete:
            # Answered before its body was read: this connection is finished.
            if self.requests and self.requests[0] is request:
                del self.requests[0]
            self._start_discarding(request)
            return
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._discarding = False
        if self._fast is not None:
            self._fast.uninstall()
        super().connectionLost(reason)

    # -- early answers -------------------------------------------------------

    def _start_discarding(self, request: StreamingRequest) -> None:
        self._discarding = True
        self.persistent = False
        remaining = request.body_remaining()
        site = request.site
        limit = getattr(site, "drain_limit", 0)
        if (request.wants_continue and not request.continue_sent) or not remaining:
            # The client is waiting for 100 Continue (or there is no body, or
            # its length is unknown): nothing worth reading.
            self.loseConnection()
            return
        self._drain_left = min(remaining, limit)
        # More than we are willing to read: cut the connection after the drain.
        self._drain_abort = remaining > limit
        if self._drain_left <= 0:
            cast(ITCPTransport, self.transport).abortConnection()
            return
        # Let leftover bytes the parser holds count too.
        buffered = self._buffer
        self._buffer = b""
        if buffered:
            self._discard(len(buffered))

    def _discard(self, n: int) -> None:
        if self._drain_left <= 0 or self.transport is None:
            return
        self._drain_left -= n
        if self._drain_left <= 0:
            self._drain_left = 0
            if self._drain_abort:
                cast(ITCPTransport, self.transport).abortConnection()
            else:
                self.loseConnection()


class StreamingRequest(NodeRequest):
    """A request that may be taken over at header time (see module docstring).

    Attributes the header hook can use: ``method``, ``uri``, ``path``, ``args``,
    ``clientproto`` (set at header time, before the body), ``declared_length``
    (``Content-Length``, None when absent or chunked),
    ``content_length_invalid`` (a ``Content-Length`` header that is not a
    decimal number), ``wants_continue``.
    """

    log = Logger()

    sink: BodySink | None = None
    streamed = False
    body_complete = False
    wants_continue = False
    continue_sent = False
    content_length_invalid = False
    declared_length: int | None = None
    _lost = False
    # Narrower than Twisted declares them: a StreamingSite builds this
    # request on its StreamingChannel, and gotLength sets a BytesIO body.
    channel: StreamingChannel
    # Twisted spells these ``site = None`` / ``content = None`` on the class,
    # which mypy reads as "always None".
    site: StreamingSite  # type: ignore[assignment]
    content: BytesIO  # type: ignore[assignment]

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        # server.Request only sets .site in process(); header time is earlier.
        self.site = channel.site
        self._decision: Deferred[Any] | None = None
        self._early: list[bytes] = []

    # -- called by the channel -----------------------------------------------

    def gotLength(self, length: int | None) -> None:
        # Deliberately not the stock spooling: bodies never touch a temp file.
        self.started = self.site.clock.seconds()
        self.declared_length = length
        self.content = BytesIO()

    def headers_complete(
        self, command: bytes, path: bytes, version: bytes, *, wants_continue: bool
    ) -> None:
        self.method, self.uri, self.clientproto = command, path, version
        self.path, sep, query = path.partition(b"?")
        self.args = parse_qs(query, 1) if sep else {}
        self.wants_continue = wants_continue
        self.assign_request_id()
        self.track()
        hook: HeaderHook | None = getattr(self.site, "header_hook", None)
        outcome = hook(self) if hook is not None else None
        if outcome is None:
            self._stock()
            return
        self.streamed = True
        # The hook may already have answered (then the channel is gone).
        if self.channel is not None:
            self.channel.hold_reading("headers", lazy=True)
        d: Deferred[Any] = (
            Deferred.fromCoroutine(outcome)
            if inspect.iscoroutine(outcome)
            else ensureDeferred(cast("Deferred[BodySink | None]", outcome))
        )
        if not d.called:
            self._decision = d  # cancelled if the client goes away meanwhile
        d.addCallbacks(self._decided, self._decision_failed)

    def handleContentChunk(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.sink is not None:
            self.sink.write(data)
        elif self.streamed:
            self._early.append(data)  # defensive: reading is held meanwhile
        else:
            cap = getattr(self.site, "max_buffered_body", 65536)
            if self.content.tell() + len(data) > cap:
                self.log.warn(
                    "{request_id}: request body over {cap} bytes on a non-streaming route;"
                    " dropping the connection",
                    request_id=self.request_id,
                    cap=cap,
                )
                if self.channel is not None:
                    cast(ITCPTransport, self.channel.transport).abortConnection()
                return
            self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self.body_complete = True
        if not self.streamed:
            super().requestReceived(command, path, version)
            return
        if self.sink is not None:
            self.sink.finish()

    def connectionLost(self, reason: Failure) -> None:
        # Stop the work first (header checks, writers), then tell everyone.
        self._lost = True
        decision, self._decision = self._decision, None
        if decision is not None:
            decision.cancel()
        super().connectionLost(reason)
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.fail(reason)

    def write(self, data: bytes) -> None:
        if not self.startedWriting and not self.body_complete:
            # An answer before the body ended ends the connection too.
            self.setHeader(b"Connection", b"close")
            if self.channel is not None:
                self.channel.persistent = False
        super().write(data)

    # -- for sinks -----------------------------------------------------------

    def pause_body(self) -> None:
        """Stop reading the body until :meth:`resume_body` (backpressure)."""
        if self.channel is not None and not self.body_complete:
            self.channel.hold_reading("body")

    def resume_body(self) -> None:
        if self.channel is not None:
            self.channel.release_reading("body")

    def body_remaining(self) -> int | None:
        """Declared body bytes not yet received; None if the length is unknown."""
        if self.declared_length is None or self.content_length_invalid:
            return None
        return max(0, self.declared_length - self.bytes_in)

    @property
    def gone(self) -> bool:
        """True once the response is finished or the client went away."""
        return bool(self.finished or self._disconnected)

    # -- internals -----------------------------------------------------------

    def _stock(self) -> None:
        cap = getattr(self.site, "max_buffered_body", 65536)
        if self.declared_length is not None and self.declared_length > cap:
            self.site.send_error(self, 413, f"request body larger than {cap} bytes on this route")
            return
        if self.wants_continue and self.channel is not None:
            self.channel.send_continue()
            self.continue_sent = True

    def _decided(self, sink: BodySink | None) -> None:
        self._decision = None
        if sink is None:
            if not self.gone:
                self.log.error(
                    "{request_id}: header hook neither accepted nor answered", request_id=self.request_id
                )
                self.site.send_error(self, 500, "internal error")
            return
        if self._disconnected:
            sink.fail(Failure(CancelledError("client went away during the header checks")))
            return
        channel = self.channel
        if channel is None or self.finished:
            sink.fail(Failure(CancelledError("request answered during the header checks")))
            return
        self.sink = sink
        early, self._early = self._early, []
        for chunk in early:
            sink.write(chunk)
        if self.wants_continue and not self.body_complete:
            channel.send_continue()
            self.continue_sent = True
        if self.body_complete:
            sink.finish()  # Content-Length: 0 completed while we decided
        elif callable(getattr(sink, "body_buffer", None)):
            channel.start_fast_body(self)
        channel.release_reading("headers")

    def _decision_failed(self, f: Failure) -> None:
        self._decision = None
        if f.check(CancelledError) and (self._lost or self._disconnected):
            return
        self.log.failure("{request_id}: header hook failed", f, request_id=self.request_id)
        if not self.gone:
            self.site.send_error(self, 500, "internal error")


def plain_error(request: StreamingRequest | NodeRequest, code: int, message: str) -> None:
    """Answer ``message\\n`` as ``text/plain`` (the Keep error body shape)."""
    if request.finished or request._disconnected:
        return
    body = (message + "\n").encode("utf-8")
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    request.write(body)
    request.finish()


class StreamingSite(NodeSite):
    """A :class:`NodeSite` whose requests can stream (module docstring).

    ``header_hook`` decides per request at header time; ``max_buffered_body``
    caps the body of requests it declines; ``drain_limit`` is how much of an
    unwanted body is read and dropped before closing after an early answer;
    ``fast_body`` enables the ``recv_into`` body path for sinks that lend
    buffers (plain TCP only). Subclasses override :meth:`send_error` to decorate error responses.
    """

    protocol = StreamingChannel  # type: ignore[assignment]
    requestFactory = StreamingRequest

    def __init__(
        self,
        resource: Any,
        *,
        header_hook: HeaderHook | None = None,
        max_buffered_body: int = 65536,
        drain_limit: int = 1 << 20,
        fast_body: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(resource, **kwargs)
        self.fast_body = fast_body
        #: Body bytes (and reads) taken by the fast path: for tests and metrics.
        self.fast_body_bytes = 0
        self.fast_body_reads = 0
        self.header_hook = header_hook
        self.max_buffered_body = max_buffered_body
        self.drain_limit = drain_limit
        version = (twisted.version.major, twisted.version.minor)
        low, high = TESTED_TWISTED
        if not (low <= version < high):
            self.log_.warn(
                "arvnode.http.streaming is tested with Twisted >= {low} and < {high};"
                " running {version}: run tests/http/test_streaming.py",
                low=".".join(map(str, low)),
                high=".".join(map(str, high)),
                version=twisted.version.short(),
            )

    def send_error(self, request: StreamingRequest, code: int, message: str) -> None:
        plain_error(request, code, message)

    def acceptableProtocols(self) -> list[bytes]:
        # StreamingChannel speaks HTTP/1.1 only: never let ALPN pick h2.
        return [b"http/1.1"]
