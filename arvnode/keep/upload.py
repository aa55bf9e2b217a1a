"""The Keep PUT pipeline: client body → md5 + one writer per replica, in
bounded memory.

Why it is shaped like this (DESIGN.md §2–3, spec/put-path-measurements.md):

* **Batches, one in flight.** Body chunks (64 KiB reads) are collected into
  batches of ``batch_size`` bytes. Each batch goes, in parallel, to
  ``md5.update`` on the injected hash thread pool (hashlib releases the GIL for
  large buffers; the reactor thread never hashes more than a tiny tail) and to
  ``writer.write`` of every replica. The next batch starts only when all of
  that finished, which keeps the md5 and every file in order. While the next
  batch is already full, the client is paused; so one upload holds at most
  about two batches plus a read, whatever the block size
  (:attr:`UploadStats.max_held`).
* **Nothing is kept unless everything matched.** Writers are committed only
  after the whole body arrived and its md5 (and length) matched the locator;
  on a mismatch, a short body, a disconnect or an idle timeout every writer is
  aborted (temp data removed).
* **A failing replica is dropped, not fatal.** If one volume fails mid-write
  its writer is aborted and the others continue; the caller reports the
  replicas actually committed (``503`` when fewer than asked).
* ``POST /`` (the proxy computes the hash): the volumes to write depend on the
  hash, which is only known at the end, so batches are hashed as they come
  and kept until then. Memory is the body size (at most 64 MiB, counted in the
  global in-flight budget); no Arvados SDK uses POST.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any, Awaitable, Callable, Iterable, Sequence

from attrs import define, frozen
from twisted.internet.defer import CancelledError, Deferred, FirstError, gatherResults, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from arvnode.keep.volume import IBlockWriter, IVolume

__all__ = [
    "HashMismatch",
    "InflightBudget",
    "NoReplicas",
    "Replica",
    "UploadPipeline",
    "UploadResult",
    "UploadStats",
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
    """No volume could take the block (503)."""


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
) -> list[Replica]:
    """Open writers on as many writable volumes as the target needs.

    Volumes are taken in rendezvous order and opened in parallel; a volume
    that fails to open is replaced by the next useful one.
    """
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
                [shielded(v.open_write(hash, size), abort_quietly) for v in batch],
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
            else:
                opened.append(Replica(v, res))


def _settle(d: "Deferred[object]") -> "Deferred[tuple[bool, object]]":
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


def _hash_batch(md5: "hashlib._Hash", batch: bytes) -> None:
    md5.update(batch)


OpenLater = Callable[[str], Awaitable[list[Replica]]]


class UploadPipeline:
    """A :class:`arvnode.http.streaming.BodySink` for one upload.

    ``done`` fires with an :class:`UploadResult` once the block is committed
    on the surviving replicas, or fails with :class:`HashMismatch`,
    :class:`NoReplicas` or :class:`ClientGone` (after every writer was
    aborted). ``request`` only needs ``pause_body``/``resume_body``.
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
    ) -> None:
        if (replicas is None) == (open_later is None):
            raise ValueError("give replicas (known hash) or open_later (hash computed here)")
        self._request = request
        self._reactor = reactor
        self._pool = hash_pool
        self._batch_size = max(1, batch_size)
        self._length = length
        self._expected = expected_hash
        self._replicas: list[Replica] = replicas if replicas is not None else []
        self._open_later = open_later
        self._kept: list[bytes] | None = [] if open_later is not None else None
        self._stats = stats
        self._md5 = hashlib.md5()
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._inflight_len = 0
        self._inflight = False
        self._received = 0
        self._body_done = False
        self._over = False  # aborted or completing: ignore client events
        self._aborted = False
        self._held_reported = 0
        self.done: Deferred[UploadResult] = Deferred()

    # -- BodySink -------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._over:
            return
        self._received += len(data)
        self._pending.append(data)
        self._pending_len += len(data)
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

    # -- the pipeline ---------------------------------------------------------

    @property
    def held(self) -> int:
        """Body bytes this upload holds in memory now."""
        kept = sum(map(len, self._kept)) if self._kept is not None else 0
        return self._pending_len + self._inflight_len + kept

    def _account(self) -> None:
        held = self._pending_len + self._inflight_len
        self._stats.note(held, held - self._held_reported)
        self._held_reported = held

    def _pump(self) -> None:
        if self._over:
            return
        if not self._inflight:
            if self._pending_len >= self._batch_size or (self._body_done and self._pending_len):
                self._launch()
            elif self._body_done:
                self._over = True
                Deferred.fromCoroutine(self._complete()).addErrback(self._unexpected)
                return
        # Pause the client while a full batch waits behind the one in flight.
        if self._inflight and self._pending_len >= self._batch_size:
            self._request.pause_body()  # type: ignore[attr-defined]
        else:
            self._request.resume_body()  # type: ignore[attr-defined]

    def _launch(self) -> None:
        batch = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        self._pending_len = 0
        self._inflight = True
        self._inflight_len = len(batch)
        self._account()
        jobs: list[Deferred[object]] = []
        if len(batch) >= INLINE_HASH_LIMIT:
            jobs.append(deferToThreadPool(self._reactor, self._pool, _hash_batch, self._md5, batch))
        else:
            self._md5.update(batch)
        if self._kept is not None:
            self._kept.append(batch)
        for replica in self._live():
            jobs.append(replica.writer.write(batch).addErrback(self._replica_failed, replica))
        d: Deferred[object] = gatherResults(jobs, consumeErrors=True) if jobs else succeed(None)
        d.addCallbacks(self._batch_done, self._fatal)
        d.addErrback(self._unexpected)

    def _batch_done(self, _: object) -> None:
        self._inflight = False
        self._inflight_len = 0
        self._account()
        if self._over:
            return
        if self._open_later is None and not self._live():
            self._abort_all(NoReplicas("every volume failed while writing the block"))
            return
        self._pump()

    def _live(self) -> list[Replica]:
        return [r for r in self._replicas if not r.failed]

    def _replica_failed(self, f: Failure, replica: Replica) -> None:
        replica.failed = True
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
            self._abort_all(NoReplicas("no volume could store the block"))
            return
        results = await gatherResults(
            [_settle(r.writer.commit()) for r in live], consumeErrors=True
        )
        committed: list[IVolume] = []
        for replica, (ok, res) in zip(live, results):
            if not ok:
                assert isinstance(res, Failure)
                replica.failed = True
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
            self.done.errback(NoReplicas("no volume could commit the block"))
            return
        self.done.callback(UploadResult(digest, self._length, tuple(committed)))

    def _fatal(self, f: Failure) -> None:
        self._inflight = False
        self._inflight_len = 0
        self._account()
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

    def _release_memory(self) -> None:
        self._pending = []
        self._pending_len = 0
        self._kept = None
        self._account()

    def _unexpected(self, f: Failure) -> None:
        self.log.failure("upload pipeline bookkeeping failed", f)
