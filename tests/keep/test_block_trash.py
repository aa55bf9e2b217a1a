"""Block trash (arvnode/keep/trash.py, docs contract "block trash & GC"):
the volume primitives on real directory volumes and on S3 (moto), the
upstream volume against a real keepstore node, the keepstore's admin routes
over HTTP, and the empty-trash timer on a task.Clock.

Losing a referenced block is the worst bug there is, so most tests here
check a refusal: a stale mtime, a block inside BlobSigningTTL, a trash list
from the wrong token, a restart in the middle.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from arvnode.keep.trash import (
    EMPTY_TRASH_SERVICE_NAME,
    EmptyTrashService,
    TrashListWorker,
    TrashPolicy,
    parse_trash_list,
)
from arvnode.keep.volume import ITrashedIndex, IVolume
from arvnode.keep.volumes import DirectoryVolume, directory
from arvnode.keep.volumes.directory import BlockWriter
from arvnode.keep.volumes.s3 import S3Volume
from arvnode.keep.volumes.s3_params import parse_s3_parameters
from arvnode.keep.volumes.upstream import UpstreamKeepstore
from tests.helpers import http_client
from tests.keep.test_keepstore import start_keepstore
from tests.keep.test_s3_volume import MotoTestCase, Collector

UUID = "zzzzz-nyw5e-000000000000000"
TTL = 336 * 3600.0
HOUR = 3600.0


def block(size: int = 1000, seed: int = 0) -> tuple[str, bytes]:
    data = random.Random(seed).randbytes(size)
    return hashlib.md5(data).hexdigest(), data


def age(path: Path | str, seconds: float) -> int:
    """Set the file's mtime ``seconds`` in the past; its new mtime in ns."""
    when = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(when, when))
    return os.stat(path).st_mtime_ns


async def read_all(volume: Any, hash: str) -> bytes | None:
    reader = await volume.open_read(hash)
    if reader is None:
        return None
    sink = Collector()
    await reader.produce(sink)
    return sink.data


