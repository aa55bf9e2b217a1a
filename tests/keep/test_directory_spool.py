# -*- test-case-name: tests.keep.test_directory_spool -*-
"""Spooled writes of the directory volume (``POST /``: the hash is known only
at the end), on a real directory."""
from __future__ import annotations

import hashlib
import os
import random

from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from arvnode.keep.volume import VolumeError
from arvnode.keep.volumes.directory import TMP_MARKER, DirectoryVolume


class SpoolTests(TestCase):
    async def _volume(self) -> DirectoryVolume:
        pool = ThreadPool(1, 2, name="spool-test")
        pool.start()
        self.addCleanup(pool.stop)
        vol = DirectoryVolume(
            "zzzzz-nyw5e-000000000000000",
            self.mktemp(),
            reactor=reactor,
            threadpool=pool,
            rng=random.Random(4),
        )
        await vol.start()
        return vol

    def _temps(self, vol: DirectoryVolume) -> list[str]:
        return [
            os.path.join(d, f)
            for d, _, files in os.walk(vol.root)
            for f in files
            if TMP_MARKER in f
        ]

    async def test_commit_as_names_the_block(self) -> None:
        """Written before the hash is known; readable under it only after
        commit_as, which creates the block's subdirectory."""
        vol = await self._volume()
        data = os.urandom(3 << 20)
        h = hashlib.md5(data).hexdigest()
        w = await vol.open_spool(len(data))
        await w.write(memoryview(data)[: 1 << 20])
        await w.write(memoryview(data)[1 << 20 :])
        self.assertIsNone(await vol.stat(h))
        self.assertEqual(len(self._temps(vol)), 1)
        await w.commit_as(h)
        with open(vol.block_path(h), "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(self._temps(vol), [])

    async def test_commit_without_hash_refused(self) -> None:
        """A spool cannot be committed with plain commit(): it has no name."""
        vol = await self._volume()
        w = await vol.open_spool(3)
        await w.write(b"abc")
        with self.assertRaises(VolumeError):
            await w.commit()
        await w.abort()
        self.assertEqual(self._temps(vol), [])

    async def test_leftover_spool_removed_at_start(self) -> None:
        """A spool left by a crash (never committed) is gone after a restart."""
        vol = await self._volume()
        w = await vol.open_spool(10)
        await w.write(b"0123456789")
        self.assertEqual(len(self._temps(vol)), 1)
        # "Crash": forget the writer, start a new volume on the same root.
        fresh = DirectoryVolume(
            vol.uuid, vol.root, reactor=reactor, threadpool=vol._pool, rng=random.Random(5)
        )
        await fresh.start()
        self.assertEqual(self._temps(fresh), [])
        await w.abort()
