"""The Keep PUT pipeline: client body → md5 + one writer per replica, in
bounded memory.

Why it is shaped like this (DESIGN.md §2–3, spec/put-path-measurements.md):

* **Reusable batch buffers, hashed back to back.** The body lands in
  ``batch_size`` buffers (half the upload window, 4 MiB by default) taken
  from a node-wide :class:`BufferPool`: on plain TCP it is received straight
  into them by ``recv_into`` (:meth:`UploadPipeline.body_buffer`, the fast
  path of :mod:`arvnode.http.streaming`), otherwise Twisted's chunks are
  copied in. Each full buffer goes, in parallel, to ``md5.update`` on the
  injected hash thread pool (hashlib releases the GIL for large buffers;
  the reactor never hashes more than a tiny tail) and to ``writer.write`` of
  every replica (the directory volume writes on its own pool, with early
  writeback and drop-behind). An upload holds at most two buffers, so at
  most two batches are in flight; the second one's md5 is queued on the
  upload's :class:`_HashLane` and starts the moment the first one's ends
  (no reactor round trip in between: measured +10-15 % for one client over
  strictly one batch in flight), and each writer still gets one batch at a
  time, in order. While no buffer has room, the client is paused; so one
  upload holds at most the window plus one read, whatever the block size
  (:attr:`UploadStats.max_held`), and the pool caps all uploads together.
* **Nothing is kept unless everything matched.** Writers are committed only
  after the whole body arrived and its md5 (and length) matched the locator;
  on a mismatch, a short body, a disconnect or an idle timeout every writer is
  aborted (temp data removed).
* **A failing replica is dropped, not fatal.** If one volume fails mid-write
  its writer is aborted and the others continue; the caller reports the
  replicas actually committed (``503`` when fewer than asked).
* ``POST /`` (the proxy computes the hash) streams too: volumes that can
  *spool* (``open_spool(size)`` → a writer with ``commit_as(hash)``) are
  written as the body arrives and the block is named once its md5 is known.
  Only if some writable volume cannot spool are batches kept in memory until
  the end (at most 64 MiB, counted in the global in-flight budget).
* Writers that say ``reusable_buffers = True`` get views of the pooled
  buffers; any other writer gets a private copy of each batch, since it
  might keep a reference after its Deferred fired.
"""
from __future__ import annotations

import hashlib
import threading
from collections import Counter, deque
from typing import Any, Awaitable, Callable, Iterable, Sequence

from attrs import define, frozen
from twisted.internet.defer import CancelledError, Deferred, FirstError, gatherResults
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from arvnode.keep.volume import IBlockWriter, IVolume, VolumeFull

__all__ = [
    "HashMismatch",
    "InflightBudget",
    "NoReplicas",
    "Replica",
    "UploadPipeline",
    "UploadResult",
    "UploadStats",
    "all_full",
    "confirmed_classes",
    "open_replicas",
]

#: Below this, hashing on the reactor is cheaper than a thread hop.
INLINE_HASH_LIMIT = 64 * 1024


class HashMismatch(Exception):
    """The body's md5 is not the hash in the locator (a client error: 422)."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(
            f"md5 of the uploaded data is {actual}, not {expected} as in the locator"
        )
        self.expected = expected
        self.actual = actual


class NoReplicas(Exception):
    """No volume could take the block (503).

    ``full`` is true when every volume tried failed for want of space
    (:class:`VolumeFull`): the keepstore API then answers 507
    ``insufficient storage`` (spec §5.2).
    """

    def __init__(self, message: str, *, full: bool = False) -> None:
        super().__init__(message)
        self.full = full

    @classmethod
    def because(cls, what: str, errors: Sequence[BaseException]) -> "NoReplicas":
        """``what``, the volumes' reasons, and whether they were all "full"."""
        reasons = "; ".join(str(e) or e.__class__.__name__ for e in errors)
        return cls(f"{what}: {reasons}" if reasons else what, full=all_full(errors))


def all_full(errors: Sequence[BaseException]) -> bool:
    """True when there were failures and every one was a full volume."""
    return bool(errors) and all(isinstance(e, VolumeFull) for e in errors)


