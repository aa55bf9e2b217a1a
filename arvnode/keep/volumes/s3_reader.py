"""Downloads from an S3 volume: a GET response streamed to a consumer as a
push producer whose pause/resume reach the S3 connection itself.

Pieces of the body smaller than :data:`COALESCE` are gathered into one write
of up to :data:`WRITE_MAX`: each write to the keep client costs a trip through
the HTTP server, its transport and usually a pause and resume of both
connections, whatever its size. Plain HTTP connections to the bucket are read
1 MiB at a time (:class:`~arvnode.keep.volumes.s3_client.LargeReadEndpoints`),
so their pieces are mostly large already; HTTPS ones arrive in 32 KiB pieces
(Twisted's TLS layer decrypts that much at a time), and a slow bucket trickles.
"""
from __future__ import annotations

from collections import deque

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from zope.interface import implementer

from arvnode.keep.volume import IBlockReader, VolumeError
from arvnode.keep.volumes.s3_client import S3Error, S3Stats

__all__ = ["S3BlockReader", "COALESCE", "WRITE_MAX"]

#: Pieces are held back until this many bytes are waiting (or the body ended).
COALESCE = 256 * 1024
#: At most this many bytes go to the consumer in one write (one join).
WRITE_MAX = 1 << 20


class _BodyReceiver(Protocol):
    def __init__(self, reader: "S3BlockReader") -> None:
        self._reader = reader

    def dataReceived(self, data: bytes) -> None:
        self._reader._data(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._reader._ended(reason)


@implementer(IBlockReader, IPushProducer)
class S3BlockReader:
    """Streams one GET response to a consumer (see :class:`IBlockReader`).

    Twisted keeps the connection paused until ``deliverBody``, so nothing is
    read before :meth:`produce`; afterwards pause/resume go to the S3
    connection, and data that arrives while paused (the rest of one socket
    read) is held and counted in ``stats.reader_max_buffered``, as are small
    pieces waiting to be written together (less than :data:`COALESCE`). A
    body that stops arriving for ``read_timeout`` while not paused is an
    error (small pieces held meanwhile are not lost: they are written with
    the next data or at the end).
    """

    log = Logger()

    def __init__(
        self, response: IResponse, size: int, *, name: str, clock: IReactorTime,
        read_timeout: float, stats: S3Stats,
    ) -> None:
        self.size = size
        self._response: IResponse | None = response
        self._name = name
        self._clock = clock
        self._read_timeout = read_timeout
        self._stats = stats
        self._proto: _BodyReceiver | None = None
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None
        self._held: deque[bytes] = deque()
        self._held_len = 0
        self._received = 0
        self._paused = False
        self._ended_reason: Failure | None = None
        self._finished = False
        self._timer: IDelayedCall | None = None

    def __repr__(self) -> str:
        return f"<S3BlockReader {self._name} {self._received}/{self.size}>"

    def produce(self, consumer: IConsumer) -> "Deferred[None]":
        if self._response is None or self._consumer is not None or self._finished:
            return fail(VolumeError(f"reader of {self._name} already used or closed"))
        self._consumer = consumer
        done: Deferred[None] = Deferred(lambda _: self._finish(Failure(CancelledError())))
        self._done = done
        try:
            consumer.registerProducer(self, True)
        except Exception:
            self._consumer = None
            self._finish(Failure())
            return done
        response, self._response = self._response, None
        self._proto = _BodyReceiver(self)
        response.deliverBody(self._proto)  # resumes the connection
        if self._paused:
            self._transport_call("pauseProducing")
        self._arm()
        return done

    def close(self) -> None:
        """Release the connection without producing (or stop producing)."""
        if self._consumer is not None and not self._finished:
            self.stopProducing()
            return
        self._finished = True
        response, self._response = self._response, None
        if response is not None:
            response.deliverBody(_Dropper())

    # -- IPushProducer -------------------------------------------------------------

    def pauseProducing(self) -> None:
        if self._paused:
            return
        self._paused = True
        self._disarm()
        self._transport_call("pauseProducing")

    def resumeProducing(self) -> None:
        if not self._paused or self._finished:
            return
        self._paused = False
        self._drain()
        if self._finished or self._paused:
            return
        self._arm()
        self._transport_call("resumeProducing")

    def stopProducing(self) -> None:
        if self._finished:
            return
        self._transport_call("stopProducing")
        self._finish(Failure(ConnectionLost(f"the consumer stopped reading {self._name}")))

    # -- body events -------------------------------------------------------------------

    def _data(self, data: bytes) -> None:
        if self._finished:
            return
        self._received += len(data)
        if self._received > self.size:
            self._transport_call("stopProducing")
            self._finish(Failure(S3Error(f"GET {self._name}: more data than its {self.size} bytes")))
            return
        if not self._paused:
            self._arm()
            if not self._held and len(data) >= COALESCE:
                self._write(data)
                return
        self._held.append(data)
        self._held_len += len(data)
        self._drain()
        if not self._finished:
            self._stats.note_reader(self._held_len)

    def _ended(self, reason: Failure) -> None:
        self._disarm()
        self._ended_reason = reason
        self._drain()

    def _drain(self) -> None:
        while self._held and not self._paused and not self._finished:
            if self._held_len < COALESCE and self._ended_reason is None:
                return  # wait for more (the body is still coming)
            self._write(self._take())
        if self._held or self._paused or self._finished or self._ended_reason is None:
            return
        reason = self._ended_reason
        if reason.check(ResponseDone, PotentialDataLoss) and self._received == self.size:
            self._finish(None)
        elif reason.check(ResponseDone, PotentialDataLoss):
            self._finish(Failure(S3Error(
                f"GET {self._name}: body ended at {self._received} of {self.size} bytes",
                retryable=True,
            )))
        else:
            detail = reason.getErrorMessage()
            self._finish(Failure(S3Error(
                f"GET {self._name}: connection to the bucket broke at {self._received} of"
                f" {self.size} bytes ({detail})",
                retryable=True,
            )))

    def _take(self) -> bytes:
        """The next write: the first held piece, joined with those after it
        while the total stays within :data:`WRITE_MAX`."""
        held = self._held
        first = held.popleft()
        if len(first) >= COALESCE or not held or len(first) + len(held[0]) > WRITE_MAX:
            self._held_len -= len(first)
            return first
        parts = [first]
        total = len(first)
        while held and total + len(held[0]) <= WRITE_MAX:
            piece = held.popleft()
            parts.append(piece)
            total += len(piece)
        self._held_len -= total
        return b"".join(parts)

    def _write(self, data: bytes) -> None:
        assert self._consumer is not None
        try:
            self._consumer.write(data)  # may pause or stop us re-entrantly
        except Exception:
            self._transport_call("stopProducing")
            self._finish(Failure())

    def _transport_call(self, method: str) -> None:
        proto = self._proto
        transport = getattr(proto, "transport", None) if proto is not None else None
        if transport is not None:
            getattr(transport, method)()

    # -- timers and the end ------------------------------------------------------------

    def _arm(self) -> None:
        """(Re)start the idle timer while the body should be flowing."""
        if self._finished or self._paused or self._ended_reason is not None:
            self._disarm()
        elif self._timer is not None and self._timer.active():
            self._timer.reset(self._read_timeout)
        else:
            self._timer = self._clock.callLater(self._read_timeout, self._stalled)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _stalled(self) -> None:
        self._timer = None
        self._transport_call("stopProducing")
        self._finish(Failure(S3Error(
            f"GET {self._name}: no data from the bucket for {self._read_timeout:g}s", retryable=True
        )))

    def _finish(self, result: Failure | None) -> None:
        if self._finished:
            return
        self._finished = True
        self._disarm()
        self._held.clear()
        self._held_len = 0
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.unregisterProducer()
            except Exception:
                self.log.failure("unregisterProducer failed for {name}", name=self._name)
        done, self._done = self._done, None
        if done is not None:
            if result is None:
                done.callback(None)
            else:
                done.errback(result)


class _Dropper(Protocol):
    """Body protocol of a response nobody will read: drop the connection."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        pass
