"""Shared fixture for the keepproxy tests (no tests in this module).

``await start_keepproxy(testcase, ...)`` builds the real keepproxy site
(:func:`arvnode.keep.service.build_keepproxy_site`) over real
:class:`DirectoryVolume` s in temp dirs, listens on a loopback port, and
registers cleanups that close every connection (client and server side),
the port, the volumes and the thread pools. Wrapper volumes add what the
tests need to observe: late write Deferreds, abort notifications, counted
reads.
"""
from __future__ import annotations

import hashlib
import os
import random
from typing import Any, Callable, Sequence

from attrs import define, field
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from arvnode.auth.identity import Identity
from arvnode.keep.locator import sign_locator
from arvnode.keep.service import KeepproxySite, build_keepproxy_site
from arvnode.keep.volume import IBlockReader, IBlockWriter, IVolume
from arvnode.keep.volumes.directory import DirectoryVolume
from arvnode.web.metrics import NodeMetrics
from tests.http.rawclient import RawHTTP, connect

KEY = "testblobsigningkey0123456789abcdefghijklmnopqrstuvwxyz"
TTL = 14 * 24 * 3600.0
USER = "v2/zzzzz-gj3su-000000000000001/usersecret0123456789"
ADMIN = "v2/zzzzz-gj3su-000000000000002/adminsecret0123456789"
ANON = "anonymoustoken0123456789abcdefghijklmnopqrstuvwxyz"
SCOPED = "v2/zzzzz-gj3su-000000000000003/scopedsecret0123456789"
BROKEN = "token-that-makes-the-store-fail"
ROOT = "systemroottoken0123456789abcdefghij"

IDENTITIES = {
    USER: Identity("zzzzz-tpzed-000000000000001", USER, "zzzzz-gj3su-000000000000001"),
    ADMIN: Identity(
        "zzzzz-tpzed-000000000000002", ADMIN, "zzzzz-gj3su-000000000000002", is_admin=True
    ),
    ANON: Identity(
        "zzzzz-tpzed-anonymouspublic", ANON, "zzzzz-gj3su-anonymouspublic", is_anonymous=True
    ),
    SCOPED: Identity(
        "zzzzz-tpzed-000000000000003",
        SCOPED,
        "zzzzz-gj3su-000000000000003",
        scopes=("GET /arvados/v1/collections",),
    ),
}


async def authenticate(token: str | None) -> Identity | None:
    """Maps the fixed test tokens; :data:`BROKEN` plays a failing store."""
    if token == BROKEN:
        raise RuntimeError("database is down")
    if token is None:
        return None
    return IDENTITIES.get(token)


@define
class Permission:
    user_download: bool = True
    user_upload: bool = True
    admin_download: bool = True
    admin_upload: bool = True


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def auth(token: str = USER) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- wrapper volumes -------------------------------------------------------------


@implementer(IBlockWriter)
class WatchedWriter:
    def __init__(self, owner: "WatchedVolume", inner: Any) -> None:
        self._owner = owner
        self._inner = inner
        self.aborted: Deferred[None] = Deferred()
        self.committed = False
        # Passes every batch straight to the real writer: as reusable as it.
        self.reusable_buffers = bool(getattr(inner, "reusable_buffers", False))

    def write(self, data: bytes) -> Deferred[None]:
        owner = self._owner
        owner.writes += 1
        if owner.fail_writes:
            from arvnode.keep.volume import VolumeError

            d: Deferred[None] = Deferred.fromCoroutine(_raise(VolumeError("disk on fire")))
        else:
            d = self._inner.write(data)
        if owner.write_delay:
            d.addCallback(lambda _: deferLater(reactor, owner.write_delay, lambda: None))
        if owner.holding:
            d.addCallback(lambda _: owner.wait_release())
        waiting, owner.write_events = owner.write_events, []
        for event in waiting:
            event.callback(None)
        return d

    def commit(self) -> Deferred[None]:
        def done(_: object) -> None:
            self.committed = True

        return self._inner.commit().addCallback(done)

    def commit_as(self, hash: str) -> Deferred[None]:
        def done(_: object) -> None:
            self.committed = True

        return self._inner.commit_as(hash).addCallback(done)

    def abort(self) -> Deferred[None]:
        def done(result: object) -> object:
            if not self.aborted.called:
                self.aborted.callback(None)
            return result

        return self._inner.abort().addBoth(done)


class _CountingConsumer:
    def __init__(self, consumer: Any, reader: "CountingReader") -> None:
        self._consumer = consumer
        self._reader = reader

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._consumer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._consumer.unregisterProducer()

    def write(self, data: bytes) -> None:
        self._reader.produced += len(data)
        owner = self._reader.owner
        owner.bytes_read += len(data)
        if owner.on_read is not None:
            owner.on_read(owner)
        self._consumer.write(data)