class DirectoryTrashTests(TestCase):
    """The directory volume's trash on a real temp directory."""

    timeout = 30

    def setUp(self) -> None:
        self.pool = ThreadPool(minthreads=1, maxthreads=2, name="trash-test")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.root = self.mktemp()
        self.clock = Clock()
        self.clock.advance(time.time())

    def volume(self, **policy: Any) -> DirectoryVolume:
        settings = {"lifetime": 2 * HOUR, "signing_ttl": TTL, **policy}
        return DirectoryVolume(UUID, self.root, reactor=reactor, threadpool=self.pool,
                               clock=self.clock, trash_policy=TrashPolicy(**settings))

    async def put(self, vol: DirectoryVolume, data: bytes) -> str:
        hash = hashlib.md5(data).hexdigest()
        writer = await vol.open_write(hash, len(data))
        await writer.write(data)
        await writer.commit()
        return hash

    async def old_block(self, vol: DirectoryVolume, seed: int = 0) -> tuple[str, bytes, int]:
        """A stored block whose mtime is past BlobSigningTTL."""
        _, data = block(seed=seed)
        hash = await self.put(vol, data)
        return hash, data, age(vol.block_path(hash), TTL + HOUR)

    async def test_provides_ivolume(self) -> None:
        vol = self.volume()
        await vol.start()
        self.assertTrue(verifyObject(IVolume, vol))

    async def test_trash_hides_then_untrash_restores_byte_identical(self) -> None:
        """Trashed: GET finds nothing, stat None, not in the index; untrash:
        the same bytes under the same name, with the mtime they had."""
        vol = self.volume()
        await vol.start()
        hash, data, mtime = await self.old_block(vol)
        other, _, _ = await self.old_block(vol, seed=1)
        self.assertTrue(await vol.trash(hash, mtime))
        self.assertIsNone(await vol.open_read(hash))
        self.assertIsNone(await vol.stat(hash))
        self.assertEqual([h for h, _, _ in await vol.index("")], [other])
        self.assertEqual([h for h, _, _ in await vol.index(hash[:3])],
                         [other] if other.startswith(hash[:3]) else [])
        trashed = os.listdir(os.path.dirname(vol.block_path(hash)))
        self.assertEqual([n for n in trashed if n.startswith(hash)],
                         [f"{hash}.trash.{int(self.clock.seconds() + 2 * HOUR) + 1}"])
        self.assertTrue(await vol.untrash(hash))
        self.assertEqual(await read_all(vol, hash), data)
        self.assertEqual(os.stat(vol.block_path(hash)).st_mtime_ns, mtime)
        self.assertEqual(sorted(h for h, _, _ in await vol.index("")), sorted([hash, other]))
        self.assertFalse(await vol.untrash(hash))  # nothing left in the trash

    async def test_stale_mtime_does_nothing(self) -> None:
        """A trash request naming an mtime the block no longer has (written
        or touched since the caller looked) leaves it alone."""
        vol = self.volume()
        await vol.start()
        hash, data, mtime = await self.old_block(vol)
        self.assertFalse(await vol.trash(hash, mtime - 1))
        self.assertFalse(await vol.trash(hash, mtime + 1))
        self.assertEqual(await read_all(vol, hash), data)
        self.assertEqual(os.stat(vol.block_path(hash)).st_mtime_ns, mtime)

    async def test_block_newer_than_signing_ttl_is_never_trashed(self) -> None:
        """Inside BlobSigningTTL a client may hold a signed locator not yet
        in a collection: refused with or without the right mtime."""
        vol = self.volume()
        await vol.start()
        _, data = block()
        hash = await self.put(vol, data)
        mtime = age(vol.block_path(hash), TTL - HOUR)
        self.assertFalse(await vol.trash(hash))
        self.assertFalse(await vol.trash(hash, mtime))
        self.assertEqual(await read_all(vol, hash), data)

    async def test_touch_protects_and_reports_absence(self) -> None:
        vol = self.volume()
        await vol.start()
        hash, _, mtime = await self.old_block(vol)
        self.assertTrue(await vol.touch(hash))
        self.assertGreater(os.stat(vol.block_path(hash)).st_mtime_ns, mtime)
        self.assertFalse(await vol.trash(hash, mtime))  # the caller's mtime is stale now
        self.assertFalse(await vol.trash(hash))  # and the block is fresh
        self.assertFalse(await vol.touch(block(seed=9)[0]))

    async def test_put_after_trash_makes_it_live(self) -> None:
        """The same hash PUT again is live (and fresh); its trashed copy is
        left to expire, and untrash keeps the live one."""
        vol = self.volume()
        await vol.start()
        hash, data, _ = await self.old_block(vol)
        self.assertTrue(await vol.trash(hash))
        await self.put(vol, data)
        self.assertEqual(await read_all(vol, hash), data)
        fresh = os.stat(vol.block_path(hash)).st_mtime_ns
        self.assertFalse(await vol.trash(hash))  # inside the signing window
        self.assertTrue(await vol.untrash(hash))
        self.assertEqual(os.stat(vol.block_path(hash)).st_mtime_ns, fresh)

    async def test_trash_disabled_and_read_only(self) -> None:
        vol = self.volume(enabled=False)
        await vol.start()
        hash, data, mtime = await self.old_block(vol)
        self.assertFalse(await vol.trash(hash, mtime))
        self.assertEqual(await read_all(vol, hash), data)
        ro = DirectoryVolume(UUID, self.root, reactor=reactor, threadpool=self.pool,
                             read_only=True, clock=self.clock)
        await ro.start()
        self.assertFalse(await ro.trash(hash, mtime))
        self.assertFalse(await ro.touch(hash))
        self.assertEqual(await ro.empty_trash(self.clock.seconds() + 10 * TTL), 0)

    async def test_lifetime_zero_deletes_at_once(self) -> None:
        """Arvados: BlobTrashLifetime 0 means trash deletes (no recovery)."""
        vol = self.volume(lifetime=0)
        await vol.start()
        hash, _, mtime = await self.old_block(vol)
        self.assertTrue(await vol.trash(hash, mtime))
        self.assertEqual(os.listdir(os.path.dirname(vol.block_path(hash))), [])
        self.assertFalse(await vol.untrash(hash))

    async def test_empty_trash_respects_the_lifetime(self) -> None:
        vol = self.volume()
        await vol.start()
        hash, _, _ = await self.old_block(vol)
        other, _, _ = await self.old_block(vol, seed=1)
        self.assertTrue(await vol.trash(hash))
        now = self.clock.seconds()
        self.assertEqual(await vol.empty_trash(now + 2 * HOUR - 5), 0)
        self.assertTrue(await vol.untrash(hash))  # still recoverable
        self.assertTrue(await vol.trash(hash))
        self.assertEqual(await vol.empty_trash(now + 2 * HOUR + 5), 1)
        self.assertFalse(await vol.untrash(hash))
        self.assertIsNone(await vol.stat(hash))
        self.assertIsNotNone(await vol.stat(other))  # live blocks are never emptied

    async def test_restart_keeps_the_trash_recoverable(self) -> None:
        """A crash cannot stop a rename half-way; what a restart finds is a
        trashed block, temp files of unfinished writes, maybe both for one
        hash. start() removes only the temp files: the trashed block stays
        recoverable, whole, and out of the index."""
        vol = self.volume()
        await vol.start()
        hash, data, _ = await self.old_block(vol)
        self.assertTrue(await vol.trash(hash))
        subdir = os.path.dirname(vol.block_path(hash))
        leftover = os.path.join(subdir, f"{hash}.tmp-00000000000000aa")
        with open(leftover, "wb") as f:
            f.write(data[:10])  # an unfinished write of the same block
        again = self.volume()
        await again.start()
        self.assertFalse(os.path.exists(leftover))
        self.assertEqual(await again.index(""), [])
        self.assertIsNone(await again.open_read(hash))
        self.assertTrue(await again.untrash(hash))
        self.assertEqual(await read_all(again, hash), data)

    async def test_newest_trashed_copy_is_restored(self) -> None:
        """Two trashed copies (trashed, written again, trashed again): untrash
        takes the newest; emptying takes each at its own deadline."""
        vol = self.volume()
        await vol.start()
        hash, data, _ = await self.old_block(vol)
        self.assertTrue(await vol.trash(hash))
        self.clock.advance(HOUR)
        await self.put(vol, data)
        second = age(vol.block_path(hash), TTL + 2 * HOUR)
        self.assertTrue(await vol.trash(hash, second))
        now = self.clock.seconds()
        self.assertEqual(await vol.empty_trash(now + HOUR + 5), 1)  # the first one only
        self.assertTrue(await vol.untrash(hash))
        self.assertEqual(os.stat(vol.block_path(hash)).st_mtime_ns, second)

    async def test_put_in_another_process_between_check_and_rename_wins(self) -> None:
        """``arvnode keep balance`` runs beside the node on the same directory: its
        trash checks the mtime, the node's PUT of the same block refreshes it and is
        acknowledged, then the trash renames. A lock held by one process only lets
        that happen (an acknowledged block in the trash); the subdirectory's flock
        makes the PUT wait for the trash and then store the block again.
        Two DirectoryVolume objects on one root stand for the two processes."""
        cli, node = self.volume(), self.volume()
        await cli.start()
        hash, data, mtime = await self.old_block(cli)
        path = cli.block_path(hash)
        tmp = f"{path}.tmp-0000000000000001"
        with open(tmp, "wb") as f:
            f.write(data)
        fd = os.open(tmp, os.O_RDWR)
        writer = BlockWriter(node, hash, len(data), tmp, fd)
        writer._written = len(data)
        checked, go = threading.Event(), threading.Event()
        real_stat = os.stat
        trash_thread: list[threading.Thread] = []

        def pausing_stat(p: Any, *a: Any, **kw: Any) -> Any:
            st = real_stat(p, *a, **kw)
            if p == path and threading.current_thread() in trash_thread:
                checked.set()
                go.wait(5)
            return st

        outcome: dict[str, Any] = {}

        def trash() -> None:
            outcome["trashed"] = cli._trash_blocking(hash, mtime, self.clock.seconds())

        def commit() -> None:
            try:
                writer._commit_blocking()
                outcome["committed"] = True
            except Exception as e:
                outcome["committed"] = e

        self.patch(directory.os, "stat", pausing_stat)
        t1 = threading.Thread(target=trash)
        trash_thread.append(t1)
        t1.start()
        self.assertTrue(checked.wait(5))
        t2 = threading.Thread(target=commit)
        t2.start()
        t2.join(0.5)  # the PUT runs (or waits for the lock) while the trash is paused
        go.set()
        t1.join(5)
        t2.join(5)
        self.assertEqual(outcome["committed"], True)
        self.assertTrue(os.path.exists(path), outcome)
        self.assertEqual(await read_all(node, hash), data)

    async def test_trashed_index_lists_hashes_with_a_trashed_copy(self) -> None:
        """Each hash with at least one trashed copy, once, by prefix; live blocks
        and temp files are not listed; a live block that also has a trashed copy is."""
        vol = self.volume()
        await vol.start()
        self.assertTrue(verifyObject(ITrashedIndex, vol))
        self.assertEqual(list(await vol.trashed_index("")), [])  # no subdirectories yet
        hash, data, mtime = await self.old_block(vol)
        other, _, other_mtime = await self.old_block(vol, seed=1)
        live, _, _ = await self.old_block(vol, seed=2)
        self.assertTrue(await vol.trash(hash, mtime))
        self.clock.advance(1)
        await self.put(vol, data)  # live again, then trashed again: two trashed copies
        self.assertTrue(await vol.trash(hash, age(vol.block_path(hash), TTL + HOUR)))
        self.assertTrue(await vol.trash(other, other_mtime))
        await self.put(vol, block(seed=1)[1])  # "other" is live again too
        names = os.listdir(os.path.dirname(vol.block_path(hash)))
        self.assertEqual(len([n for n in names if n.startswith(hash + ".trash.")]), 2)
        self.assertEqual(list(await vol.trashed_index("")), sorted([hash, other]))
        self.assertEqual(list(await vol.trashed_index(hash[0])),
                         sorted({hash} | ({other} if other[0] == hash[0] else set())))
        self.assertEqual(list(await vol.trashed_index(hash)), [hash])
        self.assertEqual(list(await vol.trashed_index(live)), [])
        await self.assertFailure(vol.trashed_index("../x"), ValueError)

    async def test_bad_hash_is_refused(self) -> None:
        vol = self.volume()
        await vol.start()
        for call in (vol.trash, vol.untrash, vol.touch):
            with self.assertRaises(ValueError):
                await call("../etc/passwd")


