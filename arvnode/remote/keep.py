"""Blocks of other clusters: serving ``+R<cluster>-<sig>@<exp>`` locators.

Why: a collection fetched through federation carries ``+R`` hints (spec
2.6): the remote signed the blocks for the token our controller sent it,
salted for it. To read such a block the keepproxy rebuilds that salted
token, turns ``+R<cluster>-`` back into ``+A`` and asks the remote's keep
services (spec 5.3), found through the remote's ``keep_services/accessible``
and cached. The bytes are streamed to the client with backpressure and
md5-checked exactly like local reads (:class:`arvnode.keep.download.VerifyingRelay`):
a remote that sends wrong data makes the connection abort, it never looks
like a complete block.

With ``X-Keep-Signature: local`` (what the SDK sends when saving a
collection made of remote blocks) the block is streamed into a local
volume's writer one batch at a time (the remote connection paused while a
batch is hashed and written), committed only if its md5 and size match,
and then served from that local copy; the answer carries ``X-Keep-Locator``
signed here for the client's token.

Differences from keepstore, on purpose: a v1 token is not refused (400)
but its v2 form is salted, which is what our controller salted when it
fetched the manifest; ``RemoteClusters.<id>.Scheme`` is honoured.
"""
from __future__ import annotations

import hashlib
from typing import Any, cast

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

from arvnode.auth.salting import AlreadySalted, ObsoleteToken, TokenFormatError, salt_token
from arvnode.keep.locator import Locator, from_remote
from arvnode.keep.rendezvous import sort_services
from arvnode.keep.volume import IBlockReader
from arvnode.keep.wire import KeepError
from arvnode.remote.client import RemoteClient, RemoteError, RemoteHTTPError, RemoteTimeout, RemoteUnreachable

__all__ = ["KeepService", "RemoteBlockReader", "RemoteKeep"]

ACCESSIBLE_PATH = "/arvados/v1/keep_services/accessible"


@frozen
class KeepService:
    uuid: str
    url: str  # scheme://host:port, no trailing slash


