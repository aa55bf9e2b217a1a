"""Keepstore's pull list (``PUT /pull``): copy blocks from other keepstores.

Why: keep-balance (Arvados', or arvnode's balancer) fixes under-replication
by telling a keepstore "fetch this block from one of these servers". Like
Arvados' keepstore, a new list replaces the pending one; each entry
``{locator, servers, mount_uuid}`` (the locator with its size hint, else
the whole list is refused, as Arvados does) is fetched from the first server
that has it, with the cluster's ``SystemRootToken`` and a locator signed for
it, and written to ``mount_uuid`` (or the first writable volume in
rendezvous order).

The copy streams: the source is read through an
:class:`~arvnode.keep.volumes.upstream.UpstreamKeepstore` (the same client the
keepproxy uses), the destination is the volume's ordinary
``open_write``/``write``/``commit``, the reader is paused while a write is
pending, and nothing is committed unless the md5 and the size matched.
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable, Sequence

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from arvnode.keep.rendezvous import sort_services
from arvnode.keep.trash import WorkList

__all__ = ["PullItem", "Puller", "parse_pull_list"]

_HEX = frozenset("0123456789abcdef")


@frozen
class PullItem:
    hash: str
    size: int
    servers: tuple[str, ...]
    mount_uuid: str = ""


def parse_pull_list(data: Any) -> list[PullItem]:
    """The JSON body of ``PUT /pull``. @raise ValueError: naming what is wrong."""
    if not isinstance(data, list):
        raise ValueError("expected a JSON list of {locator, servers, mount_uuid}")
    out = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise ValueError(f"entry {i}: expected an object")
        locator = entry.get("locator")
        if not isinstance(locator, str) or len(locator) < 32 or not set(locator[:32]) <= _HEX:
            raise ValueError(f"entry {i}: locator {locator!r} is not a block locator")
        hints = locator.split("+")
        if len(hints) < 2 or not hints[1].isdigit():
            raise ValueError(
                "rejecting pull list containing a locator without a size hint"
                " -- this probably means keep-balance needs to be upgraded")
        servers = entry.get("servers") or []
        if not isinstance(servers, list) or not all(
            isinstance(s, str) and s.startswith(("http://", "https://")) for s in servers
        ):
            raise ValueError(f"entry {i}: servers must be a list of http(s) URLs")
        mount = entry.get("mount_uuid") or ""
        if not isinstance(mount, str):
            raise ValueError(f"entry {i}: mount_uuid must be a string")
        out.append(PullItem(hints[0], int(hints[1]), tuple(servers), mount))
    return out


class _CopyConsumer:
    """Feeds what a reader produces to a writer, md5 on the way; pauses the
    reader while the writer has a batch pending (bounded memory)."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer
        self._producer: Any = None
        self._pending: Deferred[None] | None = None
        self.md5 = hashlib.md5()
        self.size = 0
        self.error: BaseException | None = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer

    def unregisterProducer(self) -> None:
        self._producer = None

    def write(self, data: bytes) -> None:
        self.md5.update(data)
        self.size += len(data)
        d = self._writer.write(data)
        if not d.called:
            self._pending = d
            if self._producer is not None:
                self._producer.pauseProducing()

            def done(result: Any) -> Any:
                if self._pending is d:
                    self._pending = None
                    if self._producer is not None:
                        self._producer.resumeProducing()
                return result

            d.addBoth(done)
        d.addErrback(self._failed)

    def _failed(self, f: Any) -> None:
        if self.error is None:
            self.error = f.value
            if self._producer is not None:
                self._producer.stopProducing()

    def drained(self) -> "Deferred[None]":
        if self._pending is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._pending.addBoth(lambda r: d.callback(None))
        return d


class Puller(WorkList[PullItem]):
    """Works on pull lists (a :class:`~arvnode.keep.trash.WorkList`) with up
    to ``concurrency`` items at once.

    ``volumes()`` gives the writable local volumes; ``source(url)`` makes a
    volume-like reader of another keepstore (an ``UpstreamKeepstore`` with
    the root token), stopped after use.
    """

    _what = "pulling"

    def __init__(
        self,
        *,
        volumes: Callable[[], Sequence[Any]],
        source: Callable[[str], Any],
        clock: IReactorTime,
        concurrency: int = 4,
    ) -> None:
        super().__init__(concurrency)
        self._volumes = volumes
        self._source = source
        self._clock = clock
        self.pulled = 0
        self.failed = 0

    def set_list(self, data: Any) -> None:
        """Replace the pending list. @raise ValueError: a bad list (nothing changes)."""
        self._replace(parse_pull_list(data))

    async def _one(self, item: PullItem) -> None:
        try:
            ok = await self.pull(item)
        except Exception:
            self.failed += 1
            raise
        if ok:
            self.pulled += 1
        else:
            self.failed += 1

    def _target(self, item: PullItem) -> Any:
        volumes = list(self._volumes())
        if item.mount_uuid:
            return next((v for v in volumes if v.uuid == item.mount_uuid), None)
        ordered = sort_services(item.hash, volumes, key=lambda v: v.uuid)
        return ordered[0] if ordered else None

    async def pull(self, item: PullItem) -> bool:
        """Copy one block; True once it is stored (or was already)."""
        target = self._target(item)
        if target is None:
            self.log.warn("pull {hash}: no writable mount {mount!r} here",
                          hash=item.hash, mount=item.mount_uuid)
            return False
        if await target.stat(item.hash) is not None:
            await target.touch(item.hash)
            return True
        for url in item.servers:
            source = self._source(url)
            try:
                if await self._copy(source, target, item):
                    self.log.info("pulled {hash} from {url} to {uuid}",
                                  hash=item.hash, url=url, uuid=target.uuid)
                    return True
            except Exception as e:
                self.log.warn("pull {hash} from {url}: {error}", hash=item.hash, url=url, error=e)
            finally:
                await source.stop()
        return False

    async def _copy(self, source: Any, target: Any, item: PullItem) -> bool:
        reader = await source.open_read(item.hash)
        if reader is None:
            return False
        if reader.size != item.size:
            reader.close()
            raise ValueError(f"size {reader.size}, the locator says {item.size}")
        writer = await target.open_write(item.hash, item.size)
        consumer = _CopyConsumer(writer)
        try:
            await reader.produce(consumer)
            await consumer.drained()
            if consumer.error is not None:
                raise consumer.error
            if consumer.size != item.size or consumer.md5.hexdigest() != item.hash:
                raise ValueError("the data did not match the locator (md5 or size)")
        except BaseException:
            await writer.abort()
            raise
        await writer.commit()
        return True
