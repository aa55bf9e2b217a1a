"""The built-in balancer (arvnode/keep/balance.py, balance_service.py, ``arvnode keep balance``).

End to end on SQLite and PostgreSQL: a real node in this process with a
directory volume; blocks written through its keepproxy, collections saved
and trashed through its API; block ages set on the files themselves
(``os.utime``), since the age is what the safety rule is about. The pass
itself, the service's timing and the safety rules around failures run
against the real store with a small volume that records trash calls
(:class:`RecordingVolume`), on a ``task.Clock``.
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredSemaphore, succeed
from twisted.internet.task import Clock, deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from arvnode.cli import main as cli_main
from arvnode.config import config_from_string
from arvnode.keep import balance
from arvnode.keep.balance import Balancer, BalanceMetrics, PassResult, manifest_digests
from arvnode.keep.balance_service import SERVICE_NAME, BalancerService, balancer_role
from arvnode.keep.manifest import ManifestError
from arvnode.keep.trash import TrashPolicy
from arvnode.keep.volumes import s3trash
from arvnode.keep.volumes.s3 import S3Volume
from arvnode.keep.volumes.s3_params import parse_s3_parameters
from arvnode.keep.volumes.upstream import UpstreamKeepstore
from arvnode.node import build_node
from arvnode.store import KINDS
from arvnode.web.metrics import NodeMetrics
from tests import pgfixture
from tests.api.base import ApiTestCase
from tests.helpers import make_cluster_config, subprocess_env
from tests.keep.test_block_trash import ShiftedClock
from tests.keep.test_s3_volume import MotoTestCase
from tests.store.helpers import PostgreSQLEngine, SQLiteEngine

C = KINDS["collections"]
HOUR = 3600.0
OWNER = "zzzzz-tpzed-aaaaaaaaaaaaaaa"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def manifest_of(*blocks: bytes) -> str:
    locs = " ".join(f"{md5(b)}+{len(b)}" for b in blocks)
    return f". {locs} 0:{sum(len(b) for b in blocks)}:f.txt\n"


class RecordingVolume:
    """A volume with the contract's ``index``/``trash``: lists ``blocks``
    (hash -> (size, mtime_ns)), records every trash call, and trashes for
    real in its dict. While ``holding``, trash calls wait for :meth:`release`."""

    read_only = False

    def __init__(self, uuid: str, blocks: dict[str, tuple[int, int]]) -> None:
        self.uuid = uuid
        self.blocks = dict(blocks)
        self.trash_calls: list[tuple[str, int | None]] = []
        self.holding = False  # trash calls wait for release()
        self._waiters: list[Deferred[None]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.index_error: Exception | None = None

    def index(self, prefix: str) -> Deferred[list[tuple[str, int, int]]]:
        if self.index_error is not None:
            return Deferred.fromCoroutine(self._raise(self.index_error))
        return succeed(sorted((h, s, m) for h, (s, m) in self.blocks.items()
                              if h.startswith(prefix)))

    @staticmethod
    async def _raise(e: Exception) -> Any:
        raise e

    def trash(self, hash: str, mtime_ns: int | None = None) -> Deferred[bool]:
        return Deferred.fromCoroutine(self._trash(hash, mtime_ns))

    async def _trash(self, hash: str, mtime_ns: int | None) -> bool:
        self.trash_calls.append((hash, mtime_ns))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.holding:
                waiter: Deferred[None] = Deferred()
                self._waiters.append(waiter)
                await waiter
        finally:
            self.in_flight -= 1
        if hash not in self.blocks or (mtime_ns is not None and self.blocks[hash][1] != mtime_ns):
            return False
        del self.blocks[hash]
        return True

    def release(self) -> None:
        self.holding = False
        waiting, self._waiters = self._waiters, []
        for d in waiting:
            d.callback(None)

    def stop(self) -> Deferred[None]:
        return succeed(None)


class TrashListingVolume(RecordingVolume):
    """A RecordingVolume with a trash: ``trashed`` (hash -> size) is what
    ``trashed_index`` lists (each call's prefix recorded) and ``untrash``
    makes live again."""

    def __init__(self, uuid: str, blocks: dict[str, tuple[int, int]],
                 trashed: dict[str, int]) -> None:
        super().__init__(uuid, blocks)
        self.trashed = dict(trashed)
        self.trashed_index_calls: list[str] = []
        self.untrash_calls: list[str] = []
        self.untrash_error: Exception | None = None

    def trashed_index(self, prefix: str) -> Deferred[list[str]]:
        self.trashed_index_calls.append(prefix)
        return succeed(sorted(h for h in self.trashed if h.startswith(prefix)))

    def untrash(self, hash: str) -> Deferred[bool]:
        return Deferred.fromCoroutine(self._untrash(hash))

    async def _untrash(self, hash: str) -> bool:
        self.untrash_calls.append(hash)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.holding:
                waiter: Deferred[None] = Deferred()
                self._waiters.append(waiter)
                await waiter
        finally:
            self.in_flight -= 1
        if self.untrash_error is not None:
            raise self.untrash_error
        if hash not in self.trashed:
            return False
        self.blocks[hash] = (self.trashed.pop(hash), time.time_ns())
        return True


def names_with_distinct_prefixes(count: int) -> list[str]:
    """``count`` block contents whose md5s start with different hex digits."""
    out: dict[str, str] = {}
    for i in range(1000):
        name = f"n{i}"
        out.setdefault(md5(name.encode())[0], name)
        if len(out) == count:
            return list(out.values())
    raise AssertionError("not enough names")


# -- the pass, against the real store ------------------------------------------------------


class PassTestsMixin:
    """One pass over a real store and RecordingVolumes, on a task.Clock at T0."""

    clock: Clock

    async def setup_store(self) -> Any:
        self.store = await self.started()  # type: ignore[attr-defined]
        return self.store

    async def coll(self, *blocks: bytes, **values: Any) -> str:
        text = manifest_of(*blocks)
        row = await self.store.create_object(C, {
            "owner_uuid": OWNER, "manifest_text": text,
            "portable_data_hash": f"{md5(text.encode())}+{len(text)}", **values})
        return str(row["uuid"])

    def volume(self, **ages: float) -> RecordingVolume:
        """Blocks named by their content (keyword) aged ``ages[name]`` seconds."""
        now = self.clock.seconds()
        return RecordingVolume("zzzzz-nyw5e-000000000000001", {
            md5(name.encode()): (len(name), int((now - age) * 1e9)) for name, age in ages.items()})

    def balancer(self, volumes: list[Any], **kw: Any) -> Balancer:
        kw.setdefault("signing_ttl", 2 * HOUR)
        return Balancer(self.store, volumes, clock=self.clock, **kw)

    async def test_referenced_kept_old_orphan_trashed_young_orphan_kept(self) -> None:
        """Live, trashed (not deleted) and old-version rows all protect their blocks;
        an unreferenced block is trashed only when older than BlobSigningTTL."""
        await self.setup_store()
        live = await self.coll(b"live")
        binned = await self.coll(b"binned")
        await self.store.update_object(C, binned, {  # trashed now, deleted in ten years
            "trash_at": "2023-11-14T22:13:20Z", "delete_at": "2033-11-14T22:13:20Z"})
        version = await self.coll(b"version")  # a stored old version of "live"
        await self.store._run(lambda cur: cur.execute(
            "UPDATE collections SET current_version_uuid = ? WHERE uuid = ?", (live, version)),
            write=True)
        vol = self.volume(live=3 * HOUR, binned=3 * HOUR, version=3 * HOUR,
                          old=3 * HOUR, young=HOUR)
        result = await self.balancer([vol]).run_pass()
        self.assertEqual(result.aborted, "")
        self.assertEqual(vol.trash_calls, [(md5(b"old"), vol.trash_calls[0][1])])
        self.assertEqual(sorted(vol.blocks), sorted(md5(n) for n in
                                                    (b"live", b"binned", b"version", b"young")))
        self.assertEqual(
            (result.collections, result.referenced, result.seen, result.unreferenced,
             result.too_new, result.trashed, result.trashed_bytes),
            (3, 3, 5, 2, 1, 1, 3))

    async def test_trash_call_names_the_listed_mtime(self) -> None:
        """The mtime the index gave goes with the trash call: a block touched since is
        refused by the volume and counted as such."""
        await self.setup_store()
        vol = self.volume(old=3 * HOUR)
        listed = vol.blocks[md5(b"old")][1]

        real_trash = vol.trash

        def touched_meanwhile(hash: str, mtime_ns: int | None = None) -> Deferred[bool]:
            vol.blocks[hash] = (3, listed + 1)
            return real_trash(hash, mtime_ns)

        vol.trash = touched_meanwhile  # type: ignore[method-assign]
        result = await self.balancer([vol]).run_pass()
        self.assertEqual(vol.trash_calls, [(md5(b"old"), listed)])
        self.assertEqual((result.trashed, result.refused), (0, 1))
        self.assertIn(md5(b"old"), vol.blocks)

    async def test_scan_reads_in_batches(self) -> None:
        """Every row is read though the batch is smaller than the table."""
        await self.setup_store()
        names = [f"b{i}".encode() for i in range(7)]
        for n in names:
            await self.coll(n)
        vol = self.volume(**{n.decode(): 3 * HOUR for n in names}, orphan=3 * HOUR)
        result = await self.balancer([vol], batch_size=2).run_pass()
        self.assertEqual((result.collections, result.referenced), (7, 7))
        self.assertEqual([h for h, _ in vol.trash_calls], [md5(b"orphan")])

    async def test_block_moved_between_collections_during_the_scan_is_kept(self) -> None:
        """A client moves an old block from a collection the scan has not reached yet
        to a new one whose uuid it has passed (save the new, then update the old: what
        moving files does). Paging by uuid alone sees the block in neither; the
        catch-up read of rows modified since the pass began keeps it."""
        await self.setup_store()
        late = await self.coll(b"moved", uuid="zzzzz-4zz18-zzzzzzzzzzzzzzz")
        for i in range(3):
            await self.coll(f"f{i}".encode(), uuid=f"zzzzz-4zz18-mmmmmmmmmmmmmm{i}")
        store = self.store
        test = self

        class MoveDuringScan:
            calls = 0

            async def scan_manifests(self, *a: Any, **kw: Any) -> Any:
                batch = await store.scan_manifests(*a, **kw)
                MoveDuringScan.calls += 1
                if MoveDuringScan.calls == 1:
                    await test.coll(b"moved", uuid="zzzzz-4zz18-000000000000000")
                    text = manifest_of(b"f0")
                    await store.update_object(C, late, {
                        "manifest_text": text,
                        "portable_data_hash": f"{md5(text.encode())}+{len(text)}"})
                return batch

        vol = self.volume(moved=3 * HOUR, f0=3 * HOUR, f1=3 * HOUR, f2=3 * HOUR,
                          orphan=3 * HOUR)
        result = await Balancer(MoveDuringScan(), [vol], clock=self.clock,
                                signing_ttl=2 * HOUR, batch_size=2).run_pass()
        self.assertEqual(result.aborted, "")
        self.assertIn(md5(b"moved"), vol.blocks)
        self.assertEqual([h for h, _ in vol.trash_calls], [md5(b"orphan")])

    async def test_keepstore_trash_lists_are_counted_as_sent_not_trashed(self) -> None:
        """An upstream keepstore's trash() only says its PUT /trash was accepted
        (a later list replaces what it has not done yet): the pass reports such
        blocks as sent, never as trashed."""
        await self.setup_store()
        vol = self.volume(old=3 * HOUR)
        vol.trash_is_queued = True  # type: ignore[attr-defined]
        self.assertTrue(UpstreamKeepstore.trash_is_queued)
        result = await self.balancer([vol]).run_pass()
        self.assertEqual((result.trashed, result.trashed_bytes, result.queued,
                          result.queued_bytes), (0, 0, 1, 3))
        self.assertIn("sent 1 (3 bytes)", result.summary())

    async def test_unparsable_manifest_trashes_nothing(self) -> None:
        """One stored manifest that does not parse: the pass is aborted, says which
        collection, and trashes nothing at all."""
        await self.setup_store()
        await self.coll(b"live")
        bad = await self.coll(b"other")
        await self.store._run(lambda cur: cur.execute(
            "UPDATE collections SET manifest_text = ? WHERE uuid = ?",
            (". not-a-locator 0:1:f\n", bad)), write=True)
        vol = self.volume(old=3 * HOUR, live=3 * HOUR)
        registry = NodeMetrics().registry
        result = await self.balancer([vol], metrics=BalanceMetrics(registry)).run_pass()
        self.assertIn(bad, result.aborted)
        self.assertEqual(vol.trash_calls, [])
        self.assertEqual(registry.get_sample_value("arvnode_balance_last_pass_aborted"), 1)
        self.assertEqual(registry.get_sample_value("arvnode_balance_passes_total",
                                                   {"outcome": "aborted"}), 1)

    async def test_database_error_trashes_nothing(self) -> None:
        await self.setup_store()
        vol = self.volume(old=3 * HOUR)
        await self.store.stop()
        result = await self.balancer([vol]).run_pass()
        self.assertIn("collection scan failed", result.aborted)
        self.assertEqual(vol.trash_calls, [])

    async def test_timeout_during_scan_trashes_nothing(self) -> None:
        """BalanceTimeout passing while the scan waits: aborted, nothing trashed."""
        await self.setup_store()
        hang: Deferred[Any] = Deferred()

        class Hanging:
            async def scan_manifests(self, after: str, limit: int, digest: Any) -> Any:
                return await hang

        vol = self.volume(old=3 * HOUR)
        balancer = Balancer(Hanging(), [vol], clock=self.clock, signing_ttl=2 * HOUR,
                            timeout=60)
        d = Deferred.fromCoroutine(balancer.run_pass())
        self.clock.advance(59)
        self.assertFalse(d.called)
        self.clock.advance(2)
        result = self.successResultOf(d)  # type: ignore[attr-defined]
        self.assertIn("BalanceTimeout", result.aborted)
        self.assertEqual(vol.trash_calls, [])

    async def test_blob_trash_false_and_dry_run_trash_nothing(self) -> None:
        await self.setup_store()
        for kw in ({"blob_trash": False}, {}):
            vol = self.volume(old=3 * HOUR)
            seen: list[str] = []
            result = await self.balancer([vol], **kw).run_pass(
                dry_run=not kw, report=lambda v, h, s, m: seen.append(h))
            self.assertEqual(vol.trash_calls, [])
            self.assertEqual((result.candidates, result.trashed), (1, 0))
            self.assertEqual(seen, [md5(b"old")])

    async def test_trash_concurrency_is_bounded(self) -> None:
        """At most BlobTrashConcurrency trash calls are in flight."""
        await self.setup_store()
        vol = self.volume(**{f"o{i}": 3 * HOUR for i in range(6)})
        vol.holding = True
        d = Deferred.fromCoroutine(self.balancer([vol], trash_concurrency=2).run_pass())
        await _wait(lambda: vol.in_flight == 2)
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(vol.max_in_flight, 2)
        vol.release()
        result = await d
        self.assertEqual((result.trashed, vol.max_in_flight), (6, 2))

    async def test_trash_queue_is_bounded_within_one_listing(self) -> None:
        """At most MAX_QUEUED trash calls wait for the semaphore, even when one
        volume's listing of one prefix holds more candidates than that."""
        await self.setup_store()
        names = [n for n in (f"o{i}" for i in range(200)) if md5(n.encode())[0] == "0"][:6]
        vol = self.volume(**{n: 3 * HOUR for n in names})
        waiting: list[int] = []

        class Recording(DeferredSemaphore):
            def acquire(self) -> Any:
                waiting.append(len(self.waiting))
                return super().acquire()

        self.patch(balance, "MAX_QUEUED", 2)
        self.patch(balance, "DeferredSemaphore", Recording)
        vol.holding = True
        d = Deferred.fromCoroutine(self.balancer([vol], trash_concurrency=1).run_pass())
        while not d.called:
            await _wait(lambda: vol.in_flight == 1 or d.called)
            vol.release()
            vol.holding = True
        result = await d
        self.assertEqual(result.trashed, 6)
        self.assertLessEqual(max(waiting), 1)

    async def test_failing_index_skips_that_volume_only(self) -> None:
        await self.setup_store()
        good = self.volume(old=3 * HOUR)
        bad = RecordingVolume("zzzzz-nyw5e-000000000000002", dict(good.blocks))
        bad.index_error = OSError("disk gone")
        result = await self.balancer([bad, good]).run_pass()
        self.assertEqual((result.index_errors, result.trashed), (1, 1))
        self.assertEqual(bad.trash_calls, [])

    # -- repair: referenced blocks found only in trash ---------------------------------------

    def trash_volume(self, live: dict[str, float], trashed: list[str],
                     uuid: str = "zzzzz-nyw5e-000000000000001") -> TrashListingVolume:
        now = self.clock.seconds()
        return TrashListingVolume(
            uuid, {md5(n.encode()): (len(n), int((now - age) * 1e9)) for n, age in live.items()},
            {md5(n.encode()): len(n) for n in trashed})

    async def test_referenced_block_only_in_trash_is_untrashed(self) -> None:
        """A referenced block live on no volume but in one's trash is untrashed there
        (a WARNING names hash and volume, /metrics counts it); an unreferenced trashed
        block stays in trash; the trash of a prefix whose referenced blocks are all
        live is never listed; a volume without trashed_index (an upstream keepstore)
        is not asked."""
        await self.setup_store()
        lost, kept, orphan = names_with_distinct_prefixes(3)
        await self.coll(lost.encode(), kept.encode())
        vol = self.trash_volume({kept: 3 * HOUR}, [lost, orphan, kept])
        upstream = RecordingVolume("zzzzz-nyw5e-000000000000002", {})
        events: list[dict[str, Any]] = []
        registry = NodeMetrics().registry
        b = self.balancer([vol, upstream], metrics=BalanceMetrics(registry))
        b.log = Logger(observer=events.append)
        result = await b.run_pass()
        self.assertEqual(result.aborted, "")
        self.assertEqual(vol.untrash_calls, [md5(lost.encode())])
        self.assertIn(md5(lost.encode()), vol.blocks)
        self.assertEqual(sorted(vol.trashed), sorted([md5(orphan.encode()), md5(kept.encode())]))
        self.assertEqual(vol.trashed_index_calls, [md5(lost.encode())[0]])
        self.assertEqual((result.untrashed, result.not_found, result.untrash_failed), (1, 0, 0))
        self.assertIn("untrashed 1 referenced block(s) found only in trash", result.summary())
        self.assertEqual(registry.get_sample_value("arvnode_balance_blocks_untrashed"), 1)
        warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn(md5(lost.encode()), warnings[0])
        self.assertIn(vol.uuid, warnings[0])
        # Healthy now: the next pass lists no trash at all.
        vol.trashed_index_calls.clear()
        result = await b.run_pass()
        self.assertEqual((result.untrashed, vol.trashed_index_calls), (0, []))

    async def test_untrash_on_every_volume_whose_trash_has_it(self) -> None:
        """Two volumes with a trashed copy: both are untrashed (replicas)."""
        await self.setup_store()
        await self.coll(b"lost")
        a = self.trash_volume({}, ["lost"])
        b = self.trash_volume({}, ["lost"], uuid="zzzzz-nyw5e-000000000000002")
        result = await self.balancer([a, b]).run_pass()
        self.assertEqual((a.untrash_calls, b.untrash_calls), ([md5(b"lost")], [md5(b"lost")]))
        self.assertEqual(result.untrashed, 2)

    async def test_dry_run_reports_untrash_and_changes_nothing(self) -> None:
        """--dry-run: "would untrash", no untrash call; BlobTrash false (which
        trashes nothing) still untrashes: the repair only ever keeps."""
        await self.setup_store()
        await self.coll(b"lost")
        vol = self.trash_volume({}, ["lost"])
        seen: list[tuple[str, str]] = []
        result = await self.balancer([vol]).run_pass(
            dry_run=True, report_untrash=lambda v, h: seen.append((v.uuid, h)))
        self.assertEqual((result.untrashed, vol.untrash_calls), (1, []))
        self.assertEqual(seen, [(vol.uuid, md5(b"lost"))])
        self.assertIn("would untrash 1", result.summary())
        self.assertIn(md5(b"lost"), vol.trashed)
        result = await self.balancer([vol], blob_trash=False).run_pass()
        self.assertEqual((result.untrashed, vol.untrash_calls), (1, [md5(b"lost")]))

    async def test_aborted_scan_untrashes_nothing_and_failures_are_counted(self) -> None:
        """No repair without a complete scan (it could not know what is missing);
        an untrash that fails is counted and logged, the pass goes on; a referenced
        block found nowhere is counted as not found."""
        await self.setup_store()
        await self.coll(b"lost", b"gone")
        bad = await self.coll(b"other")
        vol = self.trash_volume({}, ["lost"])
        await self.store._run(lambda cur: cur.execute(
            "UPDATE collections SET manifest_text = ? WHERE uuid = ?", ("garbage", bad)),
            write=True)
        result = await self.balancer([vol]).run_pass()
        self.assertIn(bad, result.aborted)
        self.assertEqual((vol.trashed_index_calls, vol.untrash_calls), ([], []))
        await self.store._run(lambda cur: cur.execute(
            "DELETE FROM collections WHERE uuid = ?", (bad,)), write=True)
        vol.untrash_error = OSError("disk gone")
        result = await self.balancer([vol]).run_pass()
        self.assertEqual((result.untrashed, result.untrash_failed), (0, 1))
        self.assertEqual(result.not_found, 1)  # "gone": neither live nor in trash
        self.assertIn("1 untrash call(s) failed", result.summary())

    async def test_untrash_concurrency_is_bounded(self) -> None:
        """Untrash calls share BlobTrashConcurrency with the trash calls."""
        await self.setup_store()
        names = [f"l{i}" for i in range(6)]
        await self.coll(*(n.encode() for n in names))
        vol = self.trash_volume({}, names)
        vol.holding = True
        d = Deferred.fromCoroutine(self.balancer([vol], trash_concurrency=2).run_pass())
        await _wait(lambda: vol.in_flight == 2)
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(vol.max_in_flight, 2)
        vol.release()
        result = await d
        self.assertEqual((result.untrashed, vol.max_in_flight), (6, 2))

    async def test_read_only_and_trashless_volumes_are_left_alone(self) -> None:
        await self.setup_store()
        ro = self.volume(old=3 * HOUR)
        ro.read_only = True  # type: ignore[misc]

        class NoTrash:
            uuid = "zzzzz-nyw5e-000000000000009"
            read_only = False

            def index(self, prefix: str) -> Any:
                raise AssertionError("not listed: it cannot trash")

        result = await self.balancer([ro, NoTrash()]).run_pass()
        self.assertEqual((result.volumes, ro.trash_calls), ([], []))

    # -- the service ----------------------------------------------------------------------

    async def test_service_runs_every_period_not_before(self) -> None:
        await self.setup_store()
        vol = self.volume(old=3 * HOUR)
        service = BalancerService(self.balancer([vol]), clock=self.clock, period=600)
        self.assertEqual(service.name, SERVICE_NAME)
        service.startService()
        self.addCleanup(service.stopService)  # type: ignore[attr-defined]
        self.clock.advance(599)
        await service.idle()
        self.assertEqual((service.rounds, vol.trash_calls), (0, []))
        self.clock.advance(1)
        await service.idle()
        self.assertEqual(service.rounds, 1)
        self.assertEqual([h for h, _ in vol.trash_calls], [md5(b"old")])
        self.assertIsInstance(service.last, PassResult)
        self.clock.advance(600)
        await service.idle()
        self.assertEqual(service.rounds, 2)

    async def test_stopping_the_service_ends_a_scan_in_flight(self) -> None:
        """A pass may run for BalanceTimeout (hours): stopping the service does not
        wait for it. A scan in flight is aborted and nothing is trashed."""
        await self.setup_store()
        hang: Deferred[Any] = Deferred()

        class Hanging:
            async def scan_manifests(self, *a: Any, **kw: Any) -> Any:
                return await hang

        vol = self.volume(old=3 * HOUR)
        service = BalancerService(
            Balancer(Hanging(), [vol], clock=self.clock, signing_ttl=2 * HOUR),
            clock=self.clock, period=600)
        service.startService()
        self.clock.advance(600)
        self.assertEqual(service.rounds, 1)
        stopped = service.stopService()
        self.assertTrue(stopped.called)
        self.assertIn("stopping", service.last.aborted)
        self.assertEqual(vol.trash_calls, [])

    async def test_stopping_the_service_starts_no_further_trash_call(self) -> None:
        """Stopped in the trash phase: the calls in flight finish, no other starts."""
        await self.setup_store()
        vol = self.volume(**{f"o{i}": 3 * HOUR for i in range(6)})
        vol.holding = True
        service = BalancerService(self.balancer([vol], trash_concurrency=2),
                                  clock=self.clock, period=600)
        service.startService()
        self.clock.advance(600)
        await _wait(lambda: vol.in_flight == 2)
        stopped = service.stopService()
        self.assertFalse(stopped.called)  # the two in flight
        vol.release()
        await stopped
        self.assertEqual(len(vol.trash_calls), 2)
        self.assertEqual(service.last.trashed, 2)
        self.assertIn("stopping", service.last.stopped)

    async def test_service_does_not_overlap_passes(self) -> None:
        await self.setup_store()
        vol = self.volume(old=3 * HOUR)
        vol.holding = True
        service = BalancerService(self.balancer([vol]), clock=self.clock, period=600)
        service.startService()
        self.clock.advance(600)
        await _wait(lambda: vol.in_flight == 1)
        self.clock.advance(600)
        self.clock.advance(600)
        self.assertEqual(service.rounds, 1)
        stopped = service.stopService()
        self.assertFalse(stopped.called)
        vol.release()
        await stopped
        self.assertEqual(service.rounds, 1)


async def _wait(predicate: Any, timeout: float = 10.0) -> None:
    """Poll on the real reactor (the store's answers arrive through it)."""
    from tests.helpers import wait_for

    await wait_for(predicate, timeout=timeout)


class SQLitePassTests(SQLiteEngine, PassTestsMixin, TestCase):
    pass


class PostgreSQLPassTests(PostgreSQLEngine, PassTestsMixin, TestCase):
    pass


# -- end to end: a real node, its keepproxy, its API, its directory volume ------------------


class NodeTestsMixin:
    """A node with BlobSigningTTL 2h; block ages set on the volume's files."""

    extra = {"Collections.BlobSigningTTL": "2h"}

    async def setup_node(self) -> None:
        await self.startNode()  # type: ignore[attr-defined]
        self.volume = self.node.node.getServiceNamed("volumes").volumes[0]
        self.assertTrue(callable(getattr(self.volume, "trash", None)))

    def age(self, locator: str, seconds: float) -> None:
        """Set the stored block's mtime ``seconds`` into the past."""
        t = int((time.time() - seconds) * 1e9)
        os.utime(self.volume.block_path(locator[:32]), ns=(t, t))

    async def put(self, data: bytes, age: float = 0.0) -> str:
        loc = await self.keep_put(data, self.root)  # type: ignore[attr-defined]
        if age:
            self.age(loc, age)
        return loc

    async def save(self, *locs_and_data: tuple[str, bytes]) -> str:
        text = "".join(f". {loc} 0:{len(data)}:f{i}.txt\n"
                       for i, (loc, data) in enumerate(locs_and_data))
        body = await self.ok("POST", "collections", token=self.root,  # type: ignore[attr-defined]
                             body={"collection": {"manifest_text": text}})
        return str(body["uuid"])

    async def get_code(self, loc: str) -> int:
        code, _ = await self.keep_get(loc, self.root)  # type: ignore[attr-defined]
        return code

    async def test_whole_path(self) -> None:
        """Live and trashed collections keep their blocks; an old orphan is trashed
        (GET 404 after), a young one kept; the numbers reach /metrics."""
        await self.setup_node()
        live = await self.put(b"live data", age=3 * HOUR)
        binned = await self.put(b"binned data", age=3 * HOUR)
        old = await self.put(b"old orphan", age=3 * HOUR)
        young = await self.put(b"young orphan", age=HOUR)
        await self.save((live, b"live data"))
        trashed = await self.save((binned, b"binned data"))
        await self.ok("POST", f"collections/{trashed}/trash", token=self.root)  # type: ignore
        self.assertEqual(await self.get_code(old), 200)

        result = await self.node.node.balancer.run_pass()
        self.assertEqual(result.aborted, "")
        self.assertEqual(
            (result.seen, result.unreferenced, result.too_new, result.trashed,
             result.trashed_bytes),
            (4, 2, 1, 1, len(b"old orphan")))
        self.assertEqual(await self.get_code(old), 404)
        for loc in (live, binned, young):
            self.assertEqual(await self.get_code(loc), 200, loc)
        # The trashed collection comes back whole.
        await self.ok("POST", f"collections/{trashed}/untrash", token=self.root)  # type: ignore

        r = await self.client.get(  # type: ignore[attr-defined]
            f"{self.node.controller_url}/metrics",
            headers={"Authorization": [f"Bearer {self.node.management_token}"]})
        text = (await r.content()).decode()
        self.assertIn("arvnode_balance_blocks_trashed 1.0", text)
        self.assertIn(f"arvnode_balance_trashed_bytes {float(len(b'old orphan'))}", text)
        self.assertIn("arvnode_balance_blocks_too_new 1.0", text)

    async def test_referenced_block_in_trash_is_untrashed_by_the_next_pass(self) -> None:
        """A client holds a locator (signed before the block was trashed) and saves a
        collection with it: the block is referenced but in trash. GET answers 404
        (reads do not untrash); ``arvnode keep balance --dry-run`` says it would
        untrash it and changes nothing; the next pass untrashes it, and the keepproxy
        serves the same bytes. An unreferenced trashed block stays in trash."""
        await self.setup_node()
        data = b"held locator data"
        held = await self.put(data, age=3 * HOUR)
        orphan = await self.put(b"old orphan", age=3 * HOUR)
        result = await self.node.node.balancer.run_pass()
        self.assertEqual((result.trashed, result.untrashed), (2, 0))
        self.assertEqual(await self.get_code(held), 404)
        await self.save((held, data))  # the locator is still validly signed
        code, _ = await self.keep_get(held, self.root)  # type: ignore[attr-defined]
        self.assertEqual(code, 404)
        r = await self.client.request(  # type: ignore[attr-defined]
            "HEAD", f"{self.node.keepproxy_url}/{held}",
            headers={"Authorization": [f"Bearer {self.root}"]})  # type: ignore[attr-defined]
        self.assertEqual(r.code, 404)

        path = Path(self.mktemp() + ".yml")  # type: ignore[attr-defined]
        path.write_text(yaml.safe_dump(self.node.config_dict))
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "arvnode.cli", "keep", "balance", "--config", str(path),
                             "--dry-run"], env=subprocess_env())
        text = out.decode() + err.decode()
        self.assertEqual(code, 0, text)
        self.assertIn(f"would untrash {held[:32]} on {self.volume.uuid}", text)
        self.assertIn("referenced blocks found only in trash, would untrash: 1", text)
        self.assertNotIn(orphan[:32], text)
        self.assertEqual(await self.get_code(held), 404)

        result = await self.node.node.balancer.run_pass()
        self.assertEqual((result.untrashed, result.trashed, result.not_found), (1, 0, 0))
        self.assertEqual(await self.keep_get(held, self.root),  # type: ignore[attr-defined]
                         (200, data))
        self.assertEqual(await self.get_code(orphan), 404)
        self.assertEqual(list(await self.volume.trashed_index("")), [orphan[:32]])

    async def test_scan_error_trashes_nothing(self) -> None:
        await self.setup_node()
        old = await self.put(b"old orphan", age=3 * HOUR)
        loc = await self.put(b"kept", age=3 * HOUR)
        uuid = await self.save((loc, b"kept"))
        await self.store._run(lambda cur: cur.execute(  # type: ignore[attr-defined]
            "UPDATE collections SET manifest_text = ? WHERE uuid = ?", ("garbage", uuid)),
            write=True)
        result = await self.node.node.balancer.run_pass()
        self.assertIn(uuid, result.aborted)
        self.assertEqual(result.trashed, 0)
        self.assertEqual(await self.get_code(old), 200)

    async def test_cli_dry_run_then_real_run(self) -> None:
        """``arvnode keep balance --dry-run`` lists the orphan and changes nothing;
        without it the orphan is trashed."""
        await self.setup_node()
        old = await self.put(b"old orphan", age=3 * HOUR)
        kept = await self.put(b"kept", age=3 * HOUR)
        await self.save((kept, b"kept"))
        path = Path(self.mktemp() + ".yml")  # type: ignore[attr-defined]
        path.write_text(yaml.safe_dump(self.node.config_dict))

        async def cli(*argv: str) -> tuple[int, str]:
            out, err, code = await getProcessOutputAndValue(
                sys.executable, ["-m", "arvnode.cli", "keep", "balance", "--config", str(path),
                                 *argv], env=subprocess_env())
            return code, out.decode() + err.decode()

        code, out = await cli("--dry-run")
        self.assertEqual(code, 0, out)
        self.assertIn(f"would trash {old[:32]}+{len(b'old orphan')}", out)
        self.assertNotIn(kept[:32], out)
        self.assertIn("dry run: nothing trashed", out)
        self.assertEqual(await self.get_code(old), 200)

        code, out = await cli()
        self.assertEqual(code, 0, out)
        self.assertRegex(out, r"trashed: +1 \(10 bytes\)")
        self.assertEqual(await self.get_code(old), 404)
        self.assertEqual(await self.get_code(kept), 200)


