"""The built-in balancer: trash the blocks that no collection references.

Why: deleting a collection frees no disk; Arvados' keep-balance finds the
blocks nothing references and has keepstores trash them. A cluster of
arvnodes has no keep-balance, so one of its nodes runs this pass (the
"balancer" service, :mod:`arvnode.keep.balance_service`; or ``arvnode
keep balance``).

One pass:

1. **Referenced set.** Every row of the collections table, read in batches
   of ``batch_size`` by uuid (:meth:`Store.scan_manifests`): live,
   trashed-but-not-deleted (they can be untrashed) and old versions alike.
   Each manifest is parsed on the store's worker thread and reduced to its
   block hashes there, so only one batch of manifests is ever in memory.
   The set holds 16-byte digests: about 85-110 MB per million distinct
   blocks (a 16-byte ``bytes`` object is ~56 bytes, its set slot 16-32).
   Then a catch-up read of the rows modified since the pass began (less
   ``CATCH_UP_MARGIN``): the batches are no snapshot, and a block moved
   during the scan from a row not yet read to one already passed would
   otherwise be in neither read (:meth:`Balancer._referenced`).
2. **Indexes**, read after the scan, one hex prefix (``0`` .. ``f``) at a
   time so that a big volume's listing is held a sixteenth at a time, of
   every writable volume that offers ``trash`` (directory and S3 volumes,
   and upstream keepstores whose volume object implements it).
3. **Trash** each replica whose hash is not referenced and whose mtime is
   older than (pass start - ``BlobSigningTTL``), with
   ``volume.trash(hash, mtime_ns)``, at most ``BlobTrashConcurrency`` at
   a time (and at most ``MAX_QUEUED`` queued before the pass waits for
   them). The volume re-checks the mtime, so a block written again
   since the index was read stays.
4. **Repair**, per prefix once every volume's index of it was read: a
   referenced hash live on none of the listed volumes is looked up in the
   ``trashed_index`` of each volume offering it (directory and S3; not
   upstream keepstores) and untrashed there. Such a block is in trash
   although referenced: an S3 PUT that landed between a trash's last
   mtime check and its DELETE (S3 has no lock), or a collection saved from
   locators signed before an older one was deleted. Without this it
   would be deleted for good after ``BlobTrashLifetime``. Memory: no
   second set of every hash; the scan counts the referenced hashes per
   prefix, and only a prefix whose live referenced hashes (a sixteenth of
   the set, at most) are fewer than that count is looked up in trash.

Safety, since losing a referenced block is the worst possible bug:

* The scan must be complete. Any error, a manifest that does not parse,
  or ``BalanceTimeout`` passing before the scan is done: the pass trashes
  **nothing** and logs why.
* Too new: a client may hold a signed locator (valid ``BlobSigningTTL``)
  for a block it has not saved in a collection yet. A locator from a PUT
  comes with a fresh mtime (a PUT of a stored block touches it), so a
  block older than the cutoff has none; a collection saved while the scan
  runs is covered the same way. A locator read from a collection is
  covered while that collection's row exists (trashed ones included),
  and a row saved during the scan by the catch-up read; the volume's
  ``BlobTrashLifetime`` is the last line of defence.
* ``BlobTrash: false`` or a dry run: counts only, nothing trashed. The
  repair untrashes under ``BlobTrash: false`` too (it only ever keeps);
  a dry run reports what it would untrash.
* The empty block is never trashed (it is implicit everywhere).
* Once the scan is complete each trash call is safe on its own: a volume
  whose index fails is skipped for the pass, and past ``BalanceTimeout``
  or once :meth:`Balancer.stop` was called (the node is stopping) no
  further trash call starts (``stopped`` says so).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from attrs import define, field
from prometheus_client import Counter, Gauge
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    TimeoutError,
    gatherResults,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from arvnode.keep.locator import EMPTY_BLOCK_HASH
from arvnode.keep.manifest import ManifestError, locators

__all__ = ["BalanceAborted", "BalanceMetrics", "Balancer", "PassResult", "manifest_digests",
           "trashable_volumes"]

PREFIXES = tuple("0123456789abcdef")
EMPTY_DIGEST = bytes.fromhex(EMPTY_BLOCK_HASH)
DEFAULT_BATCH = 200  # collection rows per database round trip
MAX_QUEUED = 10_000  # trash calls queued (waiting for the semaphore) before the pass waits
#: The catch-up scan reads rows modified since (pass start - this), seconds.
CATCH_UP_MARGIN = 600.0


class BalanceAborted(Exception):
    """The collection scan (or an index) was incomplete: nothing may be trashed."""


@define
class PassResult:
    """The numbers of one pass (replica counts: a block on two volumes counts twice)."""

    started_at: float = 0.0
    finished_at: float = 0.0
    dry_run: bool = False    # nothing trashed (a dry run, or BlobTrash false)
    repair_dry_run: bool = False  # nothing untrashed (a dry run only)
    aborted: str = ""        # why the pass trashed nothing ("" when it completed)
    collections: int = 0     # collection rows scanned
    rescanned: int = 0       # rows read again by the catch-up scan (modified during the pass)
    referenced: int = 0      # distinct block hashes those rows reference
    seen: int = 0            # replicas listed by the volumes' indexes
    unreferenced: int = 0    # replicas whose hash no collection references
    too_new: int = 0         # of those, skipped: mtime newer than start - BlobSigningTTL
    candidates: int = 0      # of those, old enough to trash
    candidate_bytes: int = 0
    trashed: int = 0         # replicas the volumes moved to their trash
    trashed_bytes: int = 0   # bytes freed (to trash)
    queued: int = 0          # accepted by a keepstore that trashes later (outcome unknown)
    queued_bytes: int = 0
    refused: int = 0         # trash() said no (touched since the index, or BlobTrash off there)
    failed: int = 0          # trash() raised or timed out
    index_errors: int = 0    # volumes skipped because their index failed
    untrashed: int = 0       # replicas of referenced blocks restored from trash (dry run: would be)
    untrash_failed: int = 0  # untrash() raised or timed out
    trash_index_errors: int = 0  # trashed_index() calls that failed
    not_found: int = 0       # referenced hashes live nowhere listed and in no volume's trash
    stopped: str = ""        # why the trash phase ended early (BalanceTimeout), if it did
    volumes: list[str] = field(factory=list)

    @property
    def ok(self) -> bool:
        return not self.aborted

    def summary(self) -> str:
        if self.aborted:
            return f"aborted, nothing trashed: {self.aborted}"
        verb = "would trash" if self.dry_run else "trashed"
        done = (f"{self.candidates} ({self.candidate_bytes} bytes)" if self.dry_run
                else f"{self.trashed} ({self.trashed_bytes} bytes)")
        if self.queued:
            done += (f", sent {self.queued} ({self.queued_bytes} bytes) to keepstores'"
                     " trash lists")
        return (f"{self.collections} collections referencing {self.referenced} blocks; "
                f"{len(self.volumes)} volumes: {self.seen} blocks seen, "
                f"{self.seen - self.unreferenced} referenced, {self.unreferenced} unreferenced, "
                f"{self.too_new} too new; {verb} {done}"
                + ("" if self.dry_run else f", {self.refused} refused, {self.failed} failed")
                + self._repair_summary()
                + (f"; {self.index_errors} volume index(es) failed" if self.index_errors else "")
                + (f"; stopped early: {self.stopped}" if self.stopped else ""))


    def _repair_summary(self) -> str:
        out = ""
        if self.untrashed:
            verb = "would untrash" if self.repair_dry_run else "untrashed"
            out += f"; {verb} {self.untrashed} referenced block(s) found only in trash"
        if self.untrash_failed:
            out += f"; {self.untrash_failed} untrash call(s) failed"
        if self.trash_index_errors:
            out += f"; {self.trash_index_errors} trash listing(s) failed"
        if self.not_found:
            out += (f"; {self.not_found} referenced block(s) on none of these volumes,"
                    " live or trashed")
        return out


def manifest_digests(uuid: str, manifest_text: str) -> frozenset[bytes]:
    """The 16-byte digests of every block a stored manifest references.

    Runs on the store's worker thread. Raises :class:`ManifestError` (with
    the collection's uuid) if the manifest does not parse: the caller must
    then trash nothing, since it cannot know what that collection needs.
    """
    try:
        return frozenset(bytes.fromhex(loc.hash) for loc in locators(manifest_text))
    except ManifestError as e:
        raise ManifestError(e.line, f"collection {uuid}: {e.reason}") from None


def _has_trashed_index(volume: Any) -> bool:
    return callable(getattr(volume, "trashed_index", None))


def trashable_volumes(volumes: Iterable[Any]) -> list[Any]:
    """The volumes a pass works on: writable, and offering the contract's ``trash``."""
    return [v for v in volumes
            if not getattr(v, "read_only", False) and callable(getattr(v, "trash", None))]


