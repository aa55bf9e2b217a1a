"""Tests for arvnode.keep.volumes.directory: durability rules, crash cleanup,
real I/O failures, and the reader's push-producer contract.

Everything runs against real temp directories and a real ThreadPool; failures
are real ones (a root that turns into a file, a full tmpfs, permissions), not
injected hooks.
"""
from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import stat
import subprocess
from typing import Any, Callable, Mapping, cast

import attrs
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import ILogObserver, Logger
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from arvnode.keep.volume import IBlockReader, IBlockWriter, IVolume, VolumeError, VolumeFull
from arvnode.keep.volumes import DirectoryVolume, build_volume
from arvnode.keep.volumes.directory import TMP_MARKER

UUID = "zzzzz-nyw5e-000000000000000"
MiB = 1 << 20


def block(size: int, seed: int = 0) -> tuple[str, bytes]:
    data = random.Random(seed).randbytes(size)
    return hashlib.md5(data).hexdigest(), data


def fds_open_on(path: str) -> int:
    """How many of this process's descriptors point at ``path``."""
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        raise SkipTest("needs /proc/self/fd to check descriptors")
    real = os.path.realpath(path)
    count = 0
    for name in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, name)) == real:
                count += 1
        except OSError:
            pass
    return count


@implementer(IConsumer)
class RecordingConsumer:
    """Records writes and producer (un)registration; optional hook per write."""

    def __init__(self, on_write: Callable[["RecordingConsumer", bytes], None] | None = None,
                 pause_on_register: bool = False) -> None:
        self.writes: list[bytes] = []
        self.producer: IPushProducer | None = None
        self.streaming: bool | None = None
        self.registered = 0
        self.unregistered = 0
        self.on_write = on_write
        self.pause_on_register = pause_on_register
        self.first_write: Deferred[None] = Deferred()

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        assert IPushProducer.providedBy(producer)
        self.producer, self.streaming = producer, streaming
        self.registered += 1
        if self.pause_on_register:
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self.unregistered += 1
        self.producer = None

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        if not self.first_write.called:
            self.first_write.callback(None)
        if self.on_write is not None:
            self.on_write(self, data)

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


def pause(consumer: RecordingConsumer) -> None:
    assert consumer.producer is not None
    consumer.producer.pauseProducing()


class VolumeTestMixin:
    """A started DirectoryVolume on a fresh temp dir and a real 2-thread pool."""

    pool: ThreadPool
    root: str
    #: The real reactor trial runs, typed loosely: tests need several of its interfaces.
    reactor: Any = global_reactor
    pool_threads = 2

    def setUp(self) -> None:
        self.pool = ThreadPool(minthreads=1, maxthreads=self.pool_threads,
                               name="test-directory-volume")
        self.pool.start()
        self.addCleanup(self.pool.stop)  # type: ignore[attr-defined]
        base = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(base)
        self.root = os.path.join(base, "vol")

    def make_volume(self, **kw: Any) -> DirectoryVolume:
        kw.setdefault("rng", random.Random(1234))
        root = kw.pop("root", self.root)
        return DirectoryVolume(UUID, root, reactor=self.reactor, threadpool=self.pool, **kw)

    async def started_volume(self, **kw: Any) -> DirectoryVolume:
        vol = self.make_volume(**kw)
        await vol.start()
        return vol

    async def put(self, vol: DirectoryVolume, data: bytes, batch: int = MiB + 7,
                  size: int | None = None) -> IBlockWriter:
        h = hashlib.md5(data).hexdigest()
        w = await vol.open_write(h, len(data) if size is None else size)
        for i in range(0, len(data), batch):
            await w.write(data[i:i + batch])
        await w.commit()
        return w

    async def get(self, vol: DirectoryVolume, h: str) -> bytes:
        r = await vol.open_read(h)
        assert r is not None
        c = RecordingConsumer()
        await r.produce(c)
        return c.data

    async def settle(self, turns: int = 5) -> None:
        """Let queued pool jobs and reactor callbacks run, without sleeping.

        With a 1-thread pool this is exact: jobs run in order and their
        results reach the reactor in order, so every job queued before the
        call (such as a block read) has delivered its result on return."""
        for _ in range(turns):
            await deferToThreadPool(self.reactor, self.pool, lambda: None)
            await deferLater(self.reactor, 0, lambda: None)

    def files_under(self, root: str | None = None) -> list[str]:
        root = root or self.root
        out: list[str] = []
        for dirpath, _dirs, files in os.walk(root):
            out.extend(os.path.relpath(os.path.join(dirpath, f), root) for f in files)
        return sorted(out)