class EmptyTrashServiceTests(TestCase):
    """The ``blob-trash-sweeper`` timer on a task.Clock, real volumes."""

    timeout = 30

    async def test_empties_after_the_lifetime_only(self) -> None:
        pool = ThreadPool(minthreads=1, maxthreads=2, name="trash-service-test")
        pool.start()
        self.addCleanup(pool.stop)
        clock = Clock()
        clock.advance(time.time())
        vol = DirectoryVolume(UUID, self.mktemp(), reactor=reactor, threadpool=pool, clock=clock,
                              trash_policy=TrashPolicy(lifetime=3 * HOUR, signing_ttl=TTL))
        await vol.start()
        _, data = block()
        writer = await vol.open_write(hashlib.md5(data).hexdigest(), len(data))
        await writer.write(data)
        await writer.commit()
        hash = hashlib.md5(data).hexdigest()
        age(vol.block_path(hash), TTL + HOUR)
        self.assertTrue(await vol.trash(hash))
        service = EmptyTrashService(lambda: [vol], clock=clock, interval=HOUR)
        self.assertEqual(service.name, EMPTY_TRASH_SERVICE_NAME)
        service.startService()
        self.addCleanup(service.stopService)
        for _ in range(2):  # 1 h, 2 h: inside the lifetime
            clock.advance(HOUR)
            await service.idle()
            self.assertEqual(service.deleted, 0)
        self.assertEqual(service.rounds, 2)
        self.assertTrue(await vol.untrash(hash))  # recoverable until the end
        self.assertTrue(await vol.trash(hash))  # deadline now 2 h + 3 h
        for _ in range(2):
            clock.advance(HOUR)
            await service.idle()
        self.assertEqual(service.deleted, 0)
        clock.advance(HOUR + 1)  # past 5 h
        await service.idle()
        self.assertEqual(service.deleted, 1)
        self.assertFalse(await vol.untrash(hash))
        await service.stopService()
        clock.advance(10 * HOUR)
        self.assertEqual(service.rounds, 5)  # stopped: no more rounds


