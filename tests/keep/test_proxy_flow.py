# -*- test-case-name: tests.keep.test_proxy_flow -*-
"""Flow control, memory bounds, corruption and timeouts of the keepproxy,
over real loopback sockets."""
from __future__ import annotations

import os

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, gatherResults
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from arvnode.keep.upload import BufferPool

from tests.keep.test_proxy_fixture import (
    USER,
    VolumeSpec,
    auth,
    eventually,
    md5,
    start_keepproxy,
)

MiB = 1 << 20


def _put_head(hash: str, length: int, expect: bool = True) -> bytes:
    return (
        f"PUT /{hash} HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {USER}\r\n"
        f"Content-Length: {length}\r\n" + ("Expect: 100-continue\r\n" if expect else "") + "\r\n"
    ).encode()


def _unsent(transport: object) -> int:
    """Bytes a Twisted TCP transport still holds in user space (test-only peek)."""
    t = transport
    return len(t.dataBuffer) - t.offset + t._tempDataLen  # type: ignore[attr-defined]


class UploadBackpressureTests(TestCase):
    """A slow volume pauses the client instead of growing buffers."""

    async def test_slow_writer_bounded(self) -> None:
        """With late write Deferreds, one upload never holds more than the window."""
        window = MiB
        keep = await start_keepproxy(
            self,
            upload_window=window,
            volumes=(VolumeSpec("zzzzz-nyw5e-000000000000000", write_delay=0.02),),
        )
        data = os.urandom(8 * MiB)
        c = await keep.client()
        response, got_continue = await c.request(
            "PUT", f"/{md5(data)}", auth(), data, expect_continue=True
        )
        assert response is not None
        self.assertEqual(response.status, 200, response.body)
        self.assertTrue(got_continue)
        self.assertTrue(keep.volumes[0].has_block(md5(data)))
        held = keep.proxy.upload_stats.max_held
        # One batch (window/2) in flight + one filling, each overshooting by
        # at most one 64 KiB read.
        self.assertLessEqual(held, window + 2 * 65536)
        self.assertGreaterEqual(held, window // 2)
        self.assertEqual(keep.proxy.upload_stats.held, 0)
        # Batched: about 8 MiB / 512 KiB writes, not one per 64 KiB read.
        self.assertLessEqual(keep.volumes[0].writes, 20)
        self.assertGreater(keep.site.fast_body_bytes, 0)

    async def test_stuck_volume_does_not_time_out_client(self) -> None:
        """While the server (not the client) is slow, the idle timeout is off."""
        clock = task.Clock()
        keep = await start_keepproxy(self, clock=clock, idle_timeout=10, upload_window=128 << 10)
        vol = keep.volumes[0]
        vol.hold_writes()
        data = os.urandom(MiB)
        c = await keep.client()
        c.send(_put_head(md5(data), len(data)))
        interim = await c.read_response()
        assert interim is not None
        self.assertEqual(interim.status, 100)
        c.send(data)
        await eventually(
            lambda: any(
                "body" in p._holds for p in keep.server_protocols
            )
        )
        clock.advance(100)
        self.assertFalse(c.lost)
        vol.release_writes()
        response = await c.read_response()
        assert response is not None
        self.assertEqual(response.status, 200)

    async def test_all_replicas_fail_mid_body(self) -> None:
        """If every volume fails mid-body: 503 at once, connection closed, no temp data."""
        keep = await start_keepproxy(self, upload_window=256 << 10)
        vol = keep.volumes[0]
        vol.fail_writes = True
        data = os.urandom(3 * MiB)
        c = await keep.client()
        response, got_continue = await c.request(
            "PUT", f"/{md5(data)}", auth(), data, expect_continue=True
        )
        assert response is not None
        self.assertTrue(got_continue)
        self.assertEqual(response.status, 503)
        self.assertEqual(response.header("X-Keep-Replicas-Stored"), "0")
        self.assertEqual(response.header("Connection"), "close")
        await c.closed
        await gatherResults([w.aborted for w in vol.writers])
        self.assertEqual(vol.temp_files(), [])


class CancellationTests(TestCase):
    """A client leaving during the header checks leaks nothing."""

    async def test_client_leaves_while_writer_opens(self) -> None:
        """The writer that finishes opening after the client left is aborted."""
        keep = await start_keepproxy(self)
        vol = keep.volumes[0]
        vol.opens_held = []
        opening = vol.next_open()
        c = await keep.client()
        c.send(_put_head(md5(b"x" * 1000), 1000))
        await opening
        self.assertEqual(keep.proxy.budget.uploads, 1)
        c.transport.loseConnection()
        await c.closed
        await eventually(lambda: keep.proxy.budget.uploads == 0)
        vol.opens_held[0].callback(None)
        await eventually(lambda: bool(vol.writers))
        await vol.writers[0].aborted
        self.assertEqual(vol.temp_files(), [])


class DownloadBackpressureTests(TestCase):
    """A slow reader does not make the server read the block into memory."""

    async def test_slow_reader_bounded(self) -> None:
        """Bytes read from the volume but not yet in the kernel stay bounded."""
        keep = await start_keepproxy(self, upload_window=MiB)
        vol = keep.volumes[0]
        data = os.urandom(64 * MiB)
        h = md5(data)
        vol.put_file(h, data)
        samples: list[int] = []

        def sample(v: object) -> None:
            requests = keep.server_requests(b"GET")
            if not requests:
                return
            request = requests[0]
            if request.channel is None:
                return
            # Read from the volume, minus what the transport handed to the kernel.
            samples.append(
                vol.bytes_read - request.sentLength + _unsent(request.channel.transport)
            )

        vol.on_read = sample
        c = await keep.client()
        budget = {"since_pause": 0}

        def slow(client: object) -> None:
            budget["since_pause"] = len(c.buffer) - budget.get("seen", 0) + budget["since_pause"]
            budget["seen"] = len(c.buffer)
            if budget["since_pause"] >= 2 * MiB and not c.lost:
                budget["since_pause"] = 0
                c.transport.pauseProducing()
                reactor.callLater(0.01, c.transport.resumeProducing)

        c.on_data = slow
        got, _ = await c.request("GET", "/" + keep.sign(h, len(data)), auth())
        assert got is not None
        self.assertEqual(got.status, 200)
        self.assertTrue(got.complete)
        self.assertEqual(md5(got.body), h)
        self.assertTrue(samples)
        self.assertLessEqual(max(samples), 8 * MiB)
        # md5 backlog: at most a batch in flight plus one filling, plus a read.
        self.assertLessEqual(keep.proxy.relay_stats.max_unhashed, 2 * (MiB // 2) + 2 * MiB)


class CorruptReplicaTests(TestCase):
    """A stored block that does not match its hash is never served as complete."""

    async def test_corrupt_block_aborts(self) -> None:
        """Corrupt replica: 200 headers, short body, connection aborted; counted;
        the next GET avoids the replica (502 when it was the only one)."""
        keep = await start_keepproxy(self)
        vol = keep.volumes[0]
        data = os.urandom(2 * MiB)
        h = md5(data)
        self.assertEqual((await keep.put(data, expect=True)).status, 200)
        vol.put_file(h, bytes(reversed(data)))
        c = await keep.client()
        got, _ = await c.request("GET", "/" + keep.sign(h, len(data)), auth())
        assert got is not None
        self.assertEqual(got.status, 200)
        self.assertFalse(got.complete)
        self.assertLess(len(got.body), len(data))
        await c.closed
        value = keep.metrics.registry.get_sample_value(
            "arvnode_keep_corrupt_replicas_total", {"volume": vol.uuid}
        )
        self.assertEqual(value, 1.0)
        c2 = await keep.client()
        again, _ = await c2.request("GET", "/" + keep.sign(h, len(data)), auth())
        assert again is not None
        self.assertEqual(again.status, 502)

    async def test_small_corrupt_block_sends_nothing(self) -> None:
        """A one-chunk corrupt block: not a single body byte reaches the client
        (nothing was sent before the md5 was known, so not even the headers)."""
        keep = await start_keepproxy(self)
        vol = keep.volumes[0]
        h = md5(b"foo")
        vol.put_file(h, b"bar")
        c = await keep.client()
        got, _ = await c.request("GET", "/" + keep.sign(h, 3), auth())
        await c.closed
        self.assertIsNone(got)
        self.assertEqual(c.total_received, 0)

    async def test_other_replica_used_next(self) -> None:
        """With two replicas, the GET after a corrupt one is served by the good one."""
        keep = await start_keepproxy(
            self,
            volumes=(
                VolumeSpec("zzzzz-nyw5e-000000000000001"),
                VolumeSpec("zzzzz-nyw5e-000000000000002"),
            ),
        )
        data = os.urandom(MiB + 1)
        h = md5(data)
        response = await keep.put(data, headers={"X-Keep-Desired-Replicas": "2"}, expect=True)
        self.assertEqual(response.header("X-Keep-Replicas-Stored"), "2")
        for v in keep.volumes:
            v.put_file(h, bytes(reversed(data)))
            c = await keep.client()
            got, _ = await c.request("GET", "/" + keep.sign(h, len(data)), auth())
            assert got is not None
            v.put_file(h, data)
            if not got.complete:
                break
        else:
            self.fail("no replica was read")
        c2 = await keep.client()
        good, _ = await c2.request("GET", "/" + keep.sign(h, len(data)), auth())
        assert good is not None
        self.assertEqual(good.status, 200)
        self.assertEqual(md5(good.body), h)


class IdleTimeoutTests(TestCase):
    """Idle clients are dropped after idle_timeout (on the injected clock)."""

    async def test_stalled_upload_dropped(self) -> None:
        """A client that stops mid-body is dropped and its temp data removed."""
        clock = task.Clock()
        keep = await start_keepproxy(self, clock=clock, idle_timeout=10, upload_window=128 << 10)
        vol = keep.volumes[0]
        data = os.urandom(MiB)
        c = await keep.client()
        c.send(_put_head(md5(data), len(data)))
        interim = await c.read_response()
        assert interim is not None
        self.assertEqual(interim.status, 100)
        wrote = vol.next_write()
        c.send(data[:65536])  # exactly one batch, then silence
        await wrote
        clock.advance(9)
        self.assertFalse(c.lost)
        clock.advance(2)
        await c.closed
        await gatherResults([w.aborted for w in vol.writers])
        self.assertEqual(vol.temp_files(), [])
        self.assertFalse(vol.has_block(md5(data)))
        self.assertEqual(keep.proxy.budget.used, 0)

    async def test_silent_connection_dropped(self) -> None:
        """A client that connects and sends nothing is dropped."""
        clock = task.Clock()
        keep = await start_keepproxy(self, clock=clock, idle_timeout=10)
        accepted = keep.next_connection()
        c = await keep.client()
        await accepted
        clock.advance(11)
        await c.closed
        self.assertTrue(c.lost)

    async def test_slow_steady_client_kept(self) -> None:
        """A client sending a little more often than idle_timeout is never dropped."""
        clock = task.Clock()
        keep = await start_keepproxy(self, clock=clock, idle_timeout=10, upload_window=128 << 10)
        vol = keep.volumes[0]
        chunk = 65536
        data = os.urandom(16 * chunk)
        c = await keep.client()
        c.send(_put_head(md5(data), len(data)))
        interim = await c.read_response()
        assert interim is not None
        for i in range(16):
            wrote = vol.next_write()
            c.send(data[i * chunk : (i + 1) * chunk])
            await wrote
            clock.advance(6)
        response = await c.read_response()
        assert response is not None
        self.assertEqual(response.status, 200)
        self.assertTrue(vol.has_block(md5(data)))


class FastPathTests(TestCase):
    """The recv_into body path feeds the upload pipeline's shared buffers."""

    async def test_put_uses_recv_into_and_shared_buffers(self) -> None:
        """Several concurrent uploads: every block stored intact, the body read
        by recv_into, and the node never allocates more batch buffers than
        the pool's cap (a few windows in all, not one per upload)."""
        window = MiB
        keep = await start_keepproxy(self, upload_window=window, max_inflight_bytes=64 * MiB)
        pool = keep.proxy.uploads.buffers
        self.assertEqual(pool.size, window // 2)
        blobs = [os.urandom(3 * MiB + i) for i in range(10)]
        responses = await gatherResults(
            [Deferred.fromCoroutine(keep.put(b, expect=True)) for b in blobs]
        )
        for b, r in zip(blobs, responses):
            self.assertEqual(r.status, 200, r.body)
            with open(keep.volumes[0].block_path(md5(b)), "rb") as f:
                self.assertEqual(f.read(), b)
        self.assertLessEqual(pool.allocated, pool.limit)
        self.assertEqual(pool.limit, 8)
        self.assertGreater(keep.site.fast_body_bytes, 10 * 3 * MiB // 2)
        self.assertEqual(keep.proxy.upload_stats.held, 0)
        self.assertEqual(keep.volumes[0].temp_files(), [])

    async def test_mismatch_on_fast_path_stores_nothing(self) -> None:
        """A body whose md5 is not the locator's: 422, no block, no temp file."""
        keep = await start_keepproxy(self, upload_window=MiB)
        data = os.urandom(5 * MiB)
        wrong = md5(data[::-1])
        response = await keep.put(data, path=f"/{wrong}", expect=True)
        self.assertEqual(response.status, 422)
        self.assertGreater(keep.site.fast_body_bytes, 0)
        await gatherResults([w.aborted for w in keep.volumes[0].writers])
        self.assertFalse(keep.volumes[0].has_block(wrong))
        self.assertEqual(keep.volumes[0].temp_files(), [])


    async def test_uploads_wait_for_buffers(self) -> None:
        """With the pool down to two buffers, three concurrent uploads take
        turns (paused, not refused or dropped) and all complete intact."""
        keep = await start_keepproxy(self, upload_window=MiB, idle_timeout=5)
        keep.proxy.uploads.buffers = pool = BufferPool(MiB // 2, 2)
        blobs = [os.urandom(2 * MiB + i) for i in range(3)]
        responses = await gatherResults(
            [Deferred.fromCoroutine(keep.put(b, expect=True)) for b in blobs]
        )
        self.assertEqual([r.status for r in responses], [200, 200, 200])
        for b in blobs:
            self.assertTrue(keep.volumes[0].has_block(md5(b)))
        self.assertEqual(pool.allocated, 2)
        self.assertEqual(pool.waiting, 0)


class PostStreamingTests(TestCase):
    """POST / (the proxy computes the hash) streams to spool files."""

    async def test_post_streams_in_bounded_memory(self) -> None:
        """A 6 MiB POST holds about one window, not the body; it is stored under
        its md5 on two volumes, with no spool file left."""
        window = MiB
        keep = await start_keepproxy(
            self,
            upload_window=window,
            volumes=(
                VolumeSpec("zzzzz-nyw5e-000000000000001"),
                VolumeSpec("zzzzz-nyw5e-000000000000002"),
            ),
        )
        data = os.urandom(6 * MiB)
        c = await keep.client()
        response, _ = await c.request(
            "POST", "/", {**auth(), "X-Keep-Desired-Replicas": "2"}, data, expect_continue=True
        )
        assert response is not None
        self.assertEqual(response.status, 200, response.body)
        self.assertTrue(response.body.decode().startswith(f"{md5(data)}+{len(data)}+A"))
        self.assertEqual(response.header("X-Keep-Replicas-Stored"), "2")
        self.assertLessEqual(keep.proxy.upload_stats.max_held, window + 2 * 65536)
        for v in keep.volumes:
            with open(v.block_path(md5(data)), "rb") as f:
                self.assertEqual(f.read(), data)
            self.assertEqual(v.temp_files(), [])

    async def test_post_client_leaves_nothing_behind(self) -> None:
        """A POST whose client leaves mid-body leaves no spool file."""
        keep = await start_keepproxy(self, upload_window=256 << 10)
        c = await keep.client()
        c.send(
            (
                f"POST / HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {USER}\r\n"
                f"Content-Length: {4 * MiB}\r\nExpect: 100-continue\r\n\r\n"
            ).encode()
        )
        interim = await c.read_response()
        assert interim is not None
        self.assertEqual(interim.status, 100)
        wrote = keep.volumes[0].next_write()
        c.send(os.urandom(MiB))
        await wrote
        c.transport.loseConnection()
        await c.closed
        await gatherResults([w.aborted for w in keep.volumes[0].writers])
        self.assertEqual(keep.volumes[0].temp_files(), [])
        await eventually(lambda: keep.proxy.budget.used == 0)

class BufferPoolTests(SynchronousTestCase):
    """BufferPool: a cap on buffers, FIFO hand-over, withdrawable waits."""

    def test_cap_and_handover(self) -> None:
        pool = BufferPool(16, 2)
        a, b = pool.take(), pool.take()
        self.assertIsNotNone(a)
        self.assertIsNotNone(b)
        self.assertIsNone(pool.take())
        got: list[object] = []
        pool.wait(lambda buf: got.append(("first", buf)))
        cancel = pool.wait(lambda buf: got.append(("withdrawn", buf)))
        pool.wait(lambda buf: got.append(("third", buf)))
        cancel()
        pool.give(a)  # type: ignore[arg-type]
        pool.give(b)  # type: ignore[arg-type]
        self.assertEqual(got, [("first", a), ("third", b)])
        self.assertEqual(pool.allocated, 2)
        pool.give(a)  # type: ignore[arg-type]
        self.assertIs(pool.take(), a)


class HashLaneTests(TestCase):
    """_HashLane: batches queued while one is hashed are hashed in order."""

    async def test_order_kept(self) -> None:
        import hashlib

        from arvnode.keep.upload import _HashLane

        pool = ThreadPool(1, 2, name="lane-test")
        pool.start()
        self.addCleanup(pool.stop)
        md = hashlib.md5()
        lane = _HashLane(reactor, pool, md)
        batches = [os.urandom(256 << 10) for _ in range(6)] + [b"tail"]
        await gatherResults([lane.submit(memoryview(b)) for b in batches])
        self.assertEqual(md.hexdigest(), hashlib.md5(b"".join(batches)).hexdigest())