class WriteReadTests(VolumeTestMixin, TestCase):
    """Writing, committing and reading back blocks."""

    async def roundtrip(self, size: int) -> None:
        vol = await self.started_volume()
        h, data = block(size, seed=size)
        await self.put(vol, data)
        self.assertEqual(await self.get(vol, h), data)
        self.assertEqual(await vol.stat(h), size)
        self.assertEqual(self.files_under(), [os.path.join(h[:3], h)])
        self.assertEqual(vol.block_path(h), os.path.join(self.root, h[:3], h))

    def test_provides_interfaces(self) -> None:
        """The volume provides IVolume with the configured attributes."""
        vol = self.make_volume(replication=2, storage_classes=("hot", "cold"))
        self.assertTrue(verifyObject(IVolume, vol))
        self.assertEqual((vol.uuid, vol.replication, vol.read_only, vol.storage_classes),
                         (UUID, 2, False, ("hot", "cold")))

    async def test_empty_block(self) -> None:
        """A 0-byte block round-trips (the empty block d41d8cd9...)."""
        await self.roundtrip(0)

    async def test_tiny_block(self) -> None:
        """A 3-byte block round-trips byte for byte."""
        await self.roundtrip(3)

    async def test_block_just_over_one_read_chunk(self) -> None:
        """A 1 MiB + 1 block round-trips (one full read chunk and one byte)."""
        await self.roundtrip(MiB + 1)

    async def test_nine_mib_block(self) -> None:
        """A 9 MiB block round-trips through two writeback/drop-behind steps."""
        await self.roundtrip(9 * MiB)

    async def test_reads_in_read_chunk_pieces(self) -> None:
        """The reader hands the consumer pieces of at most read_chunk bytes."""
        vol = await self.started_volume(read_chunk=100_000)
        h, data = block(1_000_001)
        await self.put(vol, data)
        r = await vol.open_read(h)
        assert r is not None
        self.assertTrue(verifyObject(IBlockReader, r))
        self.assertEqual(r.size, len(data))
        c = RecordingConsumer()
        await r.produce(c)
        self.assertEqual([len(w) for w in c.writes], [100_000] * 10 + [1])
        self.assertEqual(c.data, data)
        self.assertEqual((c.registered, c.unregistered, c.streaming), (1, 1, True))

    async def test_write_accepts_reused_buffers(self) -> None:
        """write() takes bytearray/memoryview and does not keep them: the
        caller may refill the same buffer once the Deferred fired."""
        vol = await self.started_volume()
        h, data = block(3 * MiB)
        w = await vol.open_write(h, len(data))
        self.assertTrue(verifyObject(IBlockWriter, w))
        buf = bytearray(MiB)
        for i in range(3):
            buf[:] = data[i * MiB:(i + 1) * MiB]
            await w.write(memoryview(buf))  # type: ignore[arg-type]  # IBlockWriter says bytes
        buf[:] = b"\0" * MiB
        await w.commit()
        self.assertEqual(await self.get(vol, h), data)

    async def test_block_file_mode_is_private(self) -> None:
        """Committed blocks are mode 0600 in 0700 subdirectories."""
        vol = await self.started_volume()
        h, data = block(10)
        await self.put(vol, data)
        self.assertEqual(stat.S_IMODE(os.stat(vol.block_path(h)).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(vol.block_path(h))).st_mode)
                         & 0o077, 0)

    async def test_temp_file_never_under_final_name(self) -> None:
        """Mid-write only the .tmp- file exists; stat/open_read/index do not see
        the block until commit, and after commit only the final name exists."""
        vol = await self.started_volume()
        h, data = block(2 * MiB + 5)
        w = await vol.open_write(h, len(data))
        await w.write(data[:MiB])
        names = os.listdir(os.path.join(self.root, h[:3]))
        self.assertEqual(len(names), 1)
        self.assertTrue(names[0].startswith(h + TMP_MARKER), names)
        self.assertIsNone(await vol.stat(h))
        self.assertIsNone(await vol.open_read(h))
        self.assertEqual(list(await vol.index("")), [])
        await w.write(data[MiB:])
        self.assertFalse(os.path.exists(vol.block_path(h)))
        await w.commit()
        self.assertEqual(os.listdir(os.path.join(self.root, h[:3])), [h])

    async def test_abort_leaves_nothing(self) -> None:
        """abort() removes the temp file, is idempotent, and later writes or
        commits fail with VolumeError."""
        vol = await self.started_volume()
        h, data = block(MiB)
        w = await vol.open_write(h, len(data))
        await w.write(data[:1000])
        await w.abort()
        await w.abort()
        self.assertEqual(self.files_under(), [])
        await self.assertFailure(w.write(b"x"), VolumeError)
        await self.assertFailure(w.commit(), VolumeError)
        self.assertIsNone(await vol.stat(h))

    async def test_abort_during_write(self) -> None:
        """abort() while a write is in flight waits for it, then removes the
        temp file; a write queued behind the abort fails."""
        vol = await self.started_volume()
        h, data = block(4 * MiB)
        w = await vol.open_write(h, len(data))
        d_write = w.write(data[:2 * MiB])
        d_abort = w.abort()
        d_late = w.write(data[2 * MiB:])
        await d_write
        await d_abort
        await self.assertFailure(d_late, VolumeError)
        self.assertEqual(self.files_under(), [])

    async def test_commit_with_short_size_fails(self) -> None:
        """Committing fewer bytes than declared fails and leaves nothing."""
        vol = await self.started_volume()
        h, data = block(100)
        w = await vol.open_write(h, 101)
        await w.write(data)
        err = await self.assertFailure(w.commit(), VolumeError)
        self.assertIn("declared 101", str(err))
        self.assertEqual(self.files_under(), [])
        await w.abort()  # still safe

    async def test_write_past_declared_size_fails(self) -> None:
        """Writing more than the declared size fails at once and leaves nothing."""
        vol = await self.started_volume()
        h, data = block(100)
        w = await vol.open_write(h, 99)
        await self.assertFailure(w.write(data), VolumeError)
        self.assertEqual(self.files_under(), [])
        await self.assertFailure(w.commit(), VolumeError)
        await w.abort()

    async def test_second_commit_is_a_no_op(self) -> None:
        """commit() twice on one writer succeeds twice; abort after commit
        keeps the block."""
        vol = await self.started_volume()
        h, data = block(10)
        w = await vol.open_write(h, len(data))
        await w.write(data)
        await w.commit()
        await w.commit()
        await w.abort()
        self.assertEqual(await self.get(vol, h), data)

    async def test_duplicate_commit_of_same_block(self) -> None:
        """Storing a block that is already there succeeds, keeps one copy
        (the original inode) and refreshes its mtime."""
        vol = await self.started_volume()
        h, data = block(MiB)
        await self.put(vol, data)
        path = vol.block_path(h)
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
        ino = os.stat(path).st_ino
        await self.put(vol, data)
        st = os.stat(path)
        self.assertEqual(st.st_ino, ino)
        self.assertGreater(st.st_mtime_ns, 1_000_000_000)
        self.assertEqual(self.files_under(), [os.path.join(h[:3], h)])
        self.assertEqual(await self.get(vol, h), data)

    async def test_commit_replaces_a_wrong_size_copy(self) -> None:
        """A stored file of the wrong size (truncated) is replaced on commit."""
        vol = await self.started_volume()
        h, data = block(1000)
        os.makedirs(os.path.dirname(vol.block_path(h)))
        with open(vol.block_path(h), "wb") as f:
            f.write(data[:10])
        await self.put(vol, data)
        self.assertEqual(await self.get(vol, h), data)

    async def test_concurrent_writes_of_same_hash(self) -> None:
        """Two interleaved writes of one block both succeed; one copy remains."""
        vol = await self.started_volume()
        h, data = block(3 * MiB)
        w1, w2 = await gatherResults([vol.open_write(h, len(data)), vol.open_write(h, len(data))])
        for i in range(0, len(data), MiB):
            await gatherResults([w1.write(data[i:i + MiB]), w2.write(data[i:i + MiB])])
        self.assertEqual(len(os.listdir(os.path.join(self.root, h[:3]))), 2)
        await gatherResults([w1.commit(), w2.commit()])
        self.assertEqual(self.files_under(), [os.path.join(h[:3], h)])
        self.assertEqual(await self.get(vol, h), data)

    async def test_invalid_hash_refused(self) -> None:
        """Anything but 32 lowercase hex is refused before touching the disk."""
        vol = await self.started_volume()
        for bad in ("../../etc/passwd", "D41D8CD98F00B204E9800998ECF8427E", "abc"):
            await self.assertFailure(vol.open_write(bad, 1), ValueError)
            await self.assertFailure(vol.open_read(bad), ValueError)
            await self.assertFailure(vol.stat(bad), ValueError)

    async def test_stop_aborts_open_writes(self) -> None:
        """stop() aborts writes still open, so no temp file is left behind."""
        vol = await self.started_volume()
        h, data = block(MiB)
        w = await vol.open_write(h, len(data))
        await w.write(data[:100])
        await vol.stop()
        self.assertEqual(self.files_under(), [])
        await self.assertFailure(w.write(b"x"), VolumeError)