class SQLiteNodeTests(NodeTestsMixin, ApiTestCase):
    pass


class PostgreSQLNodeTests(NodeTestsMixin, ApiTestCase):
    postgresql = True
    # On PostgreSQL the balancer runs only where Services.Keepbalance says.
    extra = {**NodeTestsMixin.extra,
             "Services.Keepbalance": {"InternalURLs": {"http://127.0.0.1:9005/": {}}}}


S3_UUID = "zzzzz-nyw5e-s3balance000000"


class S3NodeTestsMixin:
    """A node whose one volume is a moto bucket (tests/keep/test_s3_volume.MotoTestCase)."""

    extra = {"Collections.BlobSigningTTL": "2h"}

    async def setup_s3_node(self) -> None:
        self.bucket_name = self.bucket()  # type: ignore[attr-defined]
        self.s3_params = self.params(self.bucket_name)  # type: ignore[attr-defined]
        await self.startNode(Volumes={S3_UUID: {  # type: ignore[attr-defined]
            "Driver": "S3", "DriverParameters": self.s3_params, "Replication": 1}})
        self.volume = self.node.node.getServiceNamed("volumes").volumes[0]  # type: ignore
        self.assertEqual(self.volume.uuid, S3_UUID)  # type: ignore[attr-defined]

    def later_view(self) -> S3Volume:
        """The same bucket seen 3 h from now (S3 mtimes are the bucket's real clock,
        so this is how a block gets older than BlobSigningTTL without waiting)."""
        v = S3Volume(S3_UUID, parse_s3_parameters(self.s3_params), reactor=reactor,
                     clock=ShiftedClock(3 * HOUR), backoff_base=0.01)
        v.trash_policy = TrashPolicy(lifetime=336 * HOUR, signing_ttl=2 * HOUR)
        self.addCleanup(v.stop)  # type: ignore[attr-defined]
        return v

    async def test_put_racing_an_s3_trash_is_restored_by_the_next_pass(self) -> None:
        """The S3 race: trash checked the mtime for the last time, then a client PUTs
        the same block (the writer finds it stored and refreshes its mtime) and is
        answered 200, then the DELETE lands: only trash/ holds the block. GET/HEAD
        answer 404 (reads do not untrash); a dry run reports it and changes nothing;
        the next pass untrashes it and the keepproxy serves the same bytes. An
        unreferenced trashed block stays in trash."""
        await self.setup_s3_node()
        data = b"racing block " * 100
        hash = md5(data)
        await self.keep_put(data, self.root)  # type: ignore[attr-defined]
        orphan_hash = md5(b"unreferenced trashed")
        self.moto.put(self.bucket_name, f"trash/{orphan_hash}",  # type: ignore[attr-defined]
                      b"unreferenced trashed")
        view = self.later_view()
        ((listed_hash, _, mtime),) = await view.index("")
        self.assertEqual(listed_hash, hash)
        acknowledged: list[str] = []

        async def client_puts_again() -> None:
            acknowledged.append(await self.keep_put(data, self.root))  # type: ignore

        self.assertTrue(await Deferred.fromCoroutine(
            s3trash.trash(view, hash, mtime, before_delete=client_puts_again)))
        (locator,) = acknowledged
        self.assertEqual(sorted(self.moto.keys(self.bucket_name)),  # type: ignore[attr-defined]
                         sorted([f"trash/{hash}", f"trash/{orphan_hash}"]))
        await self.ok("POST", "collections", token=self.root,  # type: ignore[attr-defined]
                      body={"collection": {"manifest_text": f". {locator} 0:{len(data)}:f\n"}})
        self.assertEqual((await self.keep_get(locator, self.root))[0], 404)  # type: ignore
        r = await self.client.request(  # type: ignore[attr-defined]
            "HEAD", f"{self.node.keepproxy_url}/{locator}",  # type: ignore[attr-defined]
            headers={"Authorization": [f"Bearer {self.root}"]})  # type: ignore[attr-defined]
        self.assertEqual(r.code, 404)

        balancer = self.node.node.balancer  # type: ignore[attr-defined]
        result = await balancer.run_pass(dry_run=True)
        self.assertEqual((result.untrashed, result.not_found), (1, 0))
        self.assertEqual(sorted(self.moto.keys(self.bucket_name)),  # type: ignore[attr-defined]
                         sorted([f"trash/{hash}", f"trash/{orphan_hash}"]))

        result = await balancer.run_pass()
        self.assertEqual((result.untrashed, result.trashed, result.not_found), (1, 0, 0))
        self.assertEqual(await self.keep_get(locator, self.root), (200, data))  # type: ignore
        self.assertEqual(sorted(self.moto.keys(self.bucket_name)),  # type: ignore[attr-defined]
                         sorted([hash, f"trash/{orphan_hash}"]))