class TrashListTests(SynchronousTestCase):
    def test_parse(self) -> None:
        h = "a" * 32
        items = parse_trash_list([{"locator": f"{h}+3", "block_mtime": 5},
                                  {"locator": h, "block_mtime": 6, "mount_uuid": UUID}])
        self.assertEqual([(i.hash, i.block_mtime, i.mount_uuid) for i in items],
                         [(h, 5, ""), (h, 6, UUID)])
        for bad in ({}, [1], [{"locator": "xyz", "block_mtime": 1}],
                    [{"locator": h, "block_mtime": "1"}], [{"locator": h, "block_mtime": True}],
                    [{"locator": h + "x", "block_mtime": 1}]):
            self.assertRaises(ValueError, parse_trash_list, bad)

    def test_worker_skips_too_new_and_unknown_mounts(self) -> None:
        calls: list[tuple[str, str, int]] = []

        class Vol:
            def __init__(self, uuid: str) -> None:
                self.uuid = uuid

            async def trash(self, hash: str, mtime: int) -> bool:
                calls.append((self.uuid, hash, mtime))
                return True

        clock = Clock()
        clock.advance(10 * TTL)
        worker = TrashListWorker(volumes=lambda: [Vol("a"), Vol("b")],
                                 policy=TrashPolicy(signing_ttl=TTL), clock=clock, concurrency=2)
        old = int((10 * TTL - TTL - 1) * 1e9)
        new = int((10 * TTL - TTL + 60) * 1e9)
        worker.set_list(parse_trash_list([
            {"locator": "1" * 32, "block_mtime": new},
            {"locator": "2" * 32, "block_mtime": old},
            {"locator": "3" * 32, "block_mtime": old, "mount_uuid": "b"},
            {"locator": "4" * 32, "block_mtime": old, "mount_uuid": "nope"},
        ]))
        self.successResultOf(worker.idle())
        self.assertEqual(sorted(calls), [("a", "2" * 32, old), ("b", "2" * 32, old), ("b", "3" * 32, old)])
        self.assertEqual((worker.trashed, worker.skipped), (3, 2))
        off = TrashListWorker(volumes=lambda: [Vol("a")], policy=TrashPolicy(enabled=False),
                              clock=clock)
        off.set_list(parse_trash_list([{"locator": "5" * 32, "block_mtime": old}]))
        self.assertEqual((off.pending, len(calls)), (0, 3))