class CancellationTests(VolumeTestMixin, TestCase):
    """Cancelling a Deferred (the client went away) never leaks a temp file
    or a descriptor, and never lets two pool jobs share one descriptor."""

    # One thread, so settle() provably waits out the cleanup jobs.
    pool_threads = 1

    async def test_cancelled_open_write_leaves_nothing(self) -> None:
        """Cancelling open_write (client gone) fails it with CancelledError;
        the temp file the pool job created is removed when it returns."""
        vol = await self.started_volume()
        h, _ = block(10)
        d = vol.open_write(h, 10)
        d.cancel()
        await self.assertFailure(d, CancelledError)
        await self.settle()
        self.assertEqual(self.files_under(), [])
        await vol.stop()

    async def test_cancelled_write_then_abort(self) -> None:
        """Cancelling a write's Deferred does not let abort() close the file
        under the running write: abort waits, then removes the temp file."""
        vol = await self.started_volume()
        h, data = block(8 * MiB)
        w = await vol.open_write(h, len(data))
        d = w.write(data)
        d.cancel()
        await self.assertFailure(d, CancelledError)
        await w.abort()
        self.assertEqual(self.files_under(), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_cancelled_write_then_commit(self) -> None:
        """A cancelled write still completes in order, so a commit queued
        after it sees all the bytes."""
        vol = await self.started_volume()
        h, data = block(2 * MiB)
        w = await vol.open_write(h, len(data))
        d = w.write(data)
        d.cancel()
        await self.assertFailure(d, CancelledError)
        await w.commit()
        self.assertEqual(await self.get(vol, h), data)


class StartTests(VolumeTestMixin, TestCase):
    """start(): root creation and crash recovery."""

    async def test_creates_private_root(self) -> None:
        """A missing root (and missing parents) is created with mode 0700."""
        root = os.path.join(self.root, "a", "b")
        vol = self.make_volume(root=root)
        await vol.start()
        for d in (self.root, os.path.join(self.root, "a"), root):
            self.assertEqual(stat.S_IMODE(os.stat(d).st_mode), 0o700, d)

    async def test_removes_leftover_temp_files(self) -> None:
        """Leftover *.tmp-* files are removed, committed blocks kept, and the
        number removed is logged."""
        h, data = block(10)
        sub = os.path.join(self.root, h[:3])
        os.makedirs(sub)
        leftovers = [os.path.join(sub, h + TMP_MARKER + "0123456789abcdef"),
                     os.path.join(sub, "f" * 32 + TMP_MARKER + "1"),
                     os.path.join(self.root, "x" + TMP_MARKER + "2")]
        for p in leftovers + [os.path.join(sub, h)]:
            with open(p, "wb") as f:
                f.write(data)
        events: list[dict[str, Any]] = []
        vol = self.make_volume()
        vol.log = Logger(observer=cast(ILogObserver, events.append))
        await vol.start()
        self.assertEqual(self.files_under(), [os.path.join(h[:3], h)])
        self.assertEqual([e["removed"] for e in events if "removed" in e], [3])

    async def test_root_is_a_file(self) -> None:
        """A root that is a regular file fails start() with VolumeError."""
        with open(self.root, "wb"):
            pass
        await self.assertFailure(self.make_volume().start(), VolumeError)

    async def test_read_only_volume(self) -> None:
        """A read-only volume refuses writes, serves reads, and start() leaves
        its files (even temp files) alone."""
        h, data = block(10)
        rw = await self.started_volume()
        await self.put(rw, data)
        tmp = os.path.join(self.root, h[:3], h + TMP_MARKER + "1")
        with open(tmp, "wb"):
            pass
        ro = await self.started_volume(read_only=True)
        self.assertTrue(ro.read_only)
        err = await self.assertFailure(ro.open_write(h, len(data)), VolumeError)
        self.assertIn("read-only", str(err))
        self.assertEqual(await self.get(ro, h), data)
        self.assertTrue(os.path.exists(tmp))

    async def test_read_only_volume_needs_existing_root(self) -> None:
        """A read-only volume does not create its root: a missing one fails start()."""
        await self.assertFailure(self.make_volume(read_only=True).start(), VolumeError)
        self.assertFalse(os.path.exists(self.root))


class FailureTests(VolumeTestMixin, TestCase):
    """Real I/O failures become VolumeError/VolumeFull without leaking paths."""

    async def test_root_replaced_by_file(self) -> None:
        """When the root turns into a file, writes and stats fail with a
        VolumeError naming only the path relative to the root."""
        vol = await self.started_volume()
        shutil.rmtree(self.root)
        with open(self.root, "wb"):
            pass
        h, _ = block(10)
        err = await self.assertFailure(vol.open_write(h, 10), VolumeError)
        self.assertNotIsInstance(err, VolumeFull)
        self.assertNotIn(self.root, str(err))
        self.assertIn(h[:3], str(err))
        await self.assertFailure(vol.stat(h), VolumeError)
        await self.assertFailure(vol.open_read(h), VolumeError)
        await self.assertFailure(vol.index(""), VolumeError)

    async def test_unwritable_root(self) -> None:
        """A root without write permission makes open_write fail with VolumeError."""
        vol = await self.started_volume()
        os.chmod(self.root, 0o500)
        self.addCleanup(os.chmod, self.root, 0o700)
        if os.geteuid() == 0 and os.access(self.root, os.W_OK):
            # access(2) says whether permission bits bind this process: as
            # root with CAP_DAC_OVERRIDE they do not.
            raise SkipTest("running as root (with CAP_DAC_OVERRIDE): chmod 0500 "
                           "does not stop root from writing")
        h, _ = block(10)
        err = await self.assertFailure(vol.open_write(h, 10), VolumeError)
        self.assertNotIn(self.root, str(err))

    async def test_disk_full(self) -> None:
        """On a real (1 MiB tmpfs) filesystem: a block larger than the free
        space is refused at open (VolumeFull, nothing created); a write that
        hits ENOSPC (the space went to another writer since the open) becomes
        VolumeFull and its temp file is removed at once, freeing the space."""
        os.makedirs(self.root)
        try:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", self.root],
                           check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise SkipTest(f"cannot mount a small tmpfs to fill ({e})")
        self.addCleanup(subprocess.run, ["umount", self.root], check=True)
        vol = await self.started_volume()
        h, data = block(2 * MiB)
        err = await self.assertFailure(vol.open_write(h, len(data)), VolumeFull)
        self.assertIn("no space for a 2097152-byte block", str(err))
        self.assertEqual(self.files_under(), [])
        # Two writes that each fit at open, but not together.
        h1, data1 = block(700 * 1024)
        h2, data2 = block(700 * 1024 + 1)
        w1 = await vol.open_write(h1, len(data1))
        w2 = await vol.open_write(h2, len(data2))
        await w1.write(data1)
        err = await self.assertFailure(w2.write(data2), VolumeFull)
        self.assertIn("No space left", str(err))
        self.assertNotIn(self.root, str(err))
        self.assertEqual(len(self.files_under()), 1)  # w1's temp file only
        await w2.abort()
        await w1.abort()
        self.assertEqual(self.files_under(), [])
        # The space is back: a small block fits.
        h2, small = block(1000)
        await self.put(vol, small)
        self.assertEqual(await self.get(vol, h2), small)

    def test_error_mapping(self) -> None:
        """ENOSPC and EDQUOT map to VolumeFull, other errors to VolumeError,
        with the path relative to the root."""
        vol = self.make_volume()
        path = os.path.join(vol.root, "abc", "x")
        full = vol._error("write", path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path))
        quota = vol._error("write", path, OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)))
        other = vol._error("write", path, OSError(errno.EIO, os.strerror(errno.EIO), path))
        self.assertIsInstance(full, VolumeFull)
        self.assertIsInstance(quota, VolumeFull)
        self.assertNotIsInstance(other, VolumeFull)
        self.assertIsInstance(other, VolumeError)
        self.assertEqual(str(other), f"volume {UUID}: write abc/x: {os.strerror(errno.EIO)}")