@implementer(IBlockReader, IPushProducer)
class RemoteBlockReader:
    """A remote keep response body as an :class:`IBlockReader`.

    Pausing it pauses the remote connection, so a slow client slows the
    remote down instead of filling our memory.
    """

    def __init__(self, response: Any, size: int) -> None:
        self._response = response
        self.size = size
        self._transport: Any = None
        self._paused = False
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None

    def produce(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        done: Deferred[None] = Deferred()
        self._done = done
        consumer.registerProducer(self, True)
        # A short body may be delivered, and end, inside deliverBody.
        self._response.deliverBody(_BodyProtocol(self))
        return done

    def close(self) -> None:
        if self._transport is not None:
            self._transport.stopProducing()
        else:
            self._response.deliverBody(_BodyProtocol(self, discard=True))

    # IPushProducer
    def pauseProducing(self) -> None:
        self._paused = True
        if self._transport is not None:
            self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._transport is not None:
            self._transport.resumeProducing()

    def stopProducing(self) -> None:
        if self._transport is not None:
            self._transport.stopProducing()

    # from the body protocol
    def _connected(self, transport: Any) -> None:
        self._transport = transport
        if self._paused:
            transport.pauseProducing()

    def _data(self, data: bytes) -> None:
        if self._consumer is not None:
            self._consumer.write(data)

    def _lost(self, reason: Failure) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.unregisterProducer()
        done, self._done = self._done, None
        if done is None:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            done.callback(None)
        else:
            done.errback(reason)


class _BodyProtocol(Protocol):
    def __init__(self, reader: RemoteBlockReader, discard: bool = False) -> None:
        self._reader = reader
        self._discard = discard

    def connectionMade(self) -> None:
        if self._discard:
            # deliverBody's transport is a producer proxy (IPushProducer).
            cast(IPushProducer, self.transport).stopProducing()
            return
        self._reader._connected(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if not self._discard:
            self._reader._data(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if not self._discard:
            self._reader._lost(reason)


class RemoteKeep:
    """Finds remote keep services and reads ``+R`` blocks from them."""

    log = Logger()

    def __init__(
        self,
        client: RemoteClient,
        clock: IReactorTime,
        *,
        services_ttl: float = 300.0,
        timeout: float | None = None,
    ) -> None:
        self._client = client
        self._clock = clock
        self._ttl = services_ttl
        self._timeout = timeout
        self._services: dict[str, tuple[float, list[KeepService]]] = {}
        self.discoveries = 0

    # -- discovery ---------------------------------------------------------------

    async def services(self, cluster: str, token: str) -> list[KeepService]:
        """The keep services of ``cluster`` (cached for ``services_ttl``)."""
        now = self._clock.seconds()
        cached = self._services.get(cluster)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        self.discoveries += 1
        # Ask as an external client first (a remote's proxy is what we can
        # reach); a cluster that lists none then gets asked for all.
        found = await self._list(cluster, token, external=True)
        if not found:
            found = await self._list(cluster, token, external=False)
        if not found:
            raise RemoteUnreachable(cluster, "it lists no keep services")
        self._services[cluster] = (now, found)
        return found

    def forget_services(self, cluster: str | None = None) -> None:
        if cluster is None:
            self._services.clear()
        else:
            self._services.pop(cluster, None)

    async def _list(self, cluster: str, token: str, *, external: bool) -> list[KeepService]:
        headers = {"X-External-Client": "1"} if external else {}
        doc = await self._client.get_json(
            cluster, ACCESSIBLE_PATH, token=token, headers=headers, timeout=self._timeout
        )
        items = doc.get("items") if isinstance(doc, dict) else None
        result = []
        for item in items or ():
            if not isinstance(item, dict):
                continue
            host, port = item.get("service_host"), item.get("service_port")
            if not isinstance(host, str) or not host or not isinstance(port, int):
                continue
            scheme = "https" if item.get("service_ssl_flag") else "http"
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"
            uuid = item.get("uuid")
            if not isinstance(uuid, str):
                uuid = f"{host}:{port}"
            result.append(KeepService(uuid=uuid, url=f"{scheme}://{host}:{port}"))
        return result

    # -- reading -------------------------------------------------------------------

    def salted_token(self, cluster: str, token: str, v2_form: str | None = None) -> str:
        """The client's token as ``cluster`` signed for it (spec 3.3/3.4)."""
        candidate = token
        if not token.startswith("v2/") and v2_form:
            candidate = v2_form
        try:
            return salt_token(candidate, cluster)
        except AlreadySalted:
            return candidate
        except ObsoleteToken as e:
            raise KeepError(400, "a v1 token cannot read remote (+R) blocks") from e
        except TokenFormatError as e:
            raise KeepError(400, "this token cannot read remote (+R) blocks") from e

    async def open(
        self, locator: Locator, token: str, *, head: bool, v2_form: str | None = None
    ) -> tuple[Any, int]:
        """GET (or HEAD) ``locator``'s block at its cluster: ``(response, size)``.

        Raises :class:`KeepError`: 400 unknown cluster or unusable token,
        404 no service has it, 403 the remote refused the signature,
        502 unreachable, 504 timeout.
        """
        remote = locator.remote
        assert remote is not None
        cluster = remote[0]
        if not self._client.known(cluster):
            raise KeepError(400, f"remote cluster {cluster} not configured")
        salted = self.salted_token(cluster, token, v2_form)
        _, remote_text = from_remote(locator)
        try:
            services = await self.services(cluster, salted)
        except RemoteHTTPError as e:
            raise KeepError(502, f"remote cluster {cluster}: listing keep services failed: {e.message}") from e
        except RemoteTimeout as e:
            raise KeepError(504, e.message) from e
        except RemoteError as e:
            raise KeepError(502, e.message) from e
        headers = Headers({b"Authorization": [b"Bearer " + salted.encode("utf-8")]})
        problems: list[tuple[int, str]] = []
        for service in sort_services(locator.hash, services, key=lambda s: s.uuid):
            try:
                response = await self._client.request(
                    cluster, "HEAD" if head else "GET", f"{service.url}/{remote_text}",
                    headers=headers, timeout=self._timeout,
                )
            except RemoteTimeout as e:
                problems.append((504, e.message))
                continue
            except RemoteUnreachable as e:
                problems.append((502, e.message))
                continue
            if response.code == 200:
                size = locator.size
                if response.length is not UNKNOWN_LENGTH and not head:
                    size = response.length if size is None else size
                if size is None:
                    length = response.headers.getRawHeaders(b"content-length")
                    size = int(length[0]) if length and length[0].isdigit() else None
                if size is None:
                    _discard(response)
                    problems.append((502, f"remote cluster {cluster} sent a block of unknown size"))
                    continue
                return response, size
            body = b"" if head else await self._quiet_body(cluster, response)
            if head:
                _discard(response)
            err = RemoteHTTPError(response.code, body, cluster=cluster)
            if response.code == 404:
                problems.append((404, "Block not found"))
            elif response.code in (401, 403):
                problems.append((403, f"remote cluster {cluster} refused the block signature ({response.code})"))
            elif response.code >= 500:
                problems.append((502, err.message))
            else:
                problems.append((422, err.message))
        if problems and all(code == 404 for code, _ in problems):
            raise KeepError(404, "Block not found")
        for wanted in (403, 422, 502, 504):
            for code, message in problems:
                if code == wanted:
                    raise KeepError(code, message)
        raise KeepError(502, f"remote cluster {cluster}: no keep service answered")

    async def _quiet_body(self, cluster: str, response: Any) -> bytes:
        try:
            return await self._client.read_body(cluster, response, timeout=self._timeout)
        except Exception:
            return b""

    # -- the keepproxy's side --------------------------------------------------------

    async def serve(self, proxy: Any, request: Any, locator: Locator, token: str, identity: Any) -> None:
        """Answer a keepproxy GET/HEAD of a ``+R`` locator (called by :class:`KeepProxy`)."""
        head = request.method == b"HEAD"
        v2_form = None
        if identity is not None and not token.startswith("v2/") and getattr(identity, "token_uuid", None):
            v2_form = f"v2/{identity.token_uuid}/{token}"
        wants_local = _wants_local_copy(request)
        response, size = await self.open(locator, token, head=head and not wants_local, v2_form=v2_form)
        if request.gone:
            _discard(response)
            return
        name = f"{locator.hash}+{size}"
        if wants_local:
            volume = await self._copy_local(proxy, locator, response, size)
            proxy._sign_header(request, locator, token, size)
            if head:
                request.setResponseCode(200)
                request.setHeader(b"Content-Length", str(size).encode())
                request.finish()
                proxy.audit_transfer(request, "head", name, nbytes=0, outcome="ok-remote-copied")
                return
            reader = await volume.open_read(locator.hash)
            if reader is None:
                raise KeepError(503, f"the local copy of {name} vanished from {volume.uuid}")
            request.setResponseCode(200)
            request.setHeader(b"Content-Length", str(size).encode())
            await proxy._stream(request, volume, reader, locator.hash, size)
            return
        request.setResponseCode(200)
        request.setHeader(b"Content-Length", str(size).encode())
        if head:
            request.finish()
            proxy.audit_transfer(request, "head", name, nbytes=0, outcome="ok-remote")
            return
        from arvnode.keep.download import VerifyingRelay

        relay = VerifyingRelay(
            request, expected_hash=locator.hash, size=size, reactor=proxy.reactor,
            clock=proxy.clock, hash_pool=proxy.hash_pool, batch_size=proxy.batch_size,
            stall_timeout=proxy.idle_timeout, stats=proxy.relay_stats,
        )
        outcome = await relay.run(RemoteBlockReader(response, size))
        proxy.metrics.bytes.labels(direction="out").inc(relay.bytes_sent)
        if outcome == "corrupt":
            self.log.error(
                "remote cluster {cluster} sent corrupt data for {hash} (read {read} bytes,"
                " md5 {digest}); connection aborted",
                cluster=locator.remote[0] if locator.remote else "?", hash=locator.hash,
                read=relay.bytes_read, digest=relay.digest,
            )
        proxy.audit_transfer(request, "get", name, nbytes=relay.bytes_sent, outcome=f"{outcome}-remote")

    async def _copy_local(self, proxy: Any, locator: Locator, response: Any, size: int) -> Any:
        """Stream the remote block into the first local writable volume (in
        rendezvous order) that opens a writer; commit it only if its md5 and
        size match the locator. The remote body can be read once, so a
        failure after the first byte is a 503 (the client retries)."""
        cluster = locator.remote[0] if locator.remote else "?"
        writable = [v for v in proxy.volumes if not v.read_only]
        errors: list[str] = []
        for volume in sort_services(locator.hash, writable, key=lambda v: v.uuid):
            try:
                writer = await volume.open_write(locator.hash, size)
            except Exception as e:
                errors.append(f"{volume.uuid}: {e}")
                continue
            copier = _CopyToWriter(writer, proxy.reactor, proxy.hash_pool, proxy.batch_size)
            try:
                await RemoteBlockReader(response, size).produce(copier)
                digest, received = await copier.finish()
            except Exception as e:
                await _abort_quietly(writer)
                if isinstance(e, KeepError):
                    raise
                raise KeepError(502, f"remote cluster {cluster}: reading {locator.hash} broke: {e}") from e
            if received != size or digest != locator.hash:
                await _abort_quietly(writer)
                raise KeepError(502, f"remote cluster {cluster} sent data that does not match {locator.hash}")
            try:
                await writer.commit()
            except Exception as e:
                await _abort_quietly(writer)
                raise KeepError(503, f"could not store a local copy on {volume.uuid}: {e}") from e
            return volume
        _discard(response)
        raise KeepError(503, "could not store a local copy: " + ("; ".join(errors) or "no writable volume"))


@implementer(IConsumer)
class _CopyToWriter:
    """Consumer of a remote block body feeding one local writer: bytes are
    gathered into a batch of at most ``batch_size``; a full batch pauses the
    remote, is hashed on the hash pool and written, then the remote resumes.
    Memory stays at one batch whatever the block size."""

    def __init__(self, writer: Any, reactor: Any, hash_pool: Any, batch_size: int) -> None:
        self._writer = writer
        self._reactor = reactor
        self._pool = hash_pool
        self._batch_size = batch_size
        self._md5 = hashlib.md5()
        self._batch: list[bytes] = []
        self._batch_len = 0
        self._received = 0
        self._producer: Any = None
        self._flushing: Deferred[None] | None = None
        self._failure: Failure | None = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer

    def unregisterProducer(self) -> None:
        self._producer = None

    def write(self, data: bytes) -> None:
        self._received += len(data)
        self._batch.append(data)
        self._batch_len += len(data)
        if self._batch_len >= self._batch_size and self._flushing is None:
            if self._producer is not None:
                self._producer.pauseProducing()
            self._flushing = Deferred.fromCoroutine(self._flush())
            self._flushing.addBoth(self._flushed)

    async def _flush(self) -> None:
        batch = b"".join(self._batch)
        self._batch, self._batch_len = [], 0
        # Ordered: one flush at a time, and the remote is paused meanwhile.
        await deferToThreadPool(self._reactor, self._pool, self._md5.update, batch)
        await self._writer.write(batch)

    def _flushed(self, result: Any) -> None:
        self._flushing = None
        if isinstance(result, Failure):
            self._failure = result
            if self._producer is not None:
                self._producer.stopProducing()
            return
        if self._producer is not None:
            self._producer.resumeProducing()

    async def finish(self) -> tuple[str, int]:
        """After the body ended: flush the rest; (md5 hex, bytes received)."""
        while self._flushing is not None:
            await self._flushing
        if self._failure is not None:
            self._failure.raiseException()
        if self._batch:
            await self._flush()
        return self._md5.hexdigest(), self._received


async def _abort_quietly(writer: Any) -> None:
    try:
        await writer.abort()
    except Exception:
        pass


def _wants_local_copy(request: Any) -> bool:
    wanted = request.getHeader(b"x-keep-signature")
    if wanted is None:
        return False
    return wanted.decode("latin-1").split(",", 1)[0].strip() == "local"


def _discard(response: Any) -> None:
    class _Drop(Protocol):
        def connectionMade(self) -> None:
            # deliverBody's transport is a producer proxy (IPushProducer).
            cast(IPushProducer, self.transport).stopProducing()

    try:
        response.deliverBody(_Drop())
    except Exception:
        pass