class SQLiteS3NodeTests(S3NodeTestsMixin, ApiTestCase, MotoTestCase):
    pass


class PostgreSQLS3NodeTests(S3NodeTestsMixin, ApiTestCase, MotoTestCase):
    postgresql = True
    extra = {**S3NodeTestsMixin.extra,
             "Services.Keepbalance": {"InternalURLs": {"http://127.0.0.1:9005/": {}}}}


# -- which node runs the balancer ---------------------------------------------------------


class RoleTests(SynchronousTestCase):
    """balancer_role and the node's service tree (built, not started)."""

    def config(self, *, postgresql: bool = False, **extra: Any) -> Any:
        pg = pgfixture.server_settings() | {"dbname": "unused"} if postgresql else None
        raw, _ = make_cluster_config(Path(self.mktemp()), extra=extra, postgresql=pg)
        return config_from_string(yaml.safe_dump(raw))

    def has_balancer(self, config: Any) -> bool:
        node = build_node(config, reactor)
        return SERVICE_NAME in {s.name for s in node}

    def test_single_sqlite_node_runs_it(self) -> None:
        config = self.config()
        self.assertEqual(balancer_role(config)[0], True)
        self.assertTrue(self.has_balancer(config))

    def test_start_log_gives_the_period_as_configured(self) -> None:
        """The start-up line says the period in the config's spelling
        (docs/garbage-collection.md), not as a float of seconds."""
        from arvnode.node import Node
        events: list[dict[str, Any]] = []
        self.patch(Node, "log", Logger(namespace="arvnode.node.Node", observer=events.append))
        build_node(self.config(**{"Collections.BalancePeriod": "6h"}), reactor)
        lines = [formatEvent(e) for e in events]
        self.assertIn("balancer runs on this node every 6h0m0s (Collections.BalancePeriod): "
                      "single node (SQLite database of its own)", lines)

    def test_postgresql_node_without_keepbalance_does_not(self) -> None:
        config = self.config(postgresql=True)
        here, why = balancer_role(config)
        self.assertFalse(here)
        self.assertIn("PostgreSQL", why)
        self.assertFalse(self.has_balancer(config))

    def test_keepbalance_url_decides(self) -> None:
        urls = {"Services.Keepbalance": {"InternalURLs": {"http://bal.example:9005/": {}}}}
        for pg in (False, True):
            config = self.config(postgresql=pg, **urls)
            self.assertTrue(balancer_role(config, is_local=lambda h: h == "bal.example")[0])
            self.assertFalse(balancer_role(config, is_local=lambda h: False)[0])

    def test_keepbalance_url_on_another_host_on_a_real_node(self) -> None:
        """192.0.2.1 (TEST-NET) is never this host; 127.0.0.1 always is."""
        away = {"Services.Keepbalance": {"InternalURLs": {"http://192.0.2.1:9005/": {}}}}
        here = {"Services.Keepbalance": {"InternalURLs": {"http://127.0.0.1:9005/": {}}}}
        self.assertFalse(self.has_balancer(self.config(**away)))
        self.assertTrue(self.has_balancer(self.config(postgresql=True, **here)))

    def test_listen_url_is_what_counts(self) -> None:
        urls = {"Services.Keepbalance": {"InternalURLs": {
            "http://bal.example:9005/": {"ListenURL": "http://127.0.0.1:9005/"}}}}
        self.assertTrue(self.has_balancer(self.config(postgresql=True, **urls)))

    def test_sqlite_keepstore_node_never_runs_it(self) -> None:
        """A keepstore node behind a gateway, on a database of its own: its database
        has none of the collections, so it must not balance, even if named; the
        gateway (on SQLite, keepstores elsewhere) does."""
        ks = {"Services.Keepstore": {"InternalURLs": {"http://127.0.0.1:25999/": {}}}}
        named = {"Services.Keepbalance": {"InternalURLs": {"http://127.0.0.1:9005/": {}}}}
        self.assertFalse(self.has_balancer(self.config(**ks)))
        self.assertFalse(self.has_balancer(self.config(**ks, **named)))
        gateway = {"Services.Keepstore": {"InternalURLs": {"http://192.0.2.1:25108/": {}}}}
        self.assertTrue(self.has_balancer(self.config(**gateway)))
        # On PostgreSQL the keepstore node shares the collections: naming it is fine.
        self.assertTrue(self.has_balancer(self.config(postgresql=True, **ks, **named)))

    def test_cli_refuses_on_sqlite_keepstore_node(self) -> None:
        raw, _ = make_cluster_config(Path(self.mktemp()), extra={
            "Services.Keepstore": {"InternalURLs": {"http://127.0.0.1:25999/": {}}}})
        path = Path(self.mktemp() + ".yml")
        path.write_text(yaml.safe_dump(raw))
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        self.patch(sys, "stdout", io.StringIO())
        self.assertEqual(cli_main(["keep", "balance", "--config", str(path)]), 1)
        self.assertIn("run the command there", err.getvalue())

    def test_period_zero_disables(self) -> None:
        config = self.config(**{"Collections.BalancePeriod": "0"})
        self.assertEqual(balancer_role(config)[0], False)
        self.assertFalse(self.has_balancer(config))


class ManifestDigestTests(SynchronousTestCase):
    def test_digests_and_errors_name_the_collection(self) -> None:
        self.assertEqual(manifest_digests("u", manifest_of(b"a", b"b", b"a")),
                         {bytes.fromhex(md5(b"a")), bytes.fromhex(md5(b"b"))})
        self.assertEqual(manifest_digests("u", ""), frozenset())
        with self.assertRaises(ManifestError) as e:
            manifest_digests("zzzzz-4zz18-000000000000001", ". bad 0:0:f\n")
        self.assertIn("zzzzz-4zz18-000000000000001", str(e.exception))