class ShiftedClock:
    """The reactor's timers, with ``seconds()`` moved: S3 mtimes are the
    bucket's real clock, so "later" must be real time plus an offset."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def seconds(self) -> float:
        return reactor.seconds() + self.offset

    def callLater(self, *a: Any, **kw: Any) -> Any:
        return reactor.callLater(*a, **kw)

    def getDelayedCalls(self) -> Any:
        return reactor.getDelayedCalls()


class S3TrashTests(MotoTestCase):
    """The S3 volume's trash against moto: CopyObject to ``trash/``, then delete."""

    timeout = 120

    def s3volume(self, bucket: str, clock: Any, **policy: Any) -> S3Volume:
        v = S3Volume(UUID, parse_s3_parameters(self.params(bucket)), reactor=reactor, clock=clock,
                     rng=random.Random(3), backoff_base=0.01)
        v.trash_policy = TrashPolicy(**{"lifetime": 2 * HOUR, "signing_ttl": HOUR, **policy})
        self.addCleanup(v.stop)
        return v

    async def put(self, v: S3Volume, data: bytes) -> str:
        hash = hashlib.md5(data).hexdigest()
        writer = await v.open_write(hash, len(data))
        await writer.write(data)
        await writer.commit()
        return hash

    async def test_trash_untrash_empty(self) -> None:
        bucket = self.bucket()
        now_clock = ShiftedClock(0)
        later = ShiftedClock(HOUR + 60)  # past BlobSigningTTL (1 h here)
        v = self.s3volume(bucket, later)
        verifyObject(IVolume, v)
        _, data = block(5000)
        hash = await self.put(v, data)
        other = await self.put(v, block(100, 1)[1])
        ((_, _, mtime),) = [e for e in await v.index("") if e[0] == hash]
        fresh = self.s3volume(bucket, now_clock)
        self.assertFalse(await fresh.trash(hash, mtime))  # inside the signing window
        self.assertFalse(await v.trash(hash, mtime + 1_000_000))  # stale mtime
        self.assertEqual(await read_all(v, hash), data)
        self.assertTrue(await v.trash(hash, mtime))
        self.assertIsNone(await v.stat(hash))
        self.assertIsNone(await v.open_read(hash))
        self.assertEqual([h for h, _, _ in await v.index("")], [other])
        keys = self.moto.keys(bucket)
        self.assertIn(f"trash/{hash}", keys)
        self.assertNotIn(hash, keys)
        # Inside the lifetime nothing is emptied; untrash brings the bytes back.
        self.assertEqual(await v.empty_trash(later.seconds()), 0)
        self.assertTrue(await v.untrash(hash))
        self.assertEqual(await read_all(v, hash), data)
        self.assertFalse(await v.untrash(hash))
        self.assertNotIn(f"trash/{hash}", self.moto.keys(bucket))
        # Trash again, then empty after the lifetime: gone for good.
        untrashed_mtime = [e for e in await v.index("") if e[0] == hash][0][2]
        much_later = self.s3volume(bucket, ShiftedClock(3 * HOUR))
        self.assertTrue(await much_later.trash(hash, untrashed_mtime))
        # The trash time is the copy's LastModified: the bucket's (real) clock.
        self.assertEqual(await much_later.empty_trash(reactor.seconds() + HOUR), 0)
        self.assertEqual(await much_later.empty_trash(reactor.seconds() + 2 * HOUR + 60), 1)
        self.assertFalse(await v.untrash(hash))
        self.assertEqual(sorted(self.moto.keys(bucket)), [other])

    async def test_trashed_index(self) -> None:
        """The trash/ listing narrowed to a prefix, with Prefix and PrefixLength
        keys; live blocks and other objects are not listed."""
        bucket = self.bucket()
        later = ShiftedClock(HOUR + 60)
        v = S3Volume(UUID, parse_s3_parameters(self.params(bucket, Prefix="keep/",
                                                           PrefixLength=3)),
                     reactor=reactor, clock=later, rng=random.Random(3), backoff_base=0.01)
        v.trash_policy = TrashPolicy(lifetime=2 * HOUR, signing_ttl=HOUR)
        self.addCleanup(v.stop)
        self.assertTrue(verifyObject(ITrashedIndex, v))
        hashes = [await self.put(v, block(100, seed)[1]) for seed in range(4)]
        for h, _, mtime in await v.index(""):
            if h != hashes[3]:
                self.assertTrue(await v.trash(h, mtime))
        self.moto.put(bucket, "trash/keep/not-a-block", b"x")
        self.moto.put(bucket, f"trash/{hashes[3]}", b"x")  # outside Prefix
        self.assertIn(f"trash/keep/{hashes[0][:3]}/{hashes[0]}", self.moto.keys(bucket))
        self.assertEqual(list(await v.trashed_index("")), sorted(hashes[:3]))
        first = hashes[0]
        for prefix in (first[0], first[:3], first[:5], first):
            self.assertEqual(list(await v.trashed_index(prefix)),
                             sorted(h for h in hashes[:3] if h.startswith(prefix)), prefix)
        await self.assertFailure(v.trashed_index("G"), ValueError)

    async def test_touch_put_after_trash_and_lifetime_zero(self) -> None:
        bucket = self.bucket()
        later = ShiftedClock(HOUR + 60)
        v = self.s3volume(bucket, later)
        _, data = block(700, 2)
        hash = await self.put(v, data)
        ((_, _, mtime),) = await v.index("")
        zero = self.s3volume(bucket, later, lifetime=0)
        self.assertFalse(await zero.trash(hash, mtime))  # no UnsafeDelete: keep it
        self.assertTrue(await v.touch(hash))
        ((_, _, touched),) = await v.index("")
        self.assertGreaterEqual(touched, mtime)
        self.assertFalse(await v.touch(block(1, 3)[0]))
        self.assertTrue(await v.trash(hash, touched))
        self.assertIsNone(await v.stat(hash))
        await self.put(v, data)  # the same block again: live
        self.assertEqual(await read_all(v, hash), data)
        self.assertTrue(await v.untrash(hash))  # the live copy stays
        self.assertEqual(await read_all(v, hash), data)
        # Written again while stored: not uploaded, its mtime refreshed (a
        # copy onto itself, test_s3_volume.test_stored_block_not_uploaded_again
        # sees it on the wire; moto's LastModified has whole seconds, so the
        # value may not move within this test).
        ((_, _, before),) = await v.index("")
        await self.put(v, data)
        ((_, _, after),) = await v.index("")
        self.assertGreaterEqual(after, before)


