"""A volume that is another keepstore: the keepproxy's upstream (spec §4.7, §5).

Why it is a volume: the keepproxy already knows how to order volumes by
rendezvous weight, write replicas in parallel, fall back on reads, verify md5
on the way and keep memory bounded. An upstream keepstore is one more place
where a block rests, so it plugs into the same :class:`IVolume` seam and the
proxy's code paths stay the ones the local volumes exercise. Its ``uuid`` is
the keep *service* UUID Arvados derives from the ``InternalURLs`` entry
(``<cluster>-bi6l4-<15>``), so the proxy's rendezvous order over volumes is
exactly spec §4.7's order over keepstores.

Decisions:

* **Credentials.** The seam passes a hash, not the client's request, so the
  client's token never leaves the gateway. The keepproxy has already checked
  the client's ``+A`` signature; towards the keepstore this volume signs the
  hash itself for the node's service token (``SystemRootToken``, which the
  keepstores of the cluster know anyway for ``/index``) with the cluster's
  ``BlobSigningKey``/``BlobSigningTTL``. A real Arvados keepstore checks
  exactly that HMAC, so it accepts these requests too. Arvados' keepproxy
  forwards the client's token instead; the difference is invisible to
  clients and means one fewer place a user token travels.
* **Streaming both ways, bounded.** A write is one ``PUT`` whose body is fed
  by :meth:`UpstreamWriter.write`; its Deferred fires when the connection's
  send buffer drained (the transport pauses this producer when it is full),
  which is the backpressure the upload pipeline waits for. A read is the
  response body driven as a push producer: pausing the consumer pauses the
  socket.
* **Nothing lands before commit.** The last byte of the block is held back
  until :meth:`UpstreamWriter.commit`: the keepstore cannot complete (and so
  cannot store) the block until the proxy has checked the whole body's md5.
  ``abort`` drops the connection and the keepstore discards the short body.
* **Request ids.** ``GET``/``HEAD``/``PUT`` carry the ``request_id`` the
  keepproxy passes (its client's ``X-Request-Id``, or the one it generated
  and answered with) as ``X-Request-Id``, so the keepstore's access log
  names the same request (spec §4.2, §4.7).
* **Full.** A keepstore answering 507 (``insufficient storage``) fails the
  write with :class:`VolumeFull`; the proxy does not retry it there.
* **Loops.** Every request says ``Via: HTTP/1.1 keepproxy``; a keepproxy
  (arvnode's or Arvados') configured by mistake as a keepstore answers
  "loop detected", which becomes a :class:`VolumeError` naming the URL.
* **GET without a size.** ``open_read`` has no size hint. arvnode's keepstore
  serves ``GET /<hash>+A...`` without one; an Arvados keepstore answers 405,
  and then this volume asks ``HEAD`` for the size and retries with it.
* **Time.** Connecting is bounded by the agent (2 s); waiting for response
  headers, a stalled send buffer and a silent response body by ``timeout``
  (default 300 s, Arvados' proxy request timeout), all on the injected clock.
"""
from __future__ import annotations

import json
from io import BytesIO
from typing import Any, Iterable, Sequence, cast

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    fail,
    succeed,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS, IResponse, UNKNOWN_LENGTH
from zope.interface import implementer

from arvnode.http.bodies import BoundedBody, read_bounded
from arvnode.keep.locator import sign_locator
from arvnode.keep.trash import TrashPolicy
from arvnode.keep.volume import IBlockReader, IBlockWriter, IVolume, VolumeError, VolumeFull

__all__ = ["UpstreamKeepstore", "UpstreamWriter", "UpstreamReader"]

#: How much of an error body is kept for the message.
ERROR_BODY_LIMIT = 2048
#: ``/index`` answers are read whole; this bounds them (about 1.2M blocks).
INDEX_LIMIT = 64 << 20


def _error_text(body: bytes) -> str:
    return body.decode("utf-8", "replace").strip()[:200]


def _read_body(response: IResponse, limit: int) -> "Deferred[bytes]":
    return read_bounded(response, limit)[1]