class ReaderTests(VolumeTestMixin, TestCase):
    """The reader is a well-behaved push producer."""

    # One thread, so settle() provably waits out any read in flight.
    pool_threads = 1

    async def stored(self, size: int = 4 * 65536, **kw: Any) -> tuple[DirectoryVolume, str, bytes]:
        kw.setdefault("read_chunk", 65536)
        vol = await self.started_volume(**kw)
        h, data = block(size)
        await self.put(vol, data)
        return vol, h, data

    async def test_missing_block(self) -> None:
        """open_read and stat of an absent block give None."""
        vol = await self.started_volume()
        h, _ = block(5)
        self.assertIsNone(await vol.open_read(h))
        self.assertIsNone(await vol.stat(h))

    async def test_pause_and_resume(self) -> None:
        """Paused after the first chunk, no further chunk arrives across
        several reactor and pool turns; after resume the block completes."""
        vol, h, data = await self.stored()
        c = RecordingConsumer(on_write=lambda c, _: pause(c) if len(c.writes) == 1 else None)
        r = await vol.open_read(h)
        assert r is not None
        done = r.produce(c)
        await c.first_write
        await self.settle()
        self.assertEqual(len(c.writes), 1)
        self.assertFalse(done.called)
        assert c.producer is not None
        c.producer.resumeProducing()
        await done
        self.assertEqual(c.data, data)
        self.assertEqual(c.unregistered, 1)
        self.assertEqual(fds_open_on(vol.block_path(h)), 0)

    async def test_paused_at_registration(self) -> None:
        """A consumer that pauses the producer inside registerProducer (as a
        busy HTTPChannel does) gets nothing until it resumes."""
        vol, h, data = await self.stored()
        c = RecordingConsumer(pause_on_register=True)
        r = await vol.open_read(h)
        assert r is not None
        done = r.produce(c)
        await self.settle()
        self.assertEqual(c.writes, [])
        assert c.producer is not None
        c.producer.resumeProducing()
        await done
        self.assertEqual(c.data, data)

    async def test_stop_while_paused(self) -> None:
        """stopProducing errbacks with ConnectionLost, unregisters and closes
        the descriptor; no more data is written."""
        vol, h, _ = await self.stored()
        c = RecordingConsumer(on_write=lambda c, _: pause(c))
        r = await vol.open_read(h)
        assert r is not None
        self.assertEqual(fds_open_on(vol.block_path(h)), 1)
        done = r.produce(c)
        await c.first_write
        assert c.producer is not None
        c.producer.stopProducing()
        await self.assertFailure(done, ConnectionLost)
        self.assertEqual(c.unregistered, 1)
        self.assertEqual(fds_open_on(vol.block_path(h)), 0)
        await self.settle()
        self.assertEqual(len(c.writes), 1)

    async def test_stop_with_read_in_flight(self) -> None:
        """stopProducing while a read runs errbacks at once; the chunk read
        is dropped and the descriptor closed once the read returns."""
        vol, h, _ = await self.stored()
        c = RecordingConsumer()
        r = await vol.open_read(h)
        assert r is not None
        done = r.produce(c)
        r.stopProducing()  # type: ignore[attr-defined]
        await self.assertFailure(done, ConnectionLost)
        self.assertEqual(c.unregistered, 1)
        await self.settle()
        self.assertEqual(c.writes, [])
        self.assertEqual(fds_open_on(vol.block_path(h)), 0)

    async def test_consumer_write_raises(self) -> None:
        """An exception from consumer.write errbacks produce() with it,
        after unregistering and closing the descriptor."""
        vol, h, _ = await self.stored()

        def boom(c: RecordingConsumer, data: bytes) -> None:
            raise RuntimeError("consumer broke")

        c = RecordingConsumer(on_write=boom)
        r = await vol.open_read(h)
        assert r is not None
        await self.assertFailure(r.produce(c), RuntimeError)
        self.assertEqual(c.unregistered, 1)
        self.assertEqual(fds_open_on(vol.block_path(h)), 0)

    async def test_cancelled_open_read_closes_fd(self) -> None:
        """Cancelling open_read closes the descriptor the pool job opened."""
        vol, h, _ = await self.stored()
        d = vol.open_read(h)
        d.cancel()
        await self.assertFailure(d, CancelledError)
        await self.settle()
        self.assertEqual(fds_open_on(vol.block_path(h)), 0)

    async def test_cancel_produce(self) -> None:
        """Cancelling produce()'s Deferred stops reading, unregisters and
        closes the descriptor."""
        vol, h, _ = await self.stored()
        c = RecordingConsumer(on_write=lambda c, _: pause(c))
        r = await vol.open_read(h)
        assert r is not None
        done = r.produce(c)
        await c.first_write
        done.cancel()
        await self.assertFailure(done, CancelledError)
        self.assertEqual(c.unregistered, 1)
        self.assertEqual(fds_open_on(vol.block_path(h)), 0)

    async def test_close_without_producing(self) -> None:
        """close() (e.g. for HEAD) releases the descriptor; produce() after
        it fails."""
        vol, h, _ = await self.stored()
        r = await vol.open_read(h)
        assert r is not None
        r.close()
        r.close()
        self.assertEqual(fds_open_on(vol.block_path(h)), 0)
        await self.assertFailure(r.produce(RecordingConsumer()), VolumeError)

    async def test_produce_twice_fails(self) -> None:
        """A reader streams once; a second produce() fails."""
        vol, h, data = await self.stored()
        r = await vol.open_read(h)
        assert r is not None
        c = RecordingConsumer()
        await r.produce(c)
        self.assertEqual(c.data, data)
        await self.assertFailure(r.produce(RecordingConsumer()), VolumeError)

    async def test_empty_block_unregisters(self) -> None:
        """Producing a 0-byte block registers, writes nothing, unregisters."""
        vol, h, _ = await self.stored(size=0)
        r = await vol.open_read(h)
        assert r is not None
        c = RecordingConsumer()
        await r.produce(c)
        self.assertEqual((c.writes, c.registered, c.unregistered), ([], 1, 1))

    async def test_block_shrunk_under_reader(self) -> None:
        """A block truncated while open errbacks with VolumeError instead of
        ending short and looking complete."""
        vol, h, _ = await self.stored()
        r = await vol.open_read(h)
        assert r is not None
        os.truncate(vol.block_path(h), 1000)
        c = RecordingConsumer()
        await self.assertFailure(r.produce(c), VolumeError)
        self.assertEqual(c.unregistered, 1)
        self.assertEqual(len(c.data), 1000)


