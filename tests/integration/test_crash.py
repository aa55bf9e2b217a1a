# -*- test-case-name: tests.integration.test_crash -*-
"""SIGKILL during uploads: what was acknowledged survives, nothing else does.

Issue 7 "done means": a node killed with SIGKILL while uploads are in flight,
then restarted on the same data, must serve every block it had acknowledged
byte-identical, serve none of the blocks it had not acknowledged, and leave no
temporary or partial file on disk once its start-up cleanup ran. That is the
promise of the directory volume (temp name, fsync, rename, directory fsync
before the 200; leftovers removed at start), and only a real process killed
for real can show it: the node runs as ``twistd arvnode`` in a child process
with two directory volumes, the uploads are raw HTTP/1.1 over loopback
sockets.

Determinism without sleeps: the test waits for the acknowledged uploads'
``200`` answers, and for every in-flight upload it waits until its temporary
files on disk hold part of the body (the node has received and written those
bytes), so the kill always lands mid-body. Only the file system is polled.
"""
from __future__ import annotations

import hashlib
import os
import re
import signal
import time
from pathlib import Path

import yaml
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from arvnode.keep.locator import sign_locator
from tests.helpers import ProcessNode, make_cluster_config, wait_exit, wait_for
from tests.http.rawclient import RawHTTP, connect

MiB = 1 << 20
#: ArvNode.Keepproxy.UploadWindow of the node: it writes a batch (half of
#: this) as soon as one is full, so a stalled upload that sent at least a
#: window has data in its temp files.
WINDOW = 256 * 1024
LISTEN_RE = re.compile(r"keepproxy listening on http://127\.0\.0\.1:(\d+)/")
REMOVED_RE = re.compile(r"volume (\S+) started: removed (\d+) leftover temp file")
SIGNED_RE = re.compile(r"^([0-9a-f]{32})\+(\d+)\+A[0-9a-f]{40}@[0-9a-f]{8}$")
BLOCK_NAME_RE = re.compile(r"^[0-9a-f]{32}$")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _block(size: int) -> bytes:
    """Random content: every upload is a different block."""
    return os.urandom(size)


class _InFlight:
    """An upload that is stopped mid-body on purpose."""

    def __init__(self, data: bytes, send: int, expect: bool, post: bool = False) -> None:
        self.data = data
        self.hash = md5(data)
        self.send = send  # body bytes sent before the kill
        self.expect = expect
        self.post = post  # POST / (the node computes the hash)
        self.client: RawHTTP | None = None


