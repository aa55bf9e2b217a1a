"""Keep GET: stream a stored block to the client with backpressure, checking
its md5 on the way, and never let a corrupt block look complete.

Why: a block is up to 64 MiB and a client may read slowly, so the volume's
reader is driven as a push producer through the request (the transport's
"buffer full" pauses it); md5 runs on the hash pool alongside, fed a quarter
batch at a time through one queue so the hash thread never waits for the
reactor between pieces (the reader is also paused while more than two
batches, the upload window, wait to be hashed). The
md5 can only be judged after the last byte, so the last chunk is held back
until it is: on a mismatch the connection is aborted instead of finishing,
and the client sees a short body, never a complete-looking corrupt one
(DESIGN.md §2). The bad replica is remembered (:class:`BadReplicas`) so the
next read goes elsewhere.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict, deque
from typing import Any, Sequence

from attrs import define

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorFromThreads,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from arvnode.keep.rendezvous import sort_services
from arvnode.keep.upload import shielded
from arvnode.keep.volume import IBlockReader, IVolume

__all__ = ["BadReplicas", "VerifyingRelay", "RelayStats"]

INLINE_HASH_LIMIT = 64 * 1024


class BadReplicas:
    """``(volume uuid, hash)`` pairs known to hold corrupt data (bounded)."""

    def __init__(self, limit: int = 10000) -> None:
        self._limit = limit
        self._bad: OrderedDict[tuple[str, str], None] = OrderedDict()

    def add(self, volume_uuid: str, hash: str) -> None:
        self._bad[(volume_uuid, hash)] = None
        self._bad.move_to_end((volume_uuid, hash))
        while len(self._bad) > self._limit:
            self._bad.popitem(last=False)

    def discard(self, volume_uuid: str, hash: str) -> None:
        """Forget a pair (the block was rewritten there)."""
        self._bad.pop((volume_uuid, hash), None)

    def __contains__(self, key: object) -> bool:
        return key in self._bad

    def __len__(self) -> int:
        return len(self._bad)


@define
class Replica:
    """Where :func:`find_replica` found a block (``reader`` None for HEAD),
    or, with ``volume`` None, why it did not: the volumes that failed and
    whether a replica known to be corrupt was skipped."""

    volume: IVolume | None = None
    size: int = 0
    reader: Any = None
    errors: list[str] = []
    skipped_bad: bool = False


async def find_replica(
    volumes: Sequence[IVolume], hash: str, bad: BadReplicas, *, head: bool, log: Logger,
    request_id: str = "",
) -> Replica:
    """The first volume, in rendezvous order, that has ``hash``.

    HEAD asks for the size only; GET opens a reader (shielded: should the
    client leave meanwhile, a late reader is closed rather than leaked).
    Replicas known to be corrupt are skipped; a volume that fails is logged
    and passed over. Shared by the keepproxy and the keepstore API.
    ``request_id`` goes to the volumes (an upstream keepstore forwards it).
    """
    found = Replica(errors=[])
    for volume in sort_services(hash, list(volumes), key=lambda v: v.uuid):
        if (volume.uuid, hash) in bad:
            found.skipped_bad = True
            continue
        try:
            if head:
                size = await volume.stat(hash, request_id=request_id)
                reader = None
            else:
                ok, value = await shielded(
                    volume.open_read(hash, request_id=request_id),
                    lambda r: r is not None and r.close(),
                )
                if not ok:
                    value.raiseException()
                reader = value
                size = None if reader is None else int(reader.size)
        except CancelledError:
            raise
        except Exception as e:
            log.warn("volume {volume}: reading {hash} failed: {error}",
                     volume=volume.uuid, hash=hash, error=str(e))
            found.errors.append(f"{volume.uuid}: {e}")
            continue
        if size is not None:
            found.volume, found.size, found.reader = volume, int(size), reader
            return found
    return found


class RelayStats:
    """Per-node counters of what GETs hold, for tests and metrics."""

    def __init__(self) -> None:
        self.max_unhashed = 0  # high-water mark of bytes read but not yet hashed


def _hash_chunks(md5: "hashlib._Hash", chunks: list[bytes]) -> None:
    for chunk in chunks:
        md5.update(chunk)


class _HashQueue:
    """Lists of chunks hashed in order, back to back, on the hash pool.

    Why not one ``deferToThreadPool`` per batch (as before): between two jobs
    the hash thread waited for the reactor to notice the first one finished
    and submit the next, and the next batch could only start filling up
    then; on a GET the md5 is the one serial step (it bounds a single
    download at the md5 rate), so every idle gap of the hash thread was lost
    throughput. Like the PUT path's ``_HashLane`` (upload.py), one pool job
    drains what is queued, so with work queued the thread never idles;
    this one takes lists of chunks, so pieces are never joined (copied).
    After ``turn`` submissions a job requeues itself at the back of the
    pool's queue (no reactor hop), so GETs and uploads sharing the pool take
    turns instead of one fast download keeping a thread for a whole block.
    """

    turn = 4

    def __init__(self, reactor: IReactorFromThreads, pool: ThreadPool, md5: "hashlib._Hash") -> None:
        self._reactor = reactor
        self._pool = pool
        self._md5 = md5
        self._lock = threading.Lock()
        self._queue: deque[tuple[list[bytes], Deferred[None]]] = deque()
        self._running = False

    def submit(self, chunks: list[bytes], size: int) -> "Deferred[None]":
        with self._lock:
            idle = not self._running
            if idle and size < INLINE_HASH_LIMIT:
                inline = True  # a small tail: cheaper than a thread hop
            else:
                inline = False
                d: Deferred[None] = Deferred()
                self._queue.append((chunks, d))
                self._running = True
        if inline:
            try:
                _hash_chunks(self._md5, chunks)
            except Exception:
                return fail()
            return succeed(None)
        if idle:
            self._pool.callInThread(self._drain)
        return d

    def _drain(self) -> None:
        for _ in range(self.turn):
            with self._lock:
                if not self._queue:
                    self._running = False
                    return
                chunks, d = self._queue.popleft()
            result: object = None
            try:
                _hash_chunks(self._md5, chunks)
            except BaseException:
                result = Failure()
            self._reactor.callFromThread(_fire, d, result)
        self._pool.callInThread(self._drain)  # still running: the rest later


def _fire(d: "Deferred[None]", result: object) -> None:
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(None)


@implementer(IConsumer, IPushProducer)
class VerifyingRelay:
    """Consumer for an :class:`IBlockReader`, producer for the request.

    :meth:`run` returns the outcome: ``"ok"`` (all bytes sent, md5 matched,
    request finished), ``"corrupt"`` (md5 or length mismatch: connection
    aborted), ``"gone"`` (client went away), ``"error"`` (read failed after
    the headers went out: connection aborted), or ``"stalled"`` (client did
    not read for ``stall_timeout``: connection aborted).
    """

    log = Logger()

    def __init__(
        self,
        request: Any,
        *,
        expected_hash: str,
        size: int,
        reactor: IReactorFromThreads,
        clock: IReactorTime,
        hash_pool: ThreadPool,
        batch_size: int,
        stall_timeout: float,
        stats: RelayStats,
    ) -> None:
        self._request = request
        self.outcome = ""  # what run() returned, once it has
        self._expected = expected_hash
        self._size = size
        self._reactor = reactor
        self._clock = clock
        self._pool = hash_pool
        self._batch_size = max(1, batch_size)
        # Hand pieces to the hash thread a quarter batch at a time, and let
        # it fall at most two batches (the upload window) behind the reader.
        self._granule = max(INLINE_HASH_LIMIT, self._batch_size // 4)
        self._window = 2 * self._batch_size
        self._stall_timeout = stall_timeout
        self._stats = stats
        self._md5 = hashlib.md5()
        self._hasher = _HashQueue(reactor, hash_pool, self._md5)
        self._reader: Any = None
        self._holds: set[str] = set()
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._hashing: Deferred[None] | None = None  # the newest submission
        self._hashing_len = 0  # bytes submitted and not hashed yet
        self._held: list[bytes] = []
        self._read = 0
        self._overflow = False
        self._stall: IDelayedCall | None = None
        self._stalled = False
        self.bytes_sent = 0

    # -- IConsumer (for the block reader) --------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._reader = producer
        self._request.registerProducer(self, True)

    def unregisterProducer(self) -> None:
        self._reader = None
        if self._request.channel is not None and self._request.producer is not None:
            self._request.unregisterProducer()

    def write(self, data: bytes) -> None:
        self._read += len(data)
        if self._read > self._size:
            self._overflow = True
            return
        if self._read == self._size:
            self._held.append(data)  # sent only once the md5 is known good
        else:
            self._request.write(data)
            self.bytes_sent += len(data)
        self._pending.append(data)
        self._pending_len += len(data)
        self._note()
        self._pump()

    # -- IPushProducer (for the request) ---------------------------------------

    def pauseProducing(self) -> None:
        self._hold("transport")
        if self._stall is None and self._stall_timeout > 0:
            self._stall = self._clock.callLater(self._stall_timeout, self._stalled_out)

    def resumeProducing(self) -> None:
        if self._stall is not None:
            if self._stall.active():
                self._stall.cancel()
            self._stall = None
        self._release("transport")

    def stopProducing(self) -> None:
        reader = self._reader
        if reader is not None:
            reader.stopProducing()

    # -- running ------------------------------------------------------------------

    async def run(self, reader: IBlockReader) -> str:
        # A client that goes away stops the disk reads too.
        self._request.notifyFinish().addErrback(lambda _: self.stopProducing())
        try:
            await reader.produce(self)
        except Exception as e:
            self._cancel_stall()
            if self._stalled:
                return "stalled"
            if self._request.gone:
                return "gone"
            self.log.warn(
                "reading {hash} failed after the headers were sent: {error}",
                hash=self._expected,
                error=str(e),
            )
            self._abort()
            return "error"
        self._cancel_stall()
        if self._pending:
            self._launch()
        # Submissions are hashed in order: once the newest is done, all are.
        while self._hashing is not None:
            await self._hashing
        if self._request.gone:
            return "gone"
        digest = self._md5.hexdigest()
        if self._overflow or self._read != self._size or digest != self._expected:
            self._abort()
            return "corrupt"
        for chunk in self._held:
            self._request.write(chunk)
            self.bytes_sent += len(chunk)
        self._held = []
        self._request.finish()
        return "ok"

    @property
    def digest(self) -> str:
        return self._md5.hexdigest()

    @property
    def bytes_read(self) -> int:
        return self._read

    # -- internals ---------------------------------------------------------------

    def _note(self) -> None:
        unhashed = self._pending_len + self._hashing_len
        if unhashed > self._stats.max_unhashed:
            self._stats.max_unhashed = unhashed

    def _hold(self, reason: str) -> None:
        if reason in self._holds:
            return
        first = not self._holds
        self._holds.add(reason)
        if first and self._reader is not None:
            self._reader.pauseProducing()

    def _release(self, reason: str) -> None:
        if reason not in self._holds:
            return
        self._holds.discard(reason)
        if not self._holds and self._reader is not None:
            self._reader.resumeProducing()

    def _pump(self) -> None:
        if self._pending_len >= self._granule:
            self._launch()
        if self._pending_len + self._hashing_len > self._window:
            self._hold("hash")
        else:
            self._release("hash")

    def _launch(self) -> None:
        chunks, self._pending = self._pending, []
        n, self._pending_len = self._pending_len, 0
        self._hashing_len += n
        d = self._hasher.submit(chunks, n)
        self._hashing = d
        d.addBoth(self._hashed, n, d)

    def _hashed(self, result: object, n: int, d: "Deferred[None]") -> object:
        self._hashing_len -= n
        if self._hashing is d:
            self._hashing = None
        if isinstance(result, Failure):
            self.log.failure("hashing a block failed", result)
            self._overflow = True  # cannot vouch for the data: treat as corrupt
        self._pump()
        return None

    def _stalled_out(self) -> None:
        self._stall = None
        self._stalled = True
        self.log.info(
            "client stopped reading {hash} for {timeout}s; dropping it",
            hash=self._expected,
            timeout=self._stall_timeout,
        )
        self._abort()

    def _cancel_stall(self) -> None:
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None

    def _abort(self) -> None:
        channel = self._request.channel
        if channel is not None and channel.transport is not None:
            channel.transport.abortConnection()


async def relay_replica(
    server: Any, request: Any, volume: IVolume, reader: Any, hash: str, size: int,
) -> VerifyingRelay:
    """Stream a stored replica to ``request`` through a :class:`VerifyingRelay`.

    ``server`` is the keepproxy or the keepstore API (both have ``reactor``,
    ``clock``, ``hash_pool``, ``batch_size``, ``idle_timeout``,
    ``relay_stats``, ``metrics``, ``bad_replicas`` and ``log``). A replica
    found corrupt on the way is counted, logged and avoided from then on;
    the relay has already aborted the client's connection.
    """
    relay = VerifyingRelay(
        request, expected_hash=hash, size=size, reactor=server.reactor, clock=server.clock,
        hash_pool=server.hash_pool, batch_size=server.batch_size,
        stall_timeout=server.idle_timeout, stats=server.relay_stats,
    )
    relay.outcome = await relay.run(reader)
    server.metrics.bytes.labels(direction="out").inc(relay.bytes_sent)
    if relay.outcome == "corrupt":
        server.bad_replicas.add(volume.uuid, hash)
        server.metrics.corrupt_blocks.labels(volume=volume.uuid).inc()
        server.log.error(
            "volume {volume}: stored block {hash} is corrupt (read {read} bytes, md5 {digest});"
            " connection aborted, replica avoided from now on",
            volume=volume.uuid, hash=hash, read=relay.bytes_read, digest=relay.digest,
        )
    return relay
