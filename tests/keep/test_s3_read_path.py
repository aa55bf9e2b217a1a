# -*- test-case-name: tests.keep.test_s3_read_path -*-
"""The S3 GET path's throughput measures (bench/README.md, S3 volume): large
socket reads from the bucket, small pieces joined into large writes, and the
GET relay's md5 fed through one queue on the hash pool.

The piece counts are what the speed-up consists of (one write to the keep
client, one pause and resume of both connections per piece), so they are
asserted on real sockets to moto, plain and TLS; the coalescing rules and
what stays bounded are checked on a scripted response with a task.Clock.
"""
from __future__ import annotations

import hashlib
import random
import threading
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseDone

from arvnode.keep.download import _HashQueue
from arvnode.keep.volumes.s3 import S3Volume
from arvnode.keep.volumes.s3_client import READ_SIZE, S3Error, S3Stats
from arvnode.keep.volumes.s3_params import parse_s3_parameters
from arvnode.keep.volumes.s3_reader import COALESCE, WRITE_MAX, S3BlockReader
from arvnode.tls import client_policy, generate_ca_and_server
from tests.keep.test_s3_volume import UUID, Collector, MotoTestCase, block, md5, put
from tests.s3server import S3Server

MiB = 1 << 20
TWISTED_READ = 64 * 1024  # Twisted's own recv size, what the GET used to get