class UpstreamTrashTests(TestCase):
    """The upstream volume's trash through a real keepstore node's admin API."""

    timeout = 60

    async def test_trash_touch_untrash_through_the_admin_api(self) -> None:
        node = await start_keepstore(self)
        site = node.node.getServiceNamed("keepstore").site
        port = node.node.getServiceNamed("keepstore").port
        vol = UpstreamKeepstore(
            "zzzzz-bi6l4-000000000000000", f"http://127.0.0.1:{port}/",
            reactor=reactor, clock=reactor, token=node.root_token,
            signing_key=node.section["Collections"]["BlobSigningKey"], signing_ttl=TTL,
        )
        self.addCleanup(vol.stop)
        verifyObject(IVolume, vol)
        _, data = block(3000, 4)
        writer = await vol.open_write(hashlib.md5(data).hexdigest(), len(data))
        await writer.write(data)
        await writer.commit()
        hash = hashlib.md5(data).hexdigest()
        path = node.paths["data"] / "keep" / hash[:3] / hash
        self.assertFalse(await vol.trash(hash))  # too new
        mtime = age(path, TTL + HOUR)
        self.assertFalse(await vol.trash(hash, mtime + 1))  # stale
        self.assertTrue(await vol.trash(hash, mtime))
        await site.keepstore.trash_worker.idle()
        self.assertIsNone(await vol.stat(hash))
        self.assertTrue(await vol.untrash(hash))
        self.assertEqual(await read_all(vol, hash), data)
        self.assertFalse(await vol.untrash(hash))
        self.assertTrue(await vol.touch(hash))
        self.assertGreater(os.stat(path).st_mtime_ns, mtime)
        self.assertFalse(await vol.touch(block(1, 5)[0]))
        self.assertEqual(await vol.empty_trash(time.time() + 10 * TTL), 0)