@implementer(IBodyProducer, IPushProducer)
class _BodyProducer:
    """The ``PUT`` body, fed by :class:`UpstreamWriter` (not pulled)."""

    def __init__(self, length: int, started: "Deferred[None]") -> None:
        self.length = length
        self._started = started
        self.consumer: IConsumer | None = None
        self.finished: Deferred[None] | None = None
        self.paused = False
        self.stopped = False
        self._resumed: list[Deferred[None]] = []

    def startProducing(self, consumer: IConsumer) -> "Deferred[None]":
        self.consumer = consumer
        self.finished = Deferred(lambda d: self.stopProducing())
        if not self._started.called:
            self._started.callback(None)
        return self.finished

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiting, self._resumed = self._resumed, []
        for d in waiting:
            if not d.called:  # a timed-out wait was cancelled
                d.callback(None)

    def stopProducing(self) -> None:
        self.stopped = True
        waiting, self._resumed = self._resumed, []
        for d in waiting:
            if not d.called:
                d.errback(VolumeError("upstream connection closed while sending the block"))

    def drained(self) -> "Deferred[None]":
        if self.stopped:
            return fail(VolumeError("upstream connection closed while sending the block"))
        if not self.paused:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._resumed.append(d)
        return d


@implementer(IBlockWriter)
class UpstreamWriter:
    """One ``PUT <root>/<hash>`` in progress (see the module docstring)."""

    def __init__(
        self,
        volume: "UpstreamKeepstore",
        hash: str,
        size: int,
        producer: _BodyProducer,
        response: "Deferred[IResponse]",
    ) -> None:
        self._vol = volume
        self.hash = hash
        self.size = size
        self._producer = producer
        self._response = response
        self._sent = 0
        self._held = b""
        self._state = "open"  # open | committed | aborted | failed
        self._result: Any = None  # the IResponse or Failure, once it came
        self._waiting: list[Deferred[Any]] = []
        self.replicas_reported: int | None = None
        response.addBoth(self._arrived)

    def _arrived(self, result: Any) -> None:
        self._result = result
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def answer(self) -> "Deferred[IResponse]":
        """The keepstore's answer (or its failure); never cancels the request."""
        d: Deferred[None] = Deferred()
        if self._result is not None:
            d.callback(None)
        else:
            self._waiting.append(d)

        def settled(_: object) -> Any:
            return self._result

        return d.addCallback(settled)

    def _failure(self) -> VolumeError:
        f = self._result
        if isinstance(f, Failure) and not f.check(CancelledError):
            return VolumeError(f"{self._vol.name}: {_describe(f.value)}")
        if f is not None and not isinstance(f, Failure):
            cls = VolumeFull if f.code == 507 else VolumeError
            return cls(f"{self._vol.name}: PUT {self.hash} refused early: HTTP {f.code}")
        return VolumeError(f"{self._vol.name}: connection closed while sending the block")

    def write(self, data: bytes) -> "Deferred[None]":
        if self._state != "open":
            return fail(VolumeError(f"{self._vol.name}: write to a {self._state} upstream writer"))
        if self._producer.stopped or self._result is not None:
            self._state = "failed"
            return fail(self._failure())
        if not isinstance(data, bytes):
            data = bytes(data)  # transports take bytes only
        n = len(data)
        if self._sent + n > self.size:
            return fail(VolumeError(f"{self._vol.name}: more than the declared {self.size} bytes"))
        self._sent += n
        if self._sent == self.size and n:
            # Hold the last byte back: the keepstore cannot finish the block
            # before commit() says the proxy's md5 matched.
            self._held, data = data[-1:], data[:-1]
        if data:
            assert self._producer.consumer is not None
            self._producer.consumer.write(data)
        drained = self._producer.drained()
        if drained.called:
            # Never fire synchronously: the upload pipeline is not re-entrant
            # (a batch "done" inside its own launch would finish it twice).
            later: Deferred[None] = Deferred()
            self._vol.clock.callLater(0, later.callback, None)
            return later
        return self._vol._timed(drained, "sending the block")

    def commit(self) -> "Deferred[None]":
        if self._state == "committed":
            return succeed(None)
        if self._state != "open":
            return fail(VolumeError(f"{self._vol.name}: commit of a {self._state} upstream writer"))
        if self._sent != self.size:
            self.abort()
            return fail(VolumeError(f"{self._vol.name}: sent {self._sent} of {self.size} bytes"))
        if self._producer.stopped:
            self._state = "failed"
            return fail(self._failure())
        return Deferred.fromCoroutine(self._commit())

    async def _commit(self) -> None:
        self._state = "committing"
        held, self._held = self._held, b""
        assert self._producer.consumer is not None and self._producer.finished is not None
        if held:
            self._producer.consumer.write(held)
        self._producer.finished.callback(None)
        try:
            response = await self._vol._timed(self.answer(), "waiting for the PUT answer")
        except VolumeError:
            self._state = "failed"
            self._response.cancel()
            raise
        except Exception as e:
            self._state = "failed"
            raise VolumeError(f"{self._vol.name}: PUT {self.hash}: {e}") from e
        body = await self._vol._error_body(response)
        if response.code != 200:
            self._state = "failed"
            cls = VolumeFull if response.code == 507 else VolumeError
            raise cls(
                f"{self._vol.name}: PUT {self.hash}: HTTP {response.code} {_error_text(body)!r}"
            )
        stored = response.headers.getRawHeaders(b"x-keep-replicas-stored", [b"1"])[0]
        try:
            self.replicas_reported = int(stored)
        except ValueError:
            self.replicas_reported = 1
        self._state = "committed"

    def abort(self) -> "Deferred[None]":
        if self._state in ("committed", "aborted"):
            return succeed(None)
        self._state = "aborted"
        self._held = b""
        finished = self._producer.finished
        if finished is not None and not finished.called:
            if self._result is not None:
                # The keepstore answered early (a 507 at header time) or the
                # connection failed: twisted.web has given the connection up
                # already and no longer waits for the body; firing this now
                # (short body, either way) would only log "Error writing
                # request". Leave it unfired.
                pass
            else:
                # The request writer closes the connection: the body stays
                # short and the keepstore discards it.
                finished.errback(VolumeError("block write aborted"))
        self._producer.stopProducing()
        if self._result is None:
            self._response.cancel()
        return succeed(None)