class LargePiecesOverTheWire(MotoTestCase):
    """A 4 MiB GET from moto reaches the consumer in a handful of writes."""

    async def _read_parts(self, volume: S3Volume, data: bytes) -> list[bytes]:
        h = await put(volume, data, chunk=MiB)
        reader = await volume.open_read(h)
        assert reader is not None
        sink = Collector()
        await reader.produce(sink)
        self.assertEqual(md5(sink.data), h)
        return sink.parts

    async def test_plain_http_reads_are_large(self) -> None:
        """Plain HTTP: the connection is read READ_SIZE at a time, so pieces
        are far larger than Twisted's 64 KiB (64 writes for 4 MiB before)."""
        self.assertGreaterEqual(READ_SIZE, MiB)
        v = self.volume(self.bucket())
        _, data = block(4 * MiB, 41)
        parts = await self._read_parts(v, data)
        self.assertGreater(max(len(p) for p in parts), TWISTED_READ)
        self.assertLessEqual(len(parts), 24, [len(p) for p in parts])
        self.assertLessEqual(max(len(p) for p in parts), max(READ_SIZE, WRITE_MAX))

    async def test_tls_pieces_are_joined(self) -> None:
        """HTTPS: Twisted's TLS layer hands over 32 KiB at a time (128 pieces
        for 4 MiB); the reader joins them into writes of COALESCE or more."""
        tls = generate_ca_and_server(Path(self.mktemp()), common_name="moto")
        server = S3Server(tls=tls).start()
        self.addCleanup(server.stop)
        bucket = self.bucket(server=server)
        params = parse_s3_parameters(self.params(bucket, server=server))
        self.assertTrue(params.endpoint.startswith("https://"))
        v = S3Volume(UUID, params, reactor=reactor, rng=random.Random(1), backoff_base=0.01,
                     tls_policy=client_policy(insecure=False, ca_file=str(tls["ca"])))
        self.addCleanup(v.stop)
        _, data = block(4 * MiB, 42)
        parts = await self._read_parts(v, data)
        self.assertLessEqual(len(parts), 4 * MiB // COALESCE + 1, [len(p) for p in parts])
        self.assertTrue(all(len(p) >= COALESCE for p in parts[:-1]), [len(p) for p in parts])
        self.assertLessEqual(max(len(p) for p in parts), WRITE_MAX)


class _Transport:
    """The S3 connection as the reader sees it: records pause/resume/stop."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class _Response:
    """An IResponse whose body the test feeds by hand."""

    def __init__(self) -> None:
        self.transport = _Transport()
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)


class CoalescingReader(TestCase):
    """S3BlockReader joins small pieces, never beyond WRITE_MAX, never holds
    more than COALESCE while flowing, and loses nothing at the end."""

    def reader(self, size: int) -> tuple[S3BlockReader, _Response, Clock, S3Stats]:
        response, clock, stats = _Response(), Clock(), S3Stats()
        r = S3BlockReader(response, size, name="b/k", clock=clock, read_timeout=30.0, stats=stats)
        return r, response, clock, stats

    def test_small_pieces_joined(self) -> None:
        pieces = [bytes([i]) * (32 * 1024) for i in range(50)]  # 1.56 MiB
        data = b"".join(pieces)
        r, response, _, stats = self.reader(len(data))
        sink = Collector()
        done = r.produce(sink)
        for p in pieces:
            response.protocol.dataReceived(p)
        self.assertEqual(len(sink.parts), len(data) // COALESCE)  # the tail waits
        response.protocol.connectionLost(Failure(ResponseDone()))
        self.successResultOf(done)
        self.assertEqual(sink.data, data)
        self.assertTrue(all(COALESCE <= len(p) <= WRITE_MAX for p in sink.parts[:-1]))
        self.assertLess(stats.reader_max_buffered, COALESCE)

    def test_large_pieces_pass_straight(self) -> None:
        pieces = [b"a" * MiB, b"b" * (512 * 1024)]
        r, response, _, stats = self.reader(sum(map(len, pieces)))
        sink = Collector()
        done = r.produce(sink)
        for p in pieces:
            response.protocol.dataReceived(p)
        self.assertEqual(sink.parts, pieces)  # the same objects, no join
        self.assertIs(sink.parts[0], pieces[0])
        response.protocol.connectionLost(Failure(ResponseDone()))
        self.successResultOf(done)
        self.assertEqual(stats.reader_max_buffered, 0)

    def test_paused_nothing_written_then_joined(self) -> None:
        pieces = [bytes([i]) * (64 * 1024) for i in range(12)]
        data = b"".join(pieces)
        r, response, _, _ = self.reader(len(data))
        sink = Collector(pause_after_first=True)
        done = r.produce(sink)
        for p in pieces:
            response.protocol.dataReceived(p)
        self.assertEqual([len(p) for p in sink.parts], [COALESCE])
        self.assertIn("pause", response.transport.calls)
        response.protocol.connectionLost(Failure(ResponseDone()))
        self.assertNoResult(done)  # held data is not lost while paused
        sink.resume()
        self.successResultOf(done)
        self.assertEqual(sink.writes_while_paused, 0)
        self.assertEqual(sink.data, data)

    def test_stall_with_small_pieces_held_times_out(self) -> None:
        """Pieces waiting to be joined do not hide a bucket that stopped
        sending: the read timeout still fires."""
        r, response, clock, _ = self.reader(MiB)
        sink = Collector()
        done = r.produce(sink)
        response.protocol.dataReceived(b"x" * 1000)
        clock.advance(29)
        response.protocol.dataReceived(b"y" * 1000)
        clock.advance(29)
        self.assertNoResult(done)
        clock.advance(2)
        f = self.failureResultOf(done, S3Error)
        self.assertIn("no data from the bucket", str(f.value))
        self.assertIn("stop", response.transport.calls)
        self.assertEqual(sink.parts, [])

    def test_short_body_with_pieces_held_is_an_error(self) -> None:
        r, response, _, _ = self.reader(MiB)
        sink = Collector()
        done = r.produce(sink)
        response.protocol.dataReceived(b"x" * 1000)
        response.protocol.connectionLost(Failure(ResponseDone()))
        f = self.failureResultOf(done, S3Error)
        self.assertIn("body ended at 1000", str(f.value))


class HashQueueTests(TestCase):
    """The relay's md5 queue: in order, back to back, on the pool."""

    def setUp(self) -> None:
        self.pool = ThreadPool(minthreads=2, maxthreads=2, name="test-hash")
        self.pool.start()
        self.addCleanup(self.pool.stop)

    async def test_order_kept_across_many_submissions(self) -> None:
        rng = random.Random(7)
        want, got = hashlib.md5(), hashlib.md5()
        q = _HashQueue(reactor, self.pool, got)
        fired: list[int] = []
        last = None
        for i in range(40):
            chunks = [rng.randbytes(rng.choice((100, 70 * 1024, 300 * 1024))) for _ in range(3)]
            for c in chunks:
                want.update(c)
            last = q.submit(chunks, sum(map(len, chunks)))
            last.addCallback(lambda _, i=i: fired.append(i))
        await last
        self.assertEqual(fired, list(range(40)))
        self.assertEqual(got.hexdigest(), want.hexdigest())

    async def test_queues_sharing_a_thread_take_turns(self) -> None:
        """Two downloads on a one-thread pool: each hashes ``turn``
        submissions, then lets the other have the thread."""
        pool = ThreadPool(minthreads=1, maxthreads=1, name="test-hash-1")
        pool.start()
        self.addCleanup(pool.stop)
        gate = threading.Event()
        self.addCleanup(gate.set)
        pool.callInThread(gate.wait)  # both queues start behind this job
        fired: list[str] = []
        ds = []
        for name in ("a", "b"):
            q = _HashQueue(reactor, pool, hashlib.md5())
            for i in range(2 * q.turn):
                d = q.submit([b"x" * (100 * 1024)], 100 * 1024)
                d.addCallback(lambda _, tag=f"{name}{i}": fired.append(tag))
                ds.append(d)
        gate.set()
        await gatherResults(ds)
        t = _HashQueue.turn
        want = ([f"a{i}" for i in range(t)] + [f"b{i}" for i in range(t)]
                + [f"a{i}" for i in range(t, 2 * t)] + [f"b{i}" for i in range(t, 2 * t)])
        self.assertEqual(fired, want)

    def test_small_tail_inline(self) -> None:
        """A tail under INLINE_HASH_LIMIT with nothing queued is hashed at
        once on the calling thread (no pool hop)."""
        got = hashlib.md5()
        d = _HashQueue(reactor, self.pool, got).submit([b"abc"], 3)
        self.successResultOf(d)
        self.assertEqual(got.hexdigest(), hashlib.md5(b"abc").hexdigest())