class StatIndexTests(VolumeTestMixin, TestCase):
    """stat() and index()."""

    async def test_stat(self) -> None:
        """stat gives the stored size of a committed block."""
        vol = await self.started_volume()
        h, data = block(12345)
        await self.put(vol, data)
        self.assertEqual(await vol.stat(h), 12345)

    async def test_index_by_prefix(self) -> None:
        """index(prefix) lists committed blocks whose hash starts with the
        prefix, with size and mtime in ns, sorted, never temp or stray files."""
        vol = await self.started_volume()
        blocks = dict(block(100 + i, seed=i) for i in range(40))
        for data in blocks.values():
            await self.put(vol, data)
        first = sorted(blocks)[0]
        w = await vol.open_write(first, 100)  # an open temp file must not be listed
        await w.write(b"x")
        with open(os.path.join(self.root, first[:3], "README"), "w"):
            pass

        def expected(prefix: str) -> list[tuple[str, int, int]]:
            return sorted((h, len(d), os.stat(vol.block_path(h)).st_mtime_ns)
                          for h, d in blocks.items() if h.startswith(prefix))

        for prefix in ("", first[:1], first[:2], first[:3], first[:5], first, "zz", "0" * 33):
            self.assertEqual(list(await vol.index(prefix)), expected(prefix), prefix)
        self.assertEqual(len(await vol.index("")), 40)
        await w.abort()