class _BodyRelay(Protocol):
    """Receives an upstream response body for :class:`UpstreamReader`."""

    def __init__(self, reader: "UpstreamReader") -> None:
        self._reader = reader

    @property
    def producer(self) -> IPushProducer | None:
        """The body's producer: ``deliverBody`` connects this protocol to a
        producer proxy, not to the ITransport that Protocol declares."""
        return cast("IPushProducer | None", self.transport)

    def connectionMade(self) -> None:
        # Nothing is read until someone consumes it: the socket waits.
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self._reader._data(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self._reader._ended(reason)


@implementer(IBlockReader, IPushProducer)
class UpstreamReader:
    """A ``GET`` answer's body as an :class:`IBlockReader` push producer."""

    def __init__(self, volume: "UpstreamKeepstore", hash: str, response: IResponse, size: int) -> None:
        self._vol = volume
        self.hash = hash
        self.size = size
        self._received = 0
        self._early: list[bytes] = []
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None
        self._end: Failure | None = None
        self._paused = False
        self._closed = False
        self._idle: IDelayedCall | None = None
        self._relay = _BodyRelay(self)
        response.deliverBody(self._relay)

    def produce(self, consumer: IConsumer) -> "Deferred[None]":
        if self._consumer is not None or self._closed:
            return fail(VolumeError(f"{self._vol.name}: reader already used or closed"))
        self._consumer = consumer
        # A local reference: when the body already ended, _finish fires and
        # clears self._done before this returns.
        done = self._done = Deferred(lambda d: self.stopProducing())
        consumer.registerProducer(self, True)
        early, self._early = self._early, []
        for chunk in early:
            consumer.write(chunk)
        if self._end is not None:
            self._finish(self._end)
        else:
            self._transport_resume()
        return done

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._early = []
        self._cancel_idle()
        if self._end is None:
            self._transport_stop()

    # IPushProducer, for the consumer
    def pauseProducing(self) -> None:
        self._paused = True
        self._cancel_idle()
        transport = self._relay.producer
        if transport is not None and self._end is None:
            transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._end is None:
            self._transport_resume()

    def stopProducing(self) -> None:
        self.close()

    # from _BodyRelay
    def _data(self, data: bytes) -> None:
        self._received += len(data)
        if self._consumer is None:
            self._early.append(data)
            return
        self._arm_idle()
        self._consumer.write(data)

    def _ended(self, reason: Failure) -> None:
        self._end = reason
        self._cancel_idle()
        if self._consumer is not None:
            self._finish(reason)

    def _finish(self, reason: Failure) -> None:
        done, self._done = self._done, None
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.unregisterProducer()
        if done is None or done.called:
            return
        if reason.check(ResponseDone) and self._received == self.size:
            done.callback(None)
        elif self._closed:
            done.errback(VolumeError(f"{self._vol.name}: read of {self.hash} stopped"))
        else:
            done.errback(VolumeError(
                f"{self._vol.name}: GET {self.hash} ended after {self._received} of"
                f" {self.size} bytes: {reason.getErrorMessage()}"
            ))

    def _transport_resume(self) -> None:
        transport = self._relay.producer
        if transport is not None:
            self._arm_idle()
            transport.resumeProducing()

    def _transport_stop(self) -> None:
        transport = self._relay.producer
        if transport is not None:
            transport.stopProducing()

    def _arm_idle(self) -> None:
        self._cancel_idle()
        if not self._paused:
            self._idle = self._vol.clock.callLater(self._vol.timeout, self._silent)

    def _cancel_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _silent(self) -> None:
        self._idle = None
        Logger().warn(
            "{name}: no data for {hash} in {timeout}s; dropping the read",
            name=self._vol.name, hash=self.hash, timeout=self._vol.timeout,
        )
        self._transport_stop()


@implementer(IVolume)
class UpstreamKeepstore:
    """An upstream keepstore at ``root_url`` (no trailing slash) as a volume.

    ``uuid`` is its keep service UUID (rendezvous order). ``token`` is what
    this node presents (and signs read locators for); ``signing_key`` and
    ``signing_ttl`` are the cluster's blob signing settings, shared with the
    keepstore. ``replication`` is what one successful PUT counts for (1 for a
    keepstore with one volume per class, as Arvados assumes for ``disk``
    services). ``tls_policy`` verifies ``https`` keepstores.
    """

    log = Logger()
    #: ``trash`` answers True once the keepstore accepted a one-entry trash
    #: list, not once the block is trashed: the keepstore works on it later,
    #: and a list arriving before it did (another of this balancer's
    #: concurrent calls, or keep-balance's) replaces it. The balancer counts
    #: these as sent, not trashed; a block left over is trashed next pass.
    trash_is_queued = True

    def __init__(
        self,
        uuid: str,
        root_url: str,
        *,
        reactor: Any,
        clock: IReactorTime,
        token: str,
        signing_key: str,
        signing_ttl: float,
        storage_classes: Iterable[str] = ("default",),
        replication: int = 1,
        read_only: bool = False,
        timeout: float = 300.0,
        connect_timeout: float = 2.0,
        tls_policy: IPolicyForHTTPS | None = None,
        max_connections: int = 16,
    ) -> None:
        self.uuid = uuid
        self.root_url = root_url.rstrip("/")
        self.name = f"keepstore {self.root_url}"
        self.replication = replication
        self.read_only = read_only
        self.storage_classes: tuple[str, ...] = tuple(storage_classes) or ("default",)
        self.clock = clock
        self.timeout = timeout
        self._token = token
        self._key = signing_key
        self._ttl = signing_ttl
        self._needs_size = False  # learned from an Arvados keepstore's 405
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = max_connections
        kwargs: dict[str, Any] = {"pool": self._pool, "connectTimeout": connect_timeout}
        if tls_policy is not None:
            kwargs["contextFactory"] = tls_policy
        self._agent = Agent(reactor, **kwargs)

    def __repr__(self) -> str:
        return f"<UpstreamKeepstore {self.uuid} {self.root_url}>"

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> "Deferred[None]":
        """Nothing to prepare: a keepstore that is down now may be up later."""
        return succeed(None)

    def stop(self) -> "Deferred[None]":
        return self._pool.closeCachedConnections()

    # -- plumbing ------------------------------------------------------------

    def _headers(self, extra: dict[bytes, bytes] | None = None, request_id: str = "") -> Headers:
        h = Headers({b"Via": [b"HTTP/1.1 keepproxy"]})
        if request_id:
            h.setRawHeaders(b"X-Request-Id", [request_id.encode("ascii", "replace")])
        if self._token:
            h.setRawHeaders(b"Authorization", [f"Bearer {self._token}".encode()])
        for name, value in (extra or {}).items():
            h.setRawHeaders(name, [value])
        return h

    def _signed(self, hash: str, size: int | None = None) -> str:
        loc = hash if size is None else f"{hash}+{size}"
        return sign_locator(loc, self._token, self._key, self._ttl, self.clock.seconds())

    def _url(self, path: str) -> bytes:
        return (self.root_url + path).encode("ascii")

    def _timed(self, d: "Deferred[Any]", what: str) -> "Deferred[Any]":
        """``d``, cancelled and failing with a VolumeError after ``timeout``
        seconds of the volume's clock (however the cancellation surfaces)."""
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            d.cancel()

        call = self.clock.callLater(self.timeout, expire)

        def settle(result: Any) -> Any:
            if call.active():
                call.cancel()
            if expired and isinstance(result, Failure):
                return Failure(VolumeError(f"{self.name}: no answer within {self.timeout}s ({what})"))
            return result

        return d.addBoth(settle)

    async def _request(self, method: bytes, path: str, body: Any = None, request_id: str = "") -> IResponse:
        try:
            return await self._timed(
                self._agent.request(method, self._url(path), self._headers(request_id=request_id), body),
                f"{method.decode()} {path[:33]}",
            )
        except (VolumeError, CancelledError):
            raise
        except Exception as e:
            raise VolumeError(f"{self.name}: {method.decode()} failed: {_describe(e)}") from e

    async def _error_body(self, response: IResponse) -> bytes:
        try:
            return await _read_body(response, ERROR_BODY_LIMIT)
        except Exception:
            return b""

    def _refused(self, method: str, hash: str, response: IResponse, body: bytes) -> VolumeError:
        cls = VolumeFull if response.code == 507 else VolumeError
        return cls(
            f"{self.name}: {method} {hash}: HTTP {response.code} {_error_text(body)!r}"
        )

    # -- reads ---------------------------------------------------------------

    def stat(self, hash: str, *, request_id: str = "") -> "Deferred[int | None]":
        return Deferred.fromCoroutine(self._stat(hash, request_id))

    async def _stat(self, hash: str, request_id: str = "") -> int | None:
        response = await self._request(b"HEAD", "/" + self._signed(hash), request_id=request_id)
        if response.code == 404:
            return None
        if response.code != 200:
            raise self._refused("HEAD", hash, response, b"")
        raw = response.headers.getRawHeaders(b"content-length")
        try:
            return int(raw[0]) if raw else None
        except ValueError:
            raise VolumeError(f"{self.name}: HEAD {hash}: bad Content-Length {raw[0]!r}") from None

    def open_read(self, hash: str, *, request_id: str = "") -> "Deferred[IBlockReader | None]":
        return Deferred.fromCoroutine(self._open_read(hash, request_id))

    async def _open_read(self, hash: str, request_id: str = "") -> IBlockReader | None:
        size: int | None = None
        if self._needs_size:
            size = await self._stat(hash, request_id)
            if size is None:
                return None
        response = await self._request(b"GET", "/" + self._signed(hash, size), request_id=request_id)
        if response.code == 405 and size is None:
            # An Arvados keepstore: GET needs the size hint.
            await self._error_body(response)
            self._needs_size = True
            return await self._open_read(hash, request_id)
        if response.code == 404:
            await self._error_body(response)
            return None
        if response.code != 200:
            raise self._refused("GET", hash, response, await self._error_body(response))
        length = response.length
        if length is UNKNOWN_LENGTH:
            response.deliverBody(BoundedBody(0))  # drop it
            raise VolumeError(f"{self.name}: GET {hash}: answer without Content-Length")
        return UpstreamReader(self, hash, response, int(length))

    def index(self, prefix: str) -> "Deferred[Sequence[tuple[str, int, int]]]":
        return Deferred.fromCoroutine(self._index(prefix))

    async def _index(self, prefix: str) -> Sequence[tuple[str, int, int]]:
        response = await self._request(b"GET", f"/index/{prefix}")
        if response.code != 200:
            raise self._refused("GET", "/index", response, await self._error_body(response))
        collect = BoundedBody(INDEX_LIMIT)
        response.deliverBody(collect)
        body = await collect.done
        if collect.truncated:
            raise VolumeError(f"{self.name}: index larger than {INDEX_LIMIT} bytes")
        text = body.decode("ascii", "replace")
        if text != "\n" and not text.endswith("\n\n"):
            raise VolumeError(f"{self.name}: incomplete index")
        out: list[tuple[str, int, int]] = []
        for line in text.splitlines():
            if not line:
                continue
            loc, _, mtime = line.partition(" ")
            hash, _, size = loc.partition("+")
            size = size.partition("+")[0]
            try:
                out.append((hash, int(size), int(mtime or 0)))
            except ValueError:
                raise VolumeError(f"{self.name}: bad index line {line[:80]!r}") from None
        return out

    # -- writes --------------------------------------------------------------

    def open_write(self, hash: str, size: int, *, request_id: str = "") -> "Deferred[IBlockWriter]":
        """Start the ``PUT``; fires once the connection is up and the headers
        are sent (so a keepstore that is down fails here, and the proxy picks
        the next one)."""
        if self.read_only:
            return fail(VolumeError(f"{self.name} is read-only"))
        started: Deferred[None] = Deferred()
        producer = _BodyProducer(size, started)
        headers = self._headers({
            b"Content-Type": b"application/octet-stream",
            b"X-Keep-Storage-Classes": ", ".join(self.storage_classes).encode(),
        }, request_id=request_id)
        response = self._agent.request(b"PUT", self._url(f"/{hash}"), headers, producer)
        writer = UpstreamWriter(self, hash, size, producer, response)

        def cancel(_: Deferred[IBlockWriter]) -> None:
            writer.abort()

        out: Deferred[IBlockWriter] = Deferred(cancel)

        def up(_: object) -> None:
            if not out.called:
                out.callback(writer)

        def down(f: Failure) -> None:
            if not out.called:
                cls = VolumeFull if isinstance(f.value, VolumeFull) else VolumeError
                out.errback(cls(f"{self.name}: PUT {hash}: {_describe(f.value)}"))

        def early(_: object) -> None:
            # An answer (or a failure) before the body was taken.
            r = writer._result
            if isinstance(r, Failure):
                down(r)
            elif not out.called:
                Deferred.fromCoroutine(self._error_body(r)).addCallback(
                    lambda body: down(Failure(self._refused("PUT", hash, r, body)))
                )

        started.addCallback(up)
        writer.answer().addBoth(early)

        def time_out() -> None:
            if not out.called:
                writer.abort()
                out.errback(VolumeError(f"{self.name}: connect timeout"))

        timeout = self.clock.callLater(self.timeout, time_out)

        def disarm(result: object) -> object:
            if timeout.active():
                timeout.cancel()
            return result

        out.addBoth(disarm)
        return out

    # -- trash: that keepstore's admin API, with SystemRootToken ---------------

    @property
    def device_id(self) -> str:
        return self.root_url

    def trash(self, hash: str, mtime_ns: int | None = None) -> "Deferred[bool]":
        """``PUT /trash`` with this block only, after checking its mtime in
        that keepstore's ``/index`` (the keepstore checks again itself).

        True means the keepstore accepted the request (see
        :attr:`trash_is_queued`): keepstore trashes asynchronously and
        answers nothing about the outcome.
        """
        if self.read_only:
            return succeed(False)
        return Deferred.fromCoroutine(self._trash(hash, mtime_ns))

    async def _trash(self, hash: str, mtime_ns: int | None) -> bool:
        policy = TrashPolicy(signing_ttl=self._ttl)
        now = self.clock.seconds()
        entries = [(size, mtime) for h, size, mtime in await self._index(hash) if h == hash]
        if mtime_ns is not None:
            entries = [e for e in entries if e[1] == mtime_ns]
        entries = [e for e in entries if not policy.too_new(e[1], now)]
        if not entries:
            return False
        body = json.dumps(
            [{"locator": f"{hash}+{size}", "block_mtime": mtime} for size, mtime in sorted(set(entries))]
        ).encode()
        response = await self._request(b"PUT", "/trash", FileBodyProducer(BytesIO(body)))
        text = await self._error_body(response)
        if response.code != 200:
            raise self._refused("PUT /trash", hash, response, text)
        return True

    def untrash(self, hash: str) -> "Deferred[bool]":
        """``PUT /untrash/<hash>``: 200 True, 404 False."""
        if self.read_only:
            return succeed(False)
        return Deferred.fromCoroutine(self._admin(b"PUT", f"/untrash/{hash}", hash))

    def touch(self, hash: str) -> "Deferred[bool]":
        """``TOUCH /<hash>``: 200 True, 404 False."""
        if self.read_only:
            return succeed(False)
        return Deferred.fromCoroutine(self._admin(b"TOUCH", f"/{hash}", hash))

    def empty_trash(self, now: float) -> "Deferred[int]":
        """That keepstore empties its own trash on its own timer."""
        return succeed(0)

    async def _admin(self, method: bytes, path: str, hash: str) -> bool:
        response = await self._request(method, path)
        text = await self._error_body(response)
        if response.code == 404:
            return False
        if response.code != 200:
            raise self._refused(f"{method.decode()} {path[:9]}", hash, response, text)
        return True


def _describe(e: BaseException) -> str:
    """A short reason; twisted.web's wrapper errors hide theirs in ``reasons``."""
    reasons = getattr(e, "reasons", None)
    if reasons:
        return "; ".join(r.getErrorMessage() for r in reasons)
    return str(e) or e.__class__.__name__


def build_upstreams(
    cluster_id: str,
    keepstore_service: Any,
    urls: Iterable[Any],
    *,
    reactor: Any,
    clock: IReactorTime,
    token: str,
    signing_key: str,
    signing_ttl: float,
    storage_classes: Iterable[str],
    tls_policy: IPolicyForHTTPS | None = None,
) -> list[UpstreamKeepstore]:
    """One :class:`UpstreamKeepstore` per ``Services.Keepstore.InternalURLs``
    entry in ``urls``, named by its keep service UUID (``Rendezvous`` option
    honoured), so the rendezvous order is Arvados' (spec §4.7).

    ``storage_classes`` should be the cluster's default classes: the volume
    cannot tell the keepstore which class a client asked for, so it only
    offers the classes a keepstore writes when asked for none.
    """
    from arvnode.keep.rendezvous import service_uuid_from_url

    classes = tuple(storage_classes)
    out = []
    for url in urls:
        text = str(url)
        uuid = service_uuid_from_url(cluster_id, text, keepstore_service.rendezvous.get(url, ""))
        out.append(UpstreamKeepstore(
            uuid, text, reactor=reactor, clock=clock, token=token, signing_key=signing_key,
            signing_ttl=signing_ttl, storage_classes=classes,
            tls_policy=tls_policy if url.scheme == "https" else None,
        ))
    return out


async def registered_keepstores(
    store: Any,
    *,
    exclude: Iterable[str],
    reactor: Any,
    clock: IReactorTime,
    token: str,
    signing_key: str,
    signing_ttl: float,
    storage_classes: Iterable[str],
    tls_policy: IPolicyForHTTPS | None = None,
) -> list[UpstreamKeepstore]:
    """One :class:`UpstreamKeepstore` per ``keep_services`` record of type
    ``disk`` (what ``arv keep_service create --service-type disk`` registers),
    skipping the UUIDs in ``exclude`` (those already configured).

    Read when the node starts: a keepstore registered later is used after
    the next restart. Its UUID, host, port and TLS flag come from the record,
    so the rendezvous order is the one every client computes from
    ``keep_services`` (spec §4.7).
    """
    from arvnode.store.kinds import KINDS
    from arvnode.store.query import parse_list_query

    kind = KINDS["keep_services"]
    skip = set(exclude)
    classes = tuple(storage_classes)
    out: list[UpstreamKeepstore] = []
    offset = 0
    while True:
        query = parse_list_query(kind, {
            "filters": [["service_type", "=", "disk"]], "order": ["uuid"],
            "limit": 1000, "offset": offset, "count": "none",
        })
        rows, _ = await store.list_objects(kind, query, readable=None)
        for row in rows:
            if row["uuid"] in skip:
                continue
            host = str(row["service_host"])
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"  # IPv6 literal
            https = bool(row.get("service_ssl_flag"))
            url = f"{'https' if https else 'http'}://{host}:{int(row['service_port'])}/"
            out.append(UpstreamKeepstore(
                row["uuid"], url, reactor=reactor, clock=clock, token=token,
                signing_key=signing_key, signing_ttl=signing_ttl, storage_classes=classes,
                tls_policy=tls_policy if https else None,
                read_only=bool(row.get("read_only")),
            ))
        if len(rows) < 1000:
            return out
        offset += len(rows)