class KeepstoreAdminTests(TestCase):
    """The admin routes of a real keepstore node, over HTTP."""

    timeout = 60

    async def setUp(self) -> None:
        self.node = await start_keepstore(self, **{"Collections.BlobTrashLifetime": "2h"})
        listener = self.node.node.getServiceNamed("keepstore")
        self.keepstore = listener.site.keepstore
        self.base = f"http://127.0.0.1:{listener.port}"
        self.client = http_client(self)
        self.root = {"Authorization": f"Bearer {self.node.root_token}"}
        self.volume = self.keepstore.volumes[0]

    async def put_old(self, data: bytes) -> tuple[str, int]:
        r = await self.client.put(f"{self.base}/{hashlib.md5(data).hexdigest()}", data=data)
        self.assertEqual(r.code, 200, await r.text())
        hash = hashlib.md5(data).hexdigest()
        return hash, age(self.volume.block_path(hash), TTL + HOUR)

    async def call(self, method: str, path: str, body: Any = None, token: str | None = "root") -> tuple[int, str]:
        headers = {} if token is None else (
            self.root if token == "root" else {"Authorization": f"Bearer {token}"})
        data = None if body is None else json.dumps(body).encode()
        r = await self.client.request(method, self.base + path, headers=headers, data=data)
        return r.code, await r.text()

    async def index(self) -> str:
        code, text = await self.call("GET", "/index")
        self.assertEqual(code, 200)
        return text

    async def test_admin_routes_need_the_system_root_token(self) -> None:
        """Every admin route: no token 401, another token 403."""
        hash = "a" * 32
        routes = [("GET", "/mounts", None), ("GET", f"/mounts/{self.volume.uuid}/blocks", None),
                  ("PUT", "/trash", []), ("PUT", f"/untrash/{hash}", None),
                  ("TOUCH", f"/{hash}", None), ("DELETE", f"/{hash}", None)]
        for method, path, body in routes:
            self.assertEqual((await self.call(method, path, body, token=None))[0], 401, path)
            self.assertEqual((await self.call(method, path, body, token="x" * 40))[0], 403, path)
        self.assertEqual((await self.call("POST", "/trash", []))[0], 400)
        self.assertEqual((await self.call("GET", "/untrash/" + hash))[0], 400)

    async def test_mounts_and_mount_index(self) -> None:
        hash, mtime = await self.put_old(b"mounted block")
        code, text = await self.call("GET", "/mounts")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(text), [{
            "uuid": self.volume.uuid, "device_id": self.volume.device_id, "read_only": False,
            "allow_write": True, "allow_trash": True, "replication": 1,
            "storage_classes": {"default": True},
        }])
        line = f"{hash}+13 {mtime}\n\n"
        for path in (f"/mounts/{self.volume.uuid}/blocks", f"/mounts/{self.volume.uuid}/blocks/{hash[:4]}",
                     f"/mounts/{self.volume.uuid}/blocks?prefix={hash[:2]}"):
            self.assertEqual(await self.call("GET", path), (200, line), path)
        self.assertEqual(await self.call("GET", f"/mounts/{self.volume.uuid}/blocks/fff"
                                         if not hash.startswith("fff") else "/mounts/x/blocks/000"),
                         (200, "\n") if not hash.startswith("fff") else (404, "Not Found\n"))
        self.assertEqual((await self.call("GET", "/mounts/zzzzz-nyw5e-999999999999999/blocks"))[0], 404)

    async def test_trash_list_then_untrash(self) -> None:
        """PUT /trash trashes what still has the listed mtime (not the stale
        entry, not the one inside BlobSigningTTL); GET 404 and gone from the
        index; PUT /untrash brings it back byte-identical; untrash of a
        block in no trash is 404."""
        data = os.urandom(4000)
        hash, mtime = await self.put_old(data)
        stale, stale_mtime = await self.put_old(b"stale entry")
        fresh_data = b"fresh block"
        r = await self.client.put(f"{self.base}/{hashlib.md5(fresh_data).hexdigest()}", data=fresh_data)
        await r.content()
        fresh = hashlib.md5(fresh_data).hexdigest()
        fresh_mtime = os.stat(self.volume.block_path(fresh)).st_mtime_ns
        code, _ = await self.call("PUT", "/trash", [
            {"locator": f"{hash}+4000", "block_mtime": mtime},
            {"locator": f"{stale}+11", "block_mtime": stale_mtime + 1},
            {"locator": f"{fresh}+11", "block_mtime": fresh_mtime, "mount_uuid": self.volume.uuid},
        ])
        self.assertEqual(code, 200)
        await self.keepstore.trash_worker.idle()
        index = await self.index()
        self.assertNotIn(hash, index)
        self.assertIn(stale, index)
        self.assertIn(fresh, index)
        self.assertIsNone(await self.volume.stat(hash))
        self.assertEqual(await self.call("PUT", f"/untrash/{hash}+4000"), (200, ""))
        self.assertEqual(await read_all(self.volume, hash), data)
        self.assertIn(hash, await self.index())
        self.assertEqual((await self.call("PUT", f"/untrash/{hash}"))[0], 404)
        self.assertEqual((await self.call("PUT", "/trash", {"not": "a list"}))[0], 400)
        r = await self.client.put(f"{self.base}/trash", data=b"[{", headers=self.root)
        self.assertEqual(r.code, 400)
        await r.content()

    async def test_touch_and_delete(self) -> None:
        """TOUCH refreshes the mtime (404 if absent); DELETE trashes a block
        older than BlobSigningTTL, answers 200 but keeps a newer one, 404
        for an absent one."""
        hash, mtime = await self.put_old(b"touch me")
        self.assertEqual(await self.call("TOUCH", f"/{hash}+8"), (200, ""))
        self.assertGreater(os.stat(self.volume.block_path(hash)).st_mtime_ns, mtime)
        self.assertEqual((await self.call("TOUCH", "/" + "b" * 32))[0], 404)
        self.assertEqual(await self.call("DELETE", f"/{hash}"), (200, ""))
        self.assertIn(hash, await self.index())  # just touched: kept
        age(self.volume.block_path(hash), TTL + HOUR)
        self.assertEqual(await self.call("DELETE", f"/{hash}"), (200, ""))
        self.assertNotIn(hash, await self.index())
        self.assertEqual((await self.call("DELETE", f"/{hash}"))[0], 404)
        self.assertEqual((await self.call("PUT", f"/untrash/{hash}"))[0], 200)
        self.assertEqual((await self.call("TOUCH", "/nothex"))[0], 400)

    async def test_pull_list_shapes(self) -> None:
        self.assertEqual((await self.call("PUT", "/pull", [], token=None))[0], 401)
        self.assertEqual((await self.call("PUT", "/pull", [], token="y" * 40))[0], 403)
        self.assertEqual(await self.call("PUT", "/pull", []), (200, ""))
        code, text = await self.call("PUT", "/pull", [{"locator": "c" * 32, "servers": []}])
        self.assertEqual(code, 400)
        self.assertIn("without a size hint", text)
        code, _ = await self.call("PUT", "/pull", [{"locator": "c" * 32 + "+3", "servers": ["ftp://x"]}])
        self.assertEqual(code, 400)

    async def test_empty_trash_service_is_wired(self) -> None:
        """The node runs the ``blob-trash-sweeper`` over its local volumes."""
        service = self.node.node.getServiceNamed(EMPTY_TRASH_SERVICE_NAME)
        self.assertEqual(service.interval, 24 * HOUR)
        hash, _ = await self.put_old(b"emptied for good")
        self.assertTrue(await self.volume.trash(hash))
        self.assertEqual(await service.empty_all(), 0)  # inside the 2 h lifetime
        self.assertEqual(await self.volume.empty_trash(time.time() + 2 * HOUR + 5), 1)