@implementer(IBlockReader)
class CountingReader:
    def __init__(self, owner: "WatchedVolume", inner: Any) -> None:
        self.owner = owner
        self._inner = inner
        self.size = inner.size
        self.produced = 0

    def produce(self, consumer: Any) -> Deferred[None]:
        return self._inner.produce(_CountingConsumer(consumer, self))

    def close(self) -> None:
        self._inner.close()


@implementer(IVolume)
class WatchedVolume:
    """Delegates to a real volume; records writers, counts reads, can delay
    every write's Deferred (a slow disk)."""

    def __init__(self, inner: DirectoryVolume, *, write_delay: float = 0.0) -> None:
        self.inner = inner
        self.uuid = inner.uuid
        self.replication = inner.replication
        self.read_only = inner.read_only
        self.storage_classes = inner.storage_classes
        self.write_delay = write_delay
        self.writers: list[WatchedWriter] = []
        self.writes = 0
        self.bytes_read = 0
        self.on_read: Callable[[WatchedVolume], None] | None = None
        self.fail_open = False
        self.fail_writes = False
        #: While holding, every write waits for release_writes (a stuck disk).
        self.holding = False
        self._held: list[Deferred[None]] = []
        self.write_events: list[Deferred[None]] = []
        #: When a list, open_write waits until the test fires its entry.
        self.opens_held: list[Deferred[None]] | None = None
        self.open_events: list[Deferred[None]] = []

    def next_open(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.open_events.append(d)
        return d

    def hold_writes(self) -> None:
        self.holding = True

    def wait_release(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._held.append(d)
        return d

    def release_writes(self) -> None:
        self.holding = False
        held, self._held = self._held, []
        for d in held:
            d.callback(None)

    def next_write(self) -> Deferred[None]:
        """Fires when the next batch write is issued to this volume."""
        d: Deferred[None] = Deferred()
        self.write_events.append(d)
        return d

    @property
    def root(self) -> str:
        return self.inner.root

    def start(self) -> Deferred[None]:
        return self.inner.start()

    def stop(self) -> Deferred[None]:
        return self.inner.stop()

    def open_write(self, hash: str, size: int, *, request_id: str = "") -> Deferred[Any]:
        if self.fail_open:
            from arvnode.keep.volume import VolumeError

            return Deferred.fromCoroutine(_raise(VolumeError(f"volume {self.uuid} is broken")))

        def wrap(writer: Any) -> WatchedWriter:
            w = WatchedWriter(self, writer)
            self.writers.append(w)
            return w

        if self.opens_held is not None:
            # A slow open: runs only when the test releases it.
            gate: Deferred[None] = Deferred()
            self.opens_held.append(gate)
            waiting, self.open_events = self.open_events, []
            for event in waiting:
                event.callback(None)
            return gate.addCallback(
                lambda _: self.inner.open_write(hash, size, request_id=request_id)
            ).addCallback(wrap)
        return self.inner.open_write(hash, size, request_id=request_id).addCallback(wrap)

    def open_spool(self, size: int) -> Deferred[Any]:
        def wrap(writer: Any) -> WatchedWriter:
            w = WatchedWriter(self, writer)
            self.writers.append(w)
            return w

        return self.inner.open_spool(size).addCallback(wrap)

    def open_read(self, hash: str, *, request_id: str = "") -> Deferred[Any]:
        return self.inner.open_read(hash, request_id=request_id).addCallback(
            lambda r: None if r is None else CountingReader(self, r)
        )

    def stat(self, hash: str, *, request_id: str = "") -> Deferred[int | None]:
        return self.inner.stat(hash, request_id=request_id)

    def index(self, prefix: str) -> Deferred[Any]:
        return self.inner.index(prefix)

    # -- test helpers ----------------------------------------------------------

    def block_path(self, hash: str) -> str:
        return self.inner.block_path(hash)

    def temp_files(self) -> list[str]:
        out = []
        for dirpath, _dirs, files in os.walk(self.inner.root):
            out.extend(os.path.join(dirpath, f) for f in files if ".tmp-" in f)
        return out

    def has_block(self, hash: str) -> bool:
        return os.path.exists(self.inner.block_path(hash))

    def put_file(self, hash: str, data: bytes) -> None:
        """Store ``data`` under ``hash`` behind the volume's back."""
        path = self.inner.block_path(hash)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


async def _raise(e: Exception) -> Any:
    raise e


# -- the fixture -------------------------------------------------------------------


@define
class VolumeSpec:
    uuid: str
    classes: tuple[str, ...] = ("default",)
    replication: int = 1
    read_only: bool = False
    write_delay: float = 0.0


@define
class Keep:
    site: KeepproxySite
    port: int
    volumes: list[WatchedVolume]
    metrics: NodeMetrics
    clients: list[RawHTTP] = field(factory=list)
    server_protocols: list[Any] = field(factory=list)
    connection_events: list[Deferred[Any]] = field(factory=list)

    def next_connection(self) -> Deferred[Any]:
        """Fires with the server-side channel of the next accepted connection."""
        d: Deferred[Any] = Deferred()
        self.connection_events.append(d)
        return d

    def server_requests(self, method: bytes) -> list[Any]:
        return [r for r in self.site.inflight if r.method == method]

    @property
    def proxy(self) -> Any:
        return self.site.proxy

    async def client(self) -> RawHTTP:
        c = await connect(self.port)
        self.clients.append(c)
        return c

    def sign(self, hash: str, size: int, token: str = USER, now: float | None = None) -> str:
        clock = self.site.clock
        return sign_locator(
            f"{hash}+{size}", token, KEY, TTL, clock.seconds() if now is None else now
        )

    async def put(
        self, data: bytes, token: str = USER, headers: dict[str, str] | None = None,
        path: str | None = None, expect: bool = False,
    ) -> Any:
        c = await self.client()
        h = auth(token)
        h.update(headers or {})
        response, _ = await c.request("PUT", path or f"/{md5(data)}", h, data, expect_continue=expect)
        c.transport.loseConnection()
        await c.closed
        return response


async def start_keepproxy(
    testcase: TestCase,
    *,
    volumes: Sequence[VolumeSpec] = (VolumeSpec("zzzzz-nyw5e-000000000000000"),),
    clock: IReactorTime | None = None,
    upload_window: int = 1 << 20,
    max_inflight_bytes: int = 256 << 20,
    idle_timeout: float = 30.0,
    default_replication: int = 1,
    permission: Permission | None = None,
    blob_signing: bool = True,
) -> Keep:
    io_pool = ThreadPool(minthreads=1, maxthreads=4, name="test-io")
    hash_pool = ThreadPool(minthreads=1, maxthreads=2, name="test-hash")
    io_pool.start()
    hash_pool.start()
    testcase.addCleanup(hash_pool.stop)
    testcase.addCleanup(io_pool.stop)
    base = testcase.mktemp()
    watched = []
    for spec in volumes:
        inner = DirectoryVolume(
            spec.uuid,
            os.path.join(base, spec.uuid),
            reactor=reactor,
            threadpool=io_pool,
            replication=spec.replication,
            read_only=False,
            storage_classes=spec.classes,
            rng=random.Random(1),
        )
        await inner.start()
        inner.read_only = spec.read_only
        watched.append(WatchedVolume(inner, write_delay=spec.write_delay))
    metrics = NodeMetrics()
    site = build_keepproxy_site(
        reactor=reactor,
        clock=clock or reactor,
        rng=random.Random(7),
        authenticate=authenticate,
        volumes=watched,
        signing_key=KEY,
        signing_ttl=TTL,
        blob_signing=blob_signing,
        default_replication=default_replication,
        permission=permission or Permission(),
        system_root_token=ROOT,
        management_token="",
        metrics=metrics,
        hash_pool=hash_pool,
        upload_window=upload_window,
        max_inflight_bytes=max_inflight_bytes,
        idle_timeout=idle_timeout,
    )
    keep = Keep(site, 0, watched, metrics)
    build = site.buildProtocol

    def record(addr: Any) -> Any:
        p = build(addr)
        keep.server_protocols.append(p)
        waiting, keep.connection_events = keep.connection_events, []
        for d in waiting:
            reactor.callLater(0, d.callback, p)  # after makeConnection
        return p

    site.buildProtocol = record  # type: ignore[method-assign]
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    keep.port = port.getHost().port

    async def cleanup() -> None:
        await port.stopListening()
        for c in keep.clients:
            if not c.lost and c.transport is not None:
                c.transport.abortConnection()
        for p in keep.server_protocols:
            if p.transport is not None and p.transport.connected:
                p.transport.abortConnection()
        await gatherResults([c.closed for c in keep.clients])
        # Let aborted server transports run connectionLost, and pool jobs
        # (aborts of temp files) finish before the pools stop.
        for _ in range(3):
            await deferLater(reactor, 0, lambda: None)
        await gatherResults([v.stop() for v in watched])

    testcase.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))
    return keep


def all_settled(ds: list[Deferred[Any]]) -> Deferred[Any]:
    return gatherResults(ds) if ds else succeed([])


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (polling the reactor every millisecond) until ``predicate()``;
    only for server states no event announces. Fails after ``timeout``."""
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError("condition not reached")
        await deferLater(reactor, 0.001, lambda: None)
        waited += 0.001