class BalanceMetrics:
    """``arvnode_balance_*`` gauges of the last pass, on the node's registry."""

    # metric name -> (PassResult attribute, help)
    _GAUGES = {
        "arvnode_balance_collections": ("collections", "Collection records scanned."),
        "arvnode_balance_blocks_referenced": ("referenced",
                                              "Distinct blocks those collections reference."),
        "arvnode_balance_blocks_seen": ("seen", "Block replicas listed by the volumes."),
        "arvnode_balance_blocks_unreferenced": ("unreferenced",
                                                "Replicas no collection references."),
        "arvnode_balance_blocks_too_new": ("too_new", "Unreferenced replicas kept because"
                                           " they are newer than BlobSigningTTL."),
        "arvnode_balance_blocks_trashed": ("trashed", "Replicas moved to trash."),
        "arvnode_balance_trashed_bytes": ("trashed_bytes", "Bytes moved to trash."),
        "arvnode_balance_trash_refused": ("refused", "Trash calls the volume refused"
                                          " (block touched since it was listed)."),
        "arvnode_balance_trash_failed": ("failed", "Trash calls that failed."),
        "arvnode_balance_blocks_untrashed": ("untrashed", "Replicas of referenced blocks"
                                             " found only in trash and untrashed."),
    }

    def __init__(self, registry: Any) -> None:
        self.gauges = {
            attr: Gauge(name, f"{doc} (last balance pass)", registry=registry)
            for name, (attr, doc) in self._GAUGES.items()
        }
        self.last_pass = Gauge("arvnode_balance_last_pass_timestamp_seconds",
                               "When the last balance pass finished (UTC epoch).",
                               registry=registry)
        self.duration = Gauge("arvnode_balance_last_pass_duration_seconds",
                              "How long the last balance pass took.", registry=registry)
        self.aborted = Gauge("arvnode_balance_last_pass_aborted",
                             "1 if the last balance pass trashed nothing because its collection"
                             " scan was incomplete.", registry=registry)
        self.passes = Counter("arvnode_balance_passes", "Balance passes, by outcome.",
                              ["outcome"], registry=registry)

    def record(self, result: PassResult) -> None:
        self.passes.labels(outcome="aborted" if result.aborted else "ok").inc()
        self.last_pass.set(result.finished_at)
        self.duration.set(max(0.0, result.finished_at - result.started_at))
        self.aborted.set(1 if result.aborted else 0)
        for key, gauge in self.gauges.items():
            gauge.set(getattr(result, key))