class ClientGone(Exception):
    """The client went away (or timed out) before the upload completed."""


@define
class UploadStats:
    """Memory accounting for uploads, for metrics and tests."""

    held: int = 0  # bytes held by all uploads now
    max_held: int = 0  # high-water mark of one upload's held bytes

    def note(self, upload_held: int, delta: int) -> None:
        self.held += delta
        if upload_held > self.max_held:
            self.max_held = upload_held


class InflightBudget:
    """Declared upload bytes in flight across the node, with a cap.

    An upload is admitted when it fits under ``limit``, or when nothing else
    is in flight (so a cap below the largest block can never starve every
    upload).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.uploads = 0

    def try_acquire(self, n: int) -> bool:
        if self.uploads and self.used + n > self.limit:
            return False
        self.used += n
        self.uploads += 1
        return True

    def release(self, n: int) -> None:
        self.used -= n
        self.uploads -= 1


@define(eq=False)
class Replica:
    """One volume being written."""

    volume: IVolume
    writer: IBlockWriter
    failed: bool = False
    error: BaseException | None = None  # why it failed, once it did


@frozen
class UploadResult:
    hash: str
    size: int
    committed: tuple[IVolume, ...]

    @property
    def replicas(self) -> int:
        return sum(int(v.replication) for v in self.committed)


def confirmed_classes(
    volumes: Iterable[IVolume], requested: Sequence[str]
) -> dict[str, int]:
    """True replica count per class: the requested classes, or (none
    requested) every class of the volumes written."""
    counts: Counter[str] = Counter()
    for v in volumes:
        for cls in v.storage_classes:
            counts[cls] += int(v.replication)
    if requested:
        return {cls: counts.get(cls, 0) for cls in requested}
    return dict(counts)


def _satisfied(volumes: Sequence[IVolume], desired: int, classes: Sequence[str]) -> bool:
    if sum(int(v.replication) for v in volumes) < desired:
        return False
    counts = confirmed_classes(volumes, classes)
    return all(counts[c] >= desired for c in classes)


def _useful(
    candidate: IVolume, have: Sequence[IVolume], desired: int, classes: Sequence[str]
) -> bool:
    if classes:
        counts = confirmed_classes(have, classes)
        return any(counts[c] < desired for c in classes if c in candidate.storage_classes)
    return sum(int(v.replication) for v in have) < desired


def choose(
    candidates: Sequence[IVolume], have: Sequence[IVolume], desired: int, classes: Sequence[str]
) -> list[IVolume]:
    """The next volumes (in the given rendezvous order) that together would
    close the gap between ``have`` and the target."""
    picked: list[IVolume] = []
    for v in candidates:
        if _satisfied(list(have) + picked, desired, classes):
            break
        if _useful(v, list(have) + picked, desired, classes):
            picked.append(v)
    return picked


async def open_replicas(
    hash: str,
    size: int,
    ordered: Sequence[IVolume],
    desired: int,
    classes: Sequence[str],
    log: Logger,
    opener: Callable[[IVolume], "Deferred[IBlockWriter]"] | None = None,
    *,
    request_id: str = "",
    errors: list[BaseException] | None = None,
) -> list[Replica]:
    """Open writers on as many writable volumes as the target needs.

    Volumes are taken in rendezvous order and opened in parallel; a volume
    that fails to open is replaced by the next useful one, and its error is
    appended to ``errors`` (so the caller can tell "all full" from "broken").
    ``opener`` opens one (default: ``volume.open_write(hash, size,
    request_id=request_id)``; POST uses spools).
    """
    if opener is None:
        opener = lambda v: v.open_write(hash, size, request_id=request_id)  # noqa: E731
    remaining = [v for v in ordered if not v.read_only]
    opened: list[Replica] = []
    while True:
        have = [r.volume for r in opened]
        batch = choose(remaining, have, desired, classes)
        if not batch:
            return opened
        for v in batch:
            remaining.remove(v)
        try:
            results = await gatherResults(
                [shielded(opener(v), abort_quietly) for v in batch],
                consumeErrors=True,
            )
        except BaseException as e:
            # Cancelled (client gone): nothing opened so far may stay open.
            for r in opened:
                abort_quietly(r.writer)
            if isinstance(e, FirstError) and e.subFailure.check(CancelledError):
                raise CancelledError("upload cancelled while opening writers") from None
            raise
        for v, (ok, res) in zip(batch, results):
            if not ok:
                assert isinstance(res, Failure)
                log.warn(
                    "volume {volume}: cannot open a write for {hash}: {error}",
                    volume=v.uuid,
                    hash=hash,
                    error=res.getErrorMessage(),
                )
                if errors is not None:
                    errors.append(res.value)
            else:
                opened.append(Replica(v, res))


def _settle(d: "Deferred[Any]") -> "Deferred[tuple[bool, object]]":
    """``(True, result)`` or ``(False, failure)``: never fails."""
    return d.addCallbacks(lambda r: (True, r), lambda f: (False, f))


def abort_quietly(writer: IBlockWriter) -> None:
    """Abort ``writer``, logging (not raising) a failure."""
    writer.abort().addErrback(lambda f: Logger().failure("aborting a block write failed", f))


def shielded(d: "Deferred[Any]", discard: Callable[[Any], object]) -> "Deferred[tuple[bool, Any]]":
    """Like :func:`_settle`, but cancelling the result does not cancel ``d``
    (a volume job on a thread cannot be stopped): when ``d`` arrives after
    the cancellation, its value is handed to ``discard`` (abort the writer,
    close the reader) instead of leaking."""
    out: Deferred[tuple[bool, Any]] = Deferred()

    def arrived(result: object) -> None:
        ok = not isinstance(result, Failure)
        if out.called:  # cancelled meanwhile
            if ok:
                try:
                    discard(result)
                except Exception:
                    Logger().failure("discarding a late volume result failed")
            return None
        out.callback((ok, result))
        return None

    d.addBoth(arrived)
    return out


#: The attribute a block writer sets (true) to say that ``write(data)`` is done
#: with ``data`` once its Deferred fired, so the caller may refill the same
#: buffer. Writers without it get a private copy of every batch.
REUSABLE_BUFFERS = "reusable_buffers"


class BufferPool:
    """Reusable batch buffers shared by every upload, with a global cap.

    Why: the fast body path (:mod:`arvnode.http.streaming`) ``recv_into``\ s
    straight into these buffers, so a 4 MiB batch costs no allocation, no
    page faults and no ``b"".join`` copy (spec/put-path-measurements.md). The
    cap bounds the node's upload memory whatever the number of uploads: an
    upload that finds no free buffer waits (its client paused, its idle
    timeout suspended) until another upload returns one. Each upload holds
    at most two buffers (one in flight, one filling) and never needs a
    second to finish the first, so waiting cannot deadlock.
    """

    def __init__(self, size: int, limit: int) -> None:
        self.size = max(1, size)
        self.limit = max(2, limit)
        self.allocated = 0
        self._free: list[bytearray] = []
        self._waiters: deque[Callable[[bytearray], None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def take(self) -> bytearray | None:
        """A buffer now, or None when the cap is reached."""
        if self._free:
            return self._free.pop()
        if self.allocated < self.limit:
            self.allocated += 1
            return bytearray(self.size)
        return None

    def wait(self, callback: Callable[[bytearray], None]) -> Callable[[], None]:
        """Call ``callback(buffer)`` when one is given back (FIFO); returns a
        function that withdraws the wait."""
        self._waiters.append(callback)

        def cancel() -> None:
            try:
                self._waiters.remove(callback)
            except ValueError:
                pass

        return cancel

    def give(self, buf: bytearray) -> None:
        if self._waiters:
            self._waiters.popleft()(buf)
        else:
            self._free.append(buf)


class _HashLane:
    """The md5 of one upload, updated batch after batch on the hash pool.

    Why not one ``deferToThreadPool`` per batch: between two jobs the pool
    thread would wait for the reactor to notice the first one finished and
    submit the next (a millisecond or more on a busy machine, per 4 MiB
    batch). A lane runs queued batches back to back in one pool job, so with
    the next batch already queued the hash thread never idles; order is
    kept because a lane has at most one job running.
    """

    def __init__(self, reactor: IReactorFromThreads, pool: ThreadPool, md5: "hashlib._Hash") -> None:
        self._reactor = reactor
        self._pool = pool
        self._md5 = md5
        self._lock = threading.Lock()
        self._queue: deque[tuple[Any, Deferred[object]]] = deque()
        self._running = False

    def submit(self, batch: Any) -> "Deferred[object]":
        d: Deferred[object] = Deferred()
        with self._lock:
            self._queue.append((batch, d))
            start = not self._running
            self._running = True
        if start:
            if len(batch) < INLINE_HASH_LIMIT:
                self._drain(inline=True)  # a small tail: cheaper than a thread hop
            else:
                self._pool.callInThread(self._drain)
        return d

    def _drain(self, inline: bool = False) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    return
                batch, d = self._queue.popleft()
            result: object = None
            try:
                self._md5.update(batch)
            except BaseException:
                result = Failure()
            if inline:
                _fire(d, result)
            else:
                self._reactor.callFromThread(_fire, d, result)


def _fire(d: "Deferred[object]", result: object) -> None:
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)


OpenLater = Callable[[str], Awaitable[list[Replica]]]


class UploadPipeline:
    """A :class:`arvnode.http.streaming.BufferedBodySink` for one upload.

    ``done`` fires with an :class:`UploadResult` once the block is committed
    on the surviving replicas, or fails with :class:`HashMismatch`,
    :class:`NoReplicas` or :class:`ClientGone` (after every writer was
    aborted). ``request`` only needs ``pause_body``/``resume_body``.

    Three ways to know where the block goes: ``replicas`` opened for
    ``expected_hash`` (PUT); ``replicas`` opened as *spools* with no hash
    (``POST /``: each writer's ``commit_as(digest)`` names the block once the
    md5 is known); or ``open_later`` (POST on volumes that cannot spool:
    batches are kept in memory until the hash is known, counted in the
    global in-flight budget).

    Body bytes arrive either as ``write(data)`` (Twisted's read path: copied
    into the current buffer) or, on the fast path, straight into the buffer
    that :meth:`body_buffer` hands out (``recv_into``), reported by
    :meth:`body_filled`.
    """

    log = Logger()

    def __init__(
        self,
        *,
        request: object,
        reactor: IReactorFromThreads,
        hash_pool: ThreadPool,
        batch_size: int,
        length: int,
        expected_hash: str | None,
        replicas: list[Replica] | None = None,
        open_later: OpenLater | None = None,
        stats: UploadStats,
        buffers: BufferPool | None = None,
    ) -> None:
        if (replicas is None) == (open_later is None):
            raise ValueError("give replicas (known hash or spools) or open_later (hash computed here)")
        self._request = request
        self._reactor = reactor
        self._pool = hash_pool
        self._buffers = buffers if buffers is not None else BufferPool(max(1, batch_size), 2)
        self._batch_size = self._buffers.size
        self._early = max(INLINE_HASH_LIMIT, self._batch_size // 4)
        self._length = length
        self._expected = expected_hash
        self._replicas: list[Replica] = replicas if replicas is not None else []
        self._spooled = replicas is not None and expected_hash is None
        self._open_later = open_later
        self._kept: list[bytes] | None = [] if open_later is not None else None
        self._stats = stats
        self._md5 = hashlib.md5()
        self._fill: bytearray | None = None  # buffer being filled
        self._fill_len = 0
        self._spare: bytearray | None = None  # returned by a finished batch
        self._overflow: list[bytes] = []  # chunks that arrived with no room
        self._overflow_len = 0
        self._cancel_wait: Callable[[], None] | None = None
        #: Batches launched and not finished: (buffer, length), in body order.
        self._inflight: list[tuple[bytearray, int]] = []
        self._inflight_len = 0
        self._lane = _HashLane(reactor, hash_pool, self._md5)
        self._last_write: dict[int, Deferred[object]] = {}
        self._received = 0
        self._body_done = False
        self._over = False  # aborted or completing: ignore client events
        self._aborted = False
        self._held_reported = 0
        self._pumping = False
        self._repump = False
        self.done: Deferred[UploadResult] = Deferred()

    # -- BodySink -------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._over or not data:
            return
        self._received += len(data)
        view = memoryview(data)
        while view:
            if self._overflow or not self._room():
                # No buffer to copy into: park the rest (at most one read:
                # the body is paused below).
                self._park(view)
                break
            assert self._fill is not None
            n = min(len(view), self._batch_size - self._fill_len)
            self._fill[self._fill_len : self._fill_len + n] = view[:n]
            self._fill_len += n
            view = view[n:]
            self._launch_full()
        self._account()
        self._pump()

    def body_buffer(self) -> memoryview | None:
        """Where the next body bytes may be received, or None (no room now:
        the body is paused, and resumed when there is)."""
        if self._over or self._overflow or not self._room():
            self._pump()
            return None
        assert self._fill is not None
        return memoryview(self._fill)[self._fill_len :]

    def body_filled(self, n: int) -> None:
        """``n`` bytes were received at the start of the last :meth:`body_buffer`."""
        if self._over:
            return
        self._received += n
        self._fill_len += n
        self._launch_full()
        self._account()
        self._pump()

    def finish(self) -> None:
        if self._over:
            return
        self._body_done = True
        self._pump()

    def fail(self, reason: Failure) -> None:
        if self._over:
            return
        self._abort_all(ClientGone(reason.getErrorMessage()))

    # -- buffers ----------------------------------------------------------------

    def _park(self, view: memoryview) -> None:
        self._overflow.append(bytes(view))
        self._overflow_len += len(view)

    def _room(self) -> bool:
        """True when the fill buffer exists and is not full (getting one if
        this upload may hold another)."""
        if self._fill is None and not self._get_fill():
            return False
        return self._fill_len < self._batch_size

    def _get_fill(self) -> bool:
        """Make sure a fill buffer exists. An upload holds at most two
        buffers (its window); past that it waits for its own batches, and
        when the pool is empty it queues for one (client paused)."""
        if self._fill is not None:
            return True
        if self._cancel_wait is not None or self._over:
            return False
        buf, self._spare = self._spare, None
        if buf is None:
            if len(self._inflight) >= 2:
                return False
            buf = self._buffers.take()
        if buf is None:
            self._cancel_wait = self._buffers.wait(self._buffer_arrived)
            return False
        self._fill, self._fill_len = buf, 0
        return True

    def _buffer_arrived(self, buf: bytearray) -> None:
        self._cancel_wait = None
        if self._over or self._fill is not None:
            self._buffers.give(buf)
            return
        self._fill, self._fill_len = buf, 0
        self._pump()

    def _drain_overflow(self) -> None:
        """Move parked chunks into fill buffers, in order, while there is room."""
        while self._overflow and self._room():
            assert self._fill is not None
            chunk = self._overflow[0]
            n = min(len(chunk), self._batch_size - self._fill_len)
            self._fill[self._fill_len : self._fill_len + n] = chunk[:n]
            self._fill_len += n
            if n == len(chunk):
                self._overflow.pop(0)
            else:
                self._overflow[0] = chunk[n:]
            self._overflow_len -= n
            self._launch_full()

    def _give_back(self, buf: bytearray) -> None:
        """A batch buffer is free again: keep it (next fill) or share it."""
        if self._over:
            self._buffers.give(buf)
        elif self._fill is None:
            if self._cancel_wait is not None:
                cancel, self._cancel_wait = self._cancel_wait, None
                cancel()
            self._fill, self._fill_len = buf, 0
        elif self._spare is None and not self._buffers.waiting:
            self._spare = buf
        else:
            self._buffers.give(buf)

    # -- the pipeline ---------------------------------------------------------

    @property
    def held(self) -> int:
        """Body bytes this upload holds in memory now."""
        kept = sum(map(len, self._kept)) if self._kept is not None else 0
        return self._fill_len + self._overflow_len + self._inflight_len + kept

    def _account(self) -> None:
        held = self._fill_len + self._overflow_len + self._inflight_len
        self._stats.note(held, held - self._held_reported)
        self._held_reported = held

    def _launch_full(self) -> None:
        """Launch the fill buffer when full; or, with nothing in flight (the
        hash thread idle for this upload: at the start, after a stall), as
        soon as a quarter of it is there rather than leave md5 waiting."""
        if self._fill is None or len(self._inflight) >= 2:
            return
        if self._fill_len >= self._batch_size or (
            not self._inflight and self._fill_len >= self._early
        ):
            self._launch()

    def _pump(self) -> None:
        # A batch can finish synchronously (a writer failing at once, a tiny
        # tail hashed inline) and call back in here: run one pass at a time.
        if self._pumping:
            self._repump = True
            return
        self._pumping = True
        try:
            self._repump = True
            while self._repump and not self._over:
                self._repump = False
                self._pump_once()
        finally:
            self._pumping = False

    def _pump_once(self) -> None:
        if self._overflow:
            self._drain_overflow()
        self._launch_full()
        if self._over:
            return
        if self._body_done and self._fill_len and not self._overflow and len(self._inflight) < 2:
            self._launch()
            if self._over:
                return
        if self._body_done and not self._inflight and not self._fill_len and not self._overflow:
            self._over = True
            self._release_buffers()
            Deferred.fromCoroutine(self._complete()).addErrback(self._unexpected)
            return
        # Read on only while there is room for the next bytes.
        if self._overflow or not self._room():
            self._request.pause_body()  # type: ignore[attr-defined]
        else:
            self._request.resume_body()  # type: ignore[attr-defined]

    def _launch(self) -> None:
        """Hash and write the fill buffer. Up to two batches are in flight:
        their md5 updates run back to back on one hash lane (no reactor round
        trip between them) and each writer gets its batches one after the
        other (the next ``write`` only once the previous one fired)."""
        assert self._fill is not None and len(self._inflight) < 2
        buf, n = self._fill, self._fill_len
        self._fill, self._fill_len = None, 0
        self._inflight.append((buf, n))
        self._inflight_len += n
        self._account()
        batch = memoryview(buf)[:n]
        jobs: list[Deferred[object]] = [self._lane.submit(batch)]
        copy: bytes | None = None
        if self._kept is not None:
            copy = bytes(batch)
            self._kept.append(copy)
        for replica in self._live():
            data: Any = batch
            if not getattr(replica.writer, REUSABLE_BUFFERS, False):
                if copy is None:
                    copy = bytes(batch)
                data = copy
            jobs.append(self._write_after(replica, data))
        # Settled, so the buffer is only reused once every job let go of it.
        d = gatherResults([_settle(j) for j in jobs], consumeErrors=True)
        d.addCallback(self._batch_settled, buf, n)
        d.addErrback(self._unexpected)

    def _batch_settled(self, results: list[tuple[bool, object]], buf: bytearray, n: int) -> None:
        for ok, value in results:
            if not ok:
                assert isinstance(value, Failure)
                self._fatal(value, buf, n)
                return
        self._batch_done(None, buf, n)

    def _write_after(self, replica: Replica, data: Any) -> "Deferred[object]":
        """``replica.writer.write(data)`` once its previous write fired."""
        key = id(replica)
        prev = self._last_write.get(key)
        # Any: it is chained from the writer's Deferred[None] and read as
        # one of the batch's Deferred[object] jobs (Deferred is invariant).
        out: Deferred[Any] = Deferred()

        def go(_: object = None) -> None:
            if replica.failed or self._aborted:
                out.callback(None)
                return
            replica.writer.write(data).addErrback(self._replica_failed, replica).chainDeferred(out)

        if prev is None or prev.called:
            go()
        else:
            prev.addBoth(go)
        mine: Deferred[object] = Deferred()

        def release(result: object) -> object:
            mine.callback(None)
            return result

        out.addBoth(release)
        self._last_write[key] = mine
        return out

    def _end_batch(self, buf: bytearray, n: int) -> None:
        for i, (b, _) in enumerate(self._inflight):
            if b is buf:
                del self._inflight[i]
                self._inflight_len -= n
                break
        self._give_back(buf)
        self._account()

    def _batch_done(self, _: object, buf: bytearray, n: int) -> None:
        self._end_batch(buf, n)
        if self._over:
            return
        if self._open_later is None and not self._live():
            self._abort_all(self._no_replicas("every volume failed while writing the block"))
            return
        self._pump()

    def _live(self) -> list[Replica]:
        return [r for r in self._replicas if not r.failed]

    def _no_replicas(self, what: str) -> NoReplicas:
        return NoReplicas.because(what, [r.error for r in self._replicas if r.error is not None])

    def _replica_failed(self, f: Failure, replica: Replica) -> None:
        replica.failed = True
        if replica.error is None:
            replica.error = f.value
        self.log.warn(
            "volume {volume}: write of {hash} failed, dropping this replica: {error}",
            volume=replica.volume.uuid,
            hash=self._expected or "(POST)",
            error=f.getErrorMessage(),
        )
        replica.writer.abort().addErrback(
            lambda f2: self.log.failure("abort after a failed write", f2)
        )

    async def _complete(self) -> None:
        if self._received != self._length:
            # The channel only finishes a body at its declared length; be safe.
            self._abort_all(ClientGone(f"body ended after {self._received} of {self._length} bytes"))
            return
        digest = self._md5.hexdigest()
        if self._expected is not None and digest != self._expected:
            self._abort_all(HashMismatch(self._expected, digest))
            return
        if self._open_later is not None:
            try:
                self._replicas = await self._open_later(digest)
                kept, self._kept = self._kept or [], None
                for batch in kept:
                    live = self._live()
                    await gatherResults(
                        [r.writer.write(batch).addErrback(self._replica_failed, r) for r in live],
                        consumeErrors=True,
                    )
            except Exception as e:
                self.log.failure("POST: storing the computed block failed")
                self._abort_all(NoReplicas(f"could not store the block: {e}"))
                return
        live = self._live()
        if not live:
            self._abort_all(self._no_replicas("no volume could store the block"))
            return
        if self._spooled:
            commits = [_settle(r.writer.commit_as(digest)) for r in live]  # type: ignore[attr-defined]
        else:
            commits = [_settle(r.writer.commit()) for r in live]
        results = await gatherResults(commits, consumeErrors=True)
        committed: list[IVolume] = []
        for replica, (ok, res) in zip(live, results):
            if not ok:
                assert isinstance(res, Failure)
                replica.failed = True
                replica.error = res.value
                self.log.warn(
                    "volume {volume}: commit of {hash} failed: {error}",
                    volume=replica.volume.uuid,
                    hash=digest,
                    error=res.getErrorMessage(),
                )
                replica.writer.abort().addErrback(lambda f: None)
            else:
                committed.append(replica.volume)
        self._release_memory()
        if not committed:
            self.done.errback(self._no_replicas("no volume could commit the block"))
            return
        self.done.callback(UploadResult(digest, self._length, tuple(committed)))

    def _fatal(self, f: Failure, buf: bytearray, n: int) -> None:
        self._end_batch(buf, n)
        if self._aborted:
            return
        self.log.failure("upload pipeline failed", f)
        self._abort_all(NoReplicas(f"internal error: {f.getErrorMessage()}"))

    def _abort_all(self, error: Exception) -> None:
        if self._aborted:
            return
        self._aborted = True
        self._over = True
        self._release_memory()
        aborts = [r.writer.abort().addErrback(self._abort_failed, r) for r in self._replicas]

        def report(_: object) -> None:
            self.done.errback(Failure(error))

        gatherResults(aborts, consumeErrors=True).addBoth(report)

    def _abort_failed(self, f: Failure, replica: Replica) -> None:
        self.log.failure("volume {volume}: abort failed", f, volume=replica.volume.uuid)

    def _release_buffers(self) -> None:
        """Hand every buffer not in flight back to the pool."""
        if self._cancel_wait is not None:
            cancel, self._cancel_wait = self._cancel_wait, None
            cancel()
        for buf in (self._fill, self._spare):
            if buf is not None:
                self._buffers.give(buf)
        self._fill = self._spare = None
        self._fill_len = 0

    def _release_memory(self) -> None:
        self._release_buffers()
        self._overflow = []
        self._overflow_len = 0
        self._kept = None
        self._account()

    def _unexpected(self, f: Failure) -> None:
        self.log.failure("upload pipeline bookkeeping failed", f)