class SigkillTests(TestCase):
    timeout = 600

    def _start(self, config_path: Path, base: Path, n: int) -> ProcessNode:
        node = ProcessNode(["--config", str(config_path)], base, base / f"node-{n}.log")
        self.addCleanup(node.close)
        return node

    async def _wait_up(self, node: ProcessNode) -> int:
        """The keepproxy port once the node says it is up."""
        await wait_for(
            lambda: (" is up" in node.output() and LISTEN_RE.search(node.output()) is not None)
            or node.proc.poll() is not None,
            timeout=120,
        )
        match = LISTEN_RE.search(node.output())
        self.assertIsNone(node.proc.poll(), node.output()[-3000:])
        assert match is not None
        return int(match.group(1))

    def _temp_sizes(self, roots: list[Path], up: _InFlight) -> list[int]:
        """Sizes of the temp files of ``up`` under each root (missing: -1).

        A PUT writes ``<root>/<xxx>/<hash>.tmp-*``; a POST spools to
        ``<root>/post.tmp-*`` until its hash is known (one POST in this test).
        """
        sizes = []
        for root in roots:
            if up.post:
                sub, prefix = root, "post.tmp-"
            else:
                sub, prefix = root / up.hash[:3], up.hash + ".tmp-"
            found = -1
            try:
                for name in os.listdir(sub):
                    if name.startswith(prefix):
                        try:
                            found = max(found, os.stat(sub / name).st_size)
                        except FileNotFoundError:
                            pass
            except FileNotFoundError:
                pass
            sizes.append(found)
        return sizes

    async def test_acknowledged_blocks_survive_sigkill_and_partials_vanish(self) -> None:
        """Several concurrent uploads over real sockets, two replicas each on
        two directory volumes: some acknowledged (200 + signed locator), some
        stopped mid-body (PUTs and a POST, part of the body already on disk in
        temp files), one accepted with no body byte yet. SIGKILL, restart on
        the same data:
        every acknowledged block reads back byte-identical with its signed
        locator, every unacknowledged one is 404 (GET and HEAD) and absent from
        /index, and the volumes hold only complete blocks under their own md5
        — no temp file, no partial block."""
        base = Path(self.mktemp()).absolute()
        config, paths = make_cluster_config(base)
        cid = next(iter(config["Clusters"]))
        section = config["Clusters"][cid]
        roots = [paths["data"] / "keep0", paths["data"] / "keep1"]
        section["Volumes"] = {
            f"{cid}-nyw5e-00000000000000{i}": {
                "Driver": "Directory",
                "DriverParameters": {"Root": str(root)},
                "Replication": 1,
            }
            for i, root in enumerate(roots)
        }
        section["Collections"]["DefaultReplication"] = 2
        # Small batches (128 KiB) so partial bodies reach the disk quickly; an
        # idle timeout far beyond the test so the node never drops the
        # stalled uploads itself before the kill.
        section["ArvNode"]["Keepproxy"] = {"UploadWindow": WINDOW, "IdleTimeout": "1h"}
        config_path = base / "config.yml"
        config_path.write_text(yaml.safe_dump(config))
        token = section["SystemRootToken"]
        key = section["Collections"]["BlobSigningKey"]
        ttl = 336 * 3600.0
        headers = {"Authorization": f"Bearer {token}"}

        first = self._start(config_path, base, 1)
        port = await self._wait_up(first)

        # 1. Uploads stopped mid-body (and one accepted without any body byte).
        inflight = [
            _InFlight(_block(6 * MiB), 2 * MiB, expect=True),
            _InFlight(_block(3 * MiB), MiB, expect=False),
            _InFlight(_block(4 * MiB), 4 * MiB - 1, expect=True),
            _InFlight(_block(2 * MiB), 0, expect=True),
            _InFlight(_block(5 * MiB), 2 * MiB, expect=True, post=True),
        ]
        for up in inflight:
            c = await connect(port)
            up.client = c
            self.addCleanup(lambda c=c: c.transport.abortConnection() if not c.lost else None)
            request_line = "POST / HTTP/1.1" if up.post else f"PUT /{up.hash} HTTP/1.1"
            head = (
                f"{request_line}\r\nHost: keep\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Length: {len(up.data)}\r\n"
                + ("Expect: 100-continue\r\n" if up.expect else "")
                + "\r\n"
            ).encode()
            c.send(head)
            if up.expect:
                interim = await c.read_response()
                assert interim is not None
                self.assertEqual(interim.status, 100)
            if up.send:
                c.send(up.data[: up.send])

        # 2. Acknowledged uploads, concurrently (with each other and with the
        #    stalled ones, which hold their writers open meanwhile).
        #    Sizes with short tails past the last whole batch, as real files have.
        sizes = (3 * MiB, 5 * MiB + 7, MiB + 1, 3)
        acked_data = [_block(size) for size in sizes]

        async def upload(data: bytes) -> str:
            c = await connect(port)
            try:
                response, _ = await c.request(
                    "PUT", f"/{md5(data)}", headers, data, expect_continue=len(data) > MiB
                )
            finally:
                c.transport.loseConnection()
            assert response is not None
            self.assertEqual(response.status, 200, response.body)
            self.assertEqual(response.header("X-Keep-Replicas-Stored"), "2")
            return response.body.decode()

        locators = await gatherResults(
            [Deferred.fromCoroutine(upload(d)) for d in acked_data]
        )
        for loc, data in zip(locators, acked_data):
            match = SIGNED_RE.match(loc)
            self.assertIsNotNone(match, loc)
            self.assertEqual(match.group(1), md5(data))  # type: ignore[union-attr]

        # 3. Every stalled upload has part of its body on disk, on both
        #    volumes (the one without body: its temp files exist).
        def partial_on_disk() -> bool:
            for up in inflight:
                want = min(up.send, WINDOW) if up.send else 0
                sizes = self._temp_sizes(roots, up)
                if up.post:
                    # Spooled on at least one volume (the replicas are chosen
                    # once the hash is known).
                    if max(sizes) < max(want, 0):
                        return False
                elif any(s < want for s in sizes):
                    return False
            return True

        try:
            await wait_for(partial_on_disk, timeout=120)
        except AssertionError:
            seen = {up.hash: (up.send, self._temp_sizes(roots, up)) for up in inflight}
            raise AssertionError(f"partial bodies not on disk: {seen}") from None
        for up in inflight:
            assert up.client is not None
            self.assertFalse(up.client.lost, f"{up.hash} dropped before the kill")
            # No answer yet: the upload is not acknowledged.
            self.assertEqual(bytes(up.client.buffer), b"", up.hash)

        # 4. SIGKILL: no chance to abort writers or clean up.
        first.signal(signal.SIGKILL)
        self.assertEqual(await wait_exit(first.proc, timeout=60), -signal.SIGKILL)
        leftovers = [
            p for root in roots for p in root.rglob("*") if p.is_file() and ".tmp-" in p.name
        ]
        # The crash really left partial data behind (else this test shows nothing).
        self.assertGreaterEqual(len(leftovers), 2 * (len(inflight) - 1) + 1, leftovers)
        for up in inflight:
            self.assertFalse(
                any((root / up.hash[:3] / up.hash).exists() for root in roots),
                f"unacknowledged {up.hash} under its final name",
            )

        # 5. Restart on the same data.
        second = self._start(config_path, base, 2)
        port = await self._wait_up(second)
        removed = sum(int(n) for _uuid, n in REMOVED_RE.findall(second.output()))
        self.assertEqual(removed, len(leftovers), second.output()[-3000:])

        c = await connect(port)
        self.addCleanup(lambda: c.transport.abortConnection() if not c.lost else None)
        for loc, data in zip(locators, acked_data):
            got, _ = await c.request("GET", f"/{loc}", headers)
            assert got is not None
            self.assertEqual(got.status, 200, got.body[:200])
            self.assertTrue(got.complete)
            self.assertEqual(len(got.body), len(data))
            self.assertTrue(got.body == data, f"{loc} differs after the restart")
        for up in inflight:
            signed = sign_locator(f"{up.hash}+{len(up.data)}", token, key, ttl, time.time())
            for method in ("GET", "HEAD"):
                got, _ = await c.request(method, f"/{signed}", headers)
                assert got is not None
                self.assertEqual(got.status, 404, (method, up.hash, got.body))
        got, _ = await c.request("GET", "/index", headers)
        assert got is not None
        self.assertEqual(got.status, 200)
        listed = [line.split(" ")[0] for line in got.body.decode().splitlines() if line]
        want = sorted(f"{md5(d)}+{len(d)}" for d in acked_data)
        self.assertEqual(sorted(listed), sorted(want * 2))  # two replicas each

        # 6. On disk: only complete blocks, each under its own md5.
        acked_hashes = {md5(d) for d in acked_data}
        for root in roots:
            blocks: set[str] = set()
            for p in root.rglob("*"):
                if p.is_dir():
                    self.assertRegex(p.name, r"^[0-9a-f]{3}$")
                    continue
                self.assertRegex(p.name, BLOCK_NAME_RE, f"stray file {p}")
                self.assertEqual(md5(p.read_bytes()), p.name, f"partial/corrupt block {p}")
                blocks.add(p.name)
            self.assertEqual(blocks, acked_hashes, root)

        c.transport.loseConnection()
        second.signal(signal.SIGTERM)
        self.assertEqual(await wait_exit(second.proc, timeout=60), 0, second.output()[-3000:])
