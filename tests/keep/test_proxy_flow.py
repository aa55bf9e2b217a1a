# -*- test-case-name: tests.keep.test_proxy_flow -*-
"""Flow control, memory bounds, corruption and timeouts of the keepproxy,
over real loopback sockets."""
from __future__ import annotations

import os

from twisted.internet import reactor, task
from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase

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