class Balancer:
    """One balancing pass over ``store`` and ``volumes`` (see the module doc).

    ``volumes`` is read at each pass (the node appends the keepstores it
    discovers at start to the same list).
    """

    log = Logger()

    def __init__(
        self,
        store: Any,
        volumes: Sequence[Any],
        *,
        clock: IReactorTime,
        signing_ttl: float,
        blob_trash: bool = True,
        trash_concurrency: int = 4,
        timeout: float = 6 * 3600.0,
        batch_size: int = DEFAULT_BATCH,
        metrics: BalanceMetrics | None = None,
    ) -> None:
        self._store = store
        self._volumes = volumes
        self._clock = clock
        self.signing_ttl = float(signing_ttl)
        self.blob_trash = blob_trash
        self.trash_concurrency = max(1, int(trash_concurrency))
        self.timeout = float(timeout)
        self.batch_size = max(1, int(batch_size))
        self.metrics = metrics
        self.last: PassResult | None = None
        self._stopping = False
        self._waiting: Deferred[Any] | None = None  # what the pass awaits in _within
        # run_pass's report_untrash, for this pass (passes never overlap).
        self._report_untrash: Callable[[Any, str], None] | None = None

    def stop(self) -> None:
        """The node is stopping: end a pass in flight soon (a scan aborts, no
        further trash call starts; the calls in flight finish). Why: a pass
        may run for ``BalanceTimeout`` (hours) and stopping waits for it."""
        self._stopping = True
        if self._waiting is not None:
            self._waiting.cancel()

    def resume(self) -> None:
        """Undo :meth:`stop` (the service was started again)."""
        self._stopping = False

    async def run_pass(
        self, *, dry_run: bool = False,
        report: Callable[[Any, str, int, int], None] | None = None,
        report_untrash: Callable[[Any, str], None] | None = None,
    ) -> PassResult:
        """One pass now. ``report(volume, hash, size, mtime_ns)`` is called for every
        replica trashed (dry run: that would be trashed), ``report_untrash(volume,
        hash)`` for every referenced replica untrashed (dry run: that would be).
        Never raises for a failed scan: ``aborted`` in the result says why nothing
        was trashed."""
        now = self._clock.seconds()
        deadline = now + self.timeout
        result = PassResult(started_at=now, dry_run=dry_run or not self.blob_trash,
                            repair_dry_run=dry_run)
        self._report_untrash = report_untrash
        volumes = trashable_volumes(self._volumes)
        result.volumes = [v.uuid for v in volumes]
        try:
            referenced, per_prefix = await self._referenced(result, deadline)
        except BalanceAborted as e:
            result.aborted = str(e)
        except Exception as e:  # anything unexpected: same rule, trash nothing
            result.aborted = f"the collection scan failed: {type(e).__name__}: {e}"
            self.log.failure("balance: collection scan failed")
        else:
            try:
                await self._sweep(result, referenced, per_prefix, volumes, deadline,
                                  now - self.signing_ttl, report)
            except Exception:
                result.stopped = result.stopped or "unexpected error (logged)"
                self.log.failure("balance: trash phase failed")
        result.finished_at = self._clock.seconds()
        if result.aborted:
            self.log.warn("balance pass aborted, nothing trashed: {why}", why=result.aborted)
        else:
            if not self.blob_trash and not dry_run:
                self.log.info("balance: Collections.BlobTrash is false, nothing trashed")
            self.log.info("balance pass: {summary}", summary=result.summary())
        self.last = result
        if self.metrics is not None:
            self.metrics.record(result)
        return result

    async def _within(self, d: Deferred[Any], deadline: float, what: str) -> Any:
        """``await d``, but at most until ``deadline`` and not once :meth:`stop`
        was called: BalanceAborted otherwise."""
        left = deadline - self._clock.seconds()
        if left <= 0 or self._stopping:
            d.cancel()
            if self._stopping:
                raise BalanceAborted(f"the node is stopping ({what} not done)")
            raise BalanceAborted(f"BalanceTimeout ({self.timeout:g}s) passed before {what}")
        d.addTimeout(left, self._clock)
        self._waiting = d
        try:
            return await d
        except CancelledError:
            if not self._stopping:
                raise BalanceAborted(f"{what} was cancelled") from None
            raise BalanceAborted(f"the node is stopping ({what} not done)") from None
        except TimeoutError:
            raise BalanceAborted(
                f"BalanceTimeout ({self.timeout:g}s) passed during {what}") from None
        except Exception as e:
            raise BalanceAborted(f"{what} failed: {type(e).__name__}: {e}") from None
        finally:
            self._waiting = None

    async def _referenced(self, result: PassResult,
                          deadline: float) -> tuple[set[bytes], list[int]]:
        """The digests every collection row references: a scan of the whole
        table by uuid, then a catch-up read of the rows modified since the
        pass began.

        Why the catch-up: the batches are not one snapshot. A client that
        moves an old block from a collection the scan has not reached yet
        into one whose uuid it has passed (save the new one, then update
        the old one: moving files) would leave the block in neither read;
        its mtime is old, so BlobSigningTTL does not protect it. The new
        row's modified_at is after the pass began, so the catch-up sees it.
        ``CATCH_UP_MARGIN`` covers a request that took its timestamp just
        before the pass began and committed after, and clock skew between
        nodes sharing a PostgreSQL database.

        Also how many distinct referenced hashes each prefix (``0``..``f``)
        has: the repair step compares that with the live ones it lists.
        """
        referenced: set[bytes] = set()
        per_prefix = [0] * len(PREFIXES)
        result.collections = await self._scan(referenced, per_prefix, deadline, None)
        result.rescanned = await self._scan(
            referenced, per_prefix, deadline, result.started_at - CATCH_UP_MARGIN)
        result.referenced = len(referenced)
        return referenced, per_prefix

    async def _scan(self, referenced: set[bytes], per_prefix: list[int], deadline: float,
                    modified_since: float | None) -> int:
        """Add the digests of the rows (modified since ``modified_since``, if given)
        to ``referenced`` and count the new ones by prefix in ``per_prefix``, a
        batch at a time; the number of rows read."""
        kw = {} if modified_since is None else {"modified_since": modified_since}
        what = "the collection scan" if modified_since is None else "the catch-up scan"
        rows = 0
        after = ""
        while True:
            batch = await self._within(
                Deferred.fromCoroutine(
                    self._store.scan_manifests(after, self.batch_size, manifest_digests, **kw)),
                deadline, what)
            for _uuid, digests in batch:
                for digest in digests - referenced:
                    per_prefix[digest[0] >> 4] += 1
                referenced.update(digests)
            rows += len(batch)
            if len(batch) < self.batch_size:
                return rows
            after = batch[-1][0]

    async def _sweep(self, result: PassResult, referenced: set[bytes], per_prefix: list[int],
                     volumes: Sequence[Any], deadline: float, cutoff: float,
                     report: Callable[[Any, str, int, int], None] | None) -> None:
        """Indexes, prefix by prefix; trash (or count) the old unreferenced replicas,
        then repair the prefix (:meth:`_repair`).

        The scan is complete here, so every trash call is safe on its own: a
        volume whose index fails is skipped for the rest of the pass, and
        past the deadline no new call starts (``stopped`` says so).
        """
        cutoff_ns = int(cutoff * 1e9)
        semaphore = DeferredSemaphore(self.trash_concurrency)
        broken: set[str] = set()
        work: list[Deferred[None]] = []

        async def queue(call: Callable[..., Any], *args: Any) -> None:
            nonlocal work
            work.append(semaphore.run(lambda *a: Deferred.fromCoroutine(call(*a)), *args))
            if len(work) >= MAX_QUEUED:  # bound what waits for the semaphore
                await gatherResults(work)
                work = []

        for p, prefix in enumerate(PREFIXES):
            # The referenced hashes of this prefix seen live (a sixteenth of
            # ``referenced`` at most); the empty block needs no copy.
            live: set[bytes] = set()
            if prefix == EMPTY_BLOCK_HASH[0] and EMPTY_DIGEST in referenced:
                live.add(EMPTY_DIGEST)
            for volume in volumes:
                if volume.uuid in broken:
                    continue
                try:
                    entries = await self._within(
                        Deferred.fromCoroutine(_index(volume, prefix)), deadline,
                        f"the index of volume {volume.uuid}")
                except BalanceAborted as e:
                    if self._stopping or self._clock.seconds() >= deadline:
                        result.stopped = str(e)
                        break
                    broken.add(volume.uuid)
                    result.index_errors += 1
                    self.log.warn("balance: skipping volume {volume} for this pass: {why}",
                                  volume=volume.uuid, why=str(e))
                    continue
                for hash, size, mtime_ns in entries:
                    result.seen += 1
                    digest = bytes.fromhex(hash)
                    if digest in referenced:
                        live.add(digest)
                        continue
                    if not _candidate(result, cutoff_ns, hash, size, mtime_ns):
                        continue
                    if result.dry_run:
                        if report is not None:
                            report(volume, hash, size, mtime_ns)
                        continue
                    await queue(self._trash_one, result, volume, hash, size, mtime_ns,
                                deadline, report)
            if result.stopped:
                break
            if len(live) < per_prefix[p]:
                await self._repair(result, referenced, live, per_prefix[p], prefix, volumes,
                                   deadline, queue)
                if result.stopped:
                    break
        await gatherResults(work)
        if result.stopped:
            self.log.warn("balance pass stopped early: {why}", why=result.stopped)

    async def _repair(self, result: PassResult, referenced: set[bytes], live: set[bytes],
                      wanted: int, prefix: str, volumes: Sequence[Any], deadline: float,
                      queue: Callable[..., Any]) -> None:
        """Untrash the referenced hashes of ``prefix`` that are not ``live`` from
        every volume whose ``trashed_index`` has them. Only called when some
        are missing (``len(live) < wanted``), so a pass over a healthy cluster
        lists no trash at all."""
        restored: set[bytes] = set()
        for volume in volumes:
            if not _has_trashed_index(volume):
                continue  # an upstream keepstore: its trash cannot be listed
            try:
                hashes = await self._within(
                    Deferred.fromCoroutine(_trashed_index(volume, prefix)), deadline,
                    f"the trash listing of volume {volume.uuid}")
            except BalanceAborted as e:
                if self._stopping or self._clock.seconds() >= deadline:
                    result.stopped = str(e)
                    return
                result.trash_index_errors += 1
                self.log.warn("balance: cannot list the trash of volume {volume}: {why}",
                              volume=volume.uuid, why=str(e))
                continue
            for hash in hashes:
                digest = bytes.fromhex(hash)
                if digest not in referenced or digest in live:
                    continue
                restored.add(digest)
                if result.repair_dry_run:
                    result.untrashed += 1
                    self.log.warn("balance: would untrash {hash} on {volume}: referenced,"
                                  " live on no volume, found in trash",
                                  hash=hash, volume=volume.uuid)
                    if self._report_untrash is not None:
                        self._report_untrash(volume, hash)
                    continue
                await queue(self._untrash_one, result, volume, hash, deadline)
        result.not_found += wanted - len(live) - len(restored)

    async def _untrash_one(self, result: PassResult, volume: Any, hash: str,
                           deadline: float) -> None:
        left = deadline - self._clock.seconds()
        if self._stopping:
            result.stopped = "the node is stopping"
            return
        if left <= 0:
            result.stopped = f"BalanceTimeout ({self.timeout:g}s) passed during the trash phase"
            return
        d = volume.untrash(hash)
        d.addTimeout(left, self._clock)
        try:
            done = await d
        except Exception as e:
            result.untrash_failed += 1
            self.log.warn("balance: untrash {hash} on {volume} failed: {error}",
                          hash=hash, volume=volume.uuid, error=f"{type(e).__name__}: {e}")
            return
        if not done:  # emptied meanwhile (its lifetime ended): nothing to restore
            self.log.warn("balance: {hash} on {volume} was referenced but its trashed copy"
                          " is gone", hash=hash, volume=volume.uuid)
            return
        result.untrashed += 1
        self.log.warn("balance: untrashed {hash} on {volume}: referenced, live on no volume,"
                      " found in trash", hash=hash, volume=volume.uuid)
        if self._report_untrash is not None:
            self._report_untrash(volume, hash)

    async def _trash_one(self, result: PassResult, volume: Any, hash: str, size: int,
                         mtime_ns: int, deadline: float,
                         report: Callable[[Any, str, int, int], None] | None) -> None:
        left = deadline - self._clock.seconds()
        if self._stopping:
            result.stopped = "the node is stopping"
            return
        if left <= 0:
            result.stopped = f"BalanceTimeout ({self.timeout:g}s) passed during the trash phase"
            return
        d = volume.trash(hash, mtime_ns)
        d.addTimeout(left, self._clock)
        try:
            done = await d
        except Exception as e:
            result.failed += 1
            self.log.warn("balance: trash {hash} on {volume} failed: {error}",
                          hash=hash, volume=volume.uuid, error=f"{type(e).__name__}: {e}")
            return
        if not done:
            result.refused += 1
            return
        if getattr(volume, "trash_is_queued", False):
            # A keepstore's PUT /trash: accepted, not done; a later list
            # replaces what it has not worked on yet. Not counted as trashed.
            result.queued += 1
            result.queued_bytes += size
        else:
            result.trashed += 1
            result.trashed_bytes += size
        if report is not None:
            report(volume, hash, size, mtime_ns)


def _candidate(result: PassResult, cutoff_ns: int,
               hash: str, size: int, mtime_ns: int) -> bool:
    """Count one listed replica that no collection references in ``result``: is
    it not the empty block, and older than the cutoff (pass start - BlobSigningTTL)?"""
    result.unreferenced += 1
    if hash == EMPTY_BLOCK_HASH or mtime_ns > cutoff_ns:
        result.too_new += 1
        return False
    result.candidates += 1
    result.candidate_bytes += size
    return True


async def _index(volume: Any, prefix: str) -> list[tuple[str, int, int]]:
    return list(await volume.index(prefix))


async def _trashed_index(volume: Any, prefix: str) -> list[str]:
    return list(await volume.trashed_index(prefix))