@attrs.frozen
class FakeVolumeConfig:
    driver: str = "Directory"
    driver_parameters: Mapping[str, object] = attrs.field(factory=dict)
    replication: int = 1
    read_only: bool = False
    storage_classes: Any = None


class BuildVolumeTests(VolumeTestMixin, TestCase):
    """build_volume() turns a config entry into a volume."""

    def build(self, cfg: FakeVolumeConfig) -> IVolume:
        return build_volume(UUID, cfg, reactor=self.reactor, threadpool=self.pool,
                            rng=random.Random(1))

    def test_directory(self) -> None:
        """Driver Directory gives a DirectoryVolume with the entry's settings."""
        vol = self.build(FakeVolumeConfig(driver_parameters={"Root": self.root}, replication=2,
                                          read_only=True,
                                          storage_classes={"hot": True, "off": False}))
        assert isinstance(vol, DirectoryVolume)
        self.assertEqual((vol.uuid, vol.root, vol.replication, vol.read_only,
                          vol.storage_classes), (UUID, self.root, 2, True, ("hot",)))

    def test_default_storage_class(self) -> None:
        """No storage classes means ("default",); a list is taken as is."""
        vol = self.build(FakeVolumeConfig(driver_parameters={"Root": self.root}))
        self.assertEqual(vol.storage_classes, ("default",))
        vol = self.build(FakeVolumeConfig(driver_parameters={"Root": self.root},
                                          storage_classes=["a", "b"]))
        self.assertEqual(vol.storage_classes, ("a", "b"))

    def test_unknown_driver(self) -> None:
        """An unknown driver is a ValueError naming the driver and the volume."""
        err = self.assertRaises(ValueError, self.build, FakeVolumeConfig(driver="Azure"))
        self.assertIn("'Azure'", str(err))
        self.assertIn(UUID, str(err))

    def test_missing_root(self) -> None:
        """A Directory volume without DriverParameters.Root is a ValueError
        naming the key."""
        err = self.assertRaises(ValueError, self.build, FakeVolumeConfig())
        self.assertIn("DriverParameters.Root", str(err))

    async def test_built_volume_works(self) -> None:
        """The built volume starts and stores a block."""
        vol = self.build(FakeVolumeConfig(driver_parameters={"Root": self.root}))
        await vol.start()
        h, data = block(10)
        w = await vol.open_write(h, 10)
        await w.write(data)
        await w.commit()
        self.assertEqual(await vol.stat(h), 10)