class DisabledTrashTests(TestCase):
    timeout = 60

    async def test_blob_trash_false(self) -> None:
        """BlobTrash false: DELETE 405, a trash list trashes nothing, no
        empty-trash timer."""
        node = await start_keepstore(self, **{"Collections.BlobTrash": False})
        listener = node.node.getServiceNamed("keepstore")
        keepstore = listener.site.keepstore
        client = http_client(self)
        root = {"Authorization": f"Bearer {node.root_token}"}
        data = b"never trashed"
        hash = hashlib.md5(data).hexdigest()
        r = await client.put(f"http://127.0.0.1:{listener.port}/{hash}", data=data)
        await r.content()
        mtime = age(keepstore.volumes[0].block_path(hash), TTL + HOUR)
        r = await client.request("DELETE", f"http://127.0.0.1:{listener.port}/{hash}", headers=root)
        self.assertEqual(r.code, 405)
        await r.content()
        r = await client.put(f"http://127.0.0.1:{listener.port}/trash", headers=root,
                             data=json.dumps([{"locator": hash, "block_mtime": mtime}]).encode())
        self.assertEqual(r.code, 200)
        await r.content()
        await keepstore.trash_worker.idle()
        self.assertEqual(await keepstore.volumes[0].stat(hash), len(data))
        self.assertRaises(KeyError, node.node.getServiceNamed, EMPTY_TRASH_SERVICE_NAME)


class PullTests(TestCase):
    """``PUT /pull`` between two real keepstore nodes of one cluster."""

    timeout = 90

    async def test_pull_copies_verified_blocks(self) -> None:
        """B pulls from A with the root token: the block lands on B
        byte-identical; a block A lacks, or holds corrupted, is not stored."""
        a = await start_keepstore(self)
        shared = {"SystemRootToken": a.root_token,
                  "Collections.BlobSigningKey": a.section["Collections"]["BlobSigningKey"]}
        b = await start_keepstore(self, **shared)
        a_url = f"http://127.0.0.1:{a.node.getServiceNamed('keepstore').port}"
        b_listener = b.node.getServiceNamed("keepstore")
        b_keepstore = b_listener.site.keepstore
        client = http_client(self)
        blocks = {}
        for seed in (1, 2):
            _, data = block(200_000, seed)
            hash = hashlib.md5(data).hexdigest()
            r = await client.put(f"{a_url}/{hash}", data=data)
            self.assertEqual(r.code, 200)
            await r.content()
            blocks[hash] = data
        good, corrupt = list(blocks)
        path = a.paths["data"] / "keep" / corrupt[:3] / corrupt
        path.write_bytes(b"x" * len(blocks[corrupt]))
        missing = block(10, 3)[0]
        target = b_keepstore.volumes[0]
        body = json.dumps([
            {"locator": f"{good}+200000", "servers": ["http://127.0.0.1:1", a_url],
             "mount_uuid": target.uuid},
            {"locator": f"{corrupt}+200000", "servers": [a_url]},
            {"locator": f"{missing}+10", "servers": [a_url]},
        ]).encode()
        r = await client.put(f"http://127.0.0.1:{b_listener.port}/pull", data=body,
                             headers={"Authorization": f"Bearer {b.root_token}"})
        self.assertEqual(r.code, 200, await r.text())
        await b_keepstore.puller.idle()
        self.assertEqual(await read_all(target, good), blocks[good])
        self.assertIsNone(await target.stat(corrupt))
        self.assertIsNone(await target.stat(missing))
        self.assertEqual((b_keepstore.puller.pulled, b_keepstore.puller.failed), (1, 2))
        self.assertEqual([p.name for p in target.root and Path(target.root).rglob("*.tmp-*")], [])
