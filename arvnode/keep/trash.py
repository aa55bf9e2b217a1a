"""Block trash: the settings volumes obey, keepstore's trash-list worker, and
the empty-trash timer (docs/configure.md, ``Collections.BlobTrash*``).

Why it is shaped like Arvados' keepstore: keep-balance (Arvados', or
arvnode's own balancer) decides *which* blocks are garbage; a keepstore only
moves them to a trash area where they stay recoverable for
``BlobTrashLifetime``, and a timer deletes them for good afterwards. Losing a
referenced block is the worst possible bug, so every check errs on keeping:

* a block whose mtime is within ``BlobSigningTTL`` of now is never trashed
  (a client may hold a signed locator it has not saved in a collection yet);
* a trash-list entry names the mtime its sender saw; if the block was
  written or touched since, it is left alone;
* ``BlobTrash: false`` trashes nothing, and the timer then does not run.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Generic, Iterable, Sequence, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from arvnode.periodic import PeriodicService

__all__ = [
    "EMPTY_TRASH_SERVICE_NAME",
    "EmptyTrashService",
    "TrashItem",
    "TrashListWorker",
    "TrashPolicy",
    "WorkList",
    "parse_trash_list",
]

EMPTY_TRASH_SERVICE_NAME = "blob-trash-sweeper"
_Item = TypeVar("_Item")


@frozen
class TrashPolicy:
    """What a volume needs to know to trash safely (Arvados' defaults).

    ``enabled`` is ``Collections.BlobTrash``; ``lifetime`` is
    ``BlobTrashLifetime`` in seconds (0: a trashed block is deleted at once,
    where the volume allows it); ``signing_ttl`` is ``BlobSigningTTL``.
    """

    enabled: bool = True
    lifetime: float = 336 * 3600.0
    signing_ttl: float = 336 * 3600.0

    @classmethod
    def from_config(cls, collections: Any) -> "TrashPolicy":
        """From a ``CollectionsConfig``."""
        return cls(
            enabled=bool(collections.blob_trash),
            lifetime=float(collections.blob_trash_lifetime),
            signing_ttl=float(collections.blob_signing_ttl),
        )

    def too_new(self, mtime_ns: int, now: float) -> bool:
        """Is a block with this mtime still inside the signing window?"""
        return mtime_ns > int((now - self.signing_ttl) * 1e9)


# -- PUT /trash ---------------------------------------------------------------------


@frozen
class TrashItem:
    """One entry of a keep-balance trash list: ``block_mtime`` in ns, and
    the mount to trash it on (``""``: every mount that may trash)."""

    hash: str
    block_mtime: int
    mount_uuid: str = ""


def parse_trash_list(data: Any) -> list[TrashItem]:
    """The JSON body of ``PUT /trash``. @raise ValueError: naming what is wrong."""
    if not isinstance(data, list):
        raise ValueError("expected a JSON list of {locator, block_mtime, mount_uuid}")
    out = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise ValueError(f"entry {i}: expected an object")
        locator = entry.get("locator")
        mtime = entry.get("block_mtime")
        mount = entry.get("mount_uuid") or ""
        if not isinstance(locator, str) or len(locator) < 32 or not all(
            c in "0123456789abcdef" for c in locator[:32]
        ) or (len(locator) > 32 and locator[32] != "+"):
            raise ValueError(f"entry {i}: locator {locator!r} is not a block locator")
        if isinstance(mtime, bool) or not isinstance(mtime, int):
            raise ValueError(f"entry {i}: block_mtime must be an integer (nanoseconds)")
        if not isinstance(mount, str):
            raise ValueError(f"entry {i}: mount_uuid must be a string")
        out.append(TrashItem(locator[:32], mtime, mount))
    return out


class WorkList(Generic[_Item]):
    """A keepstore work list (trash or pull): ``_replace`` swaps in a new
    list (Arvados' keepstore does: a newer list from keep-balance
    supersedes the old one, whose entries may be stale), and up to
    ``concurrency`` items are worked on at once by :meth:`_one`.
    """

    log = Logger()
    _what = "work"  # names the item in the log

    def __init__(self, concurrency: int) -> None:
        self._concurrency = max(1, concurrency)
        # A deque: a list of ~600,000 entries popped from the front is quadratic.
        self._todo: deque[_Item] = deque()
        self._running = 0
        self._idle: list[Deferred[None]] = []

    @property
    def pending(self) -> int:
        return len(self._todo)

    def _replace(self, items: Iterable[_Item]) -> None:
        self._todo = deque(items)
        while self._running < self._concurrency and self._todo:
            self._running += 1
            Deferred.fromCoroutine(self._work()).addErrback(
                lambda f: self.log.failure("{what} worker failed", f, what=self._what))

    def idle(self) -> "Deferred[None]":
        """Fires once the queue is empty and no item is in progress."""
        if self._running == 0:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    async def _work(self) -> None:
        try:
            while self._todo:
                item = self._todo.popleft()
                try:
                    await self._one(item)
                except Exception:
                    self.log.failure("{what} {hash} failed", what=self._what,
                                     hash=getattr(item, "hash", "?"))
        finally:
            self._running -= 1
            if self._running == 0:
                waiting, self._idle = self._idle, []
                for d in waiting:
                    d.callback(None)

    async def _one(self, item: _Item) -> None:
        raise NotImplementedError


class TrashListWorker(WorkList[TrashItem]):
    """Keepstore's trash queue (``PUT /trash``), a :class:`WorkList`.

    ``volumes()`` gives the mounts that may trash (writable local volumes);
    each item is checked against ``BlobSigningTTL`` here (Arvados' worker
    does) and then against its stored mtime by the volume itself.
    """

    _what = "trashing"

    def __init__(
        self,
        *,
        volumes: Callable[[], Sequence[Any]],
        policy: TrashPolicy,
        clock: IReactorTime,
        concurrency: int = 4,
    ) -> None:
        super().__init__(concurrency)
        self._volumes = volumes
        self._policy = policy
        self._clock = clock
        self.trashed = 0  # (block, volume) pairs trashed since start
        self.skipped = 0  # items refused (too new, unknown mount, mtime changed)

    def set_list(self, items: Sequence[TrashItem]) -> None:
        # BlobTrash false: Arvados runs no trash worker; the list is accepted and dropped.
        self._replace(items if self._policy.enabled else ())

    async def _one(self, item: TrashItem) -> None:
        if self._policy.too_new(item.block_mtime, self._clock.seconds()):
            self.skipped += 1
            self.log.warn(
                "asked to trash {hash} with mtime {mtime}, newer than BlobSigningTTL; skipped",
                hash=item.hash, mtime=item.block_mtime)
            return
        mounts = list(self._volumes())
        if item.mount_uuid:
            mounts = [v for v in mounts if v.uuid == item.mount_uuid]
            if not mounts:
                self.skipped += 1
                self.log.warn("trash request for {hash} on unknown or read-only mount {mount}",
                              hash=item.hash, mount=item.mount_uuid)
                return
        for v in mounts:
            try:
                done = await v.trash(item.hash, item.block_mtime)
            except Exception:
                self.log.failure("trashing {hash} on {uuid} failed", hash=item.hash, uuid=v.uuid)
                continue
            if done:
                self.trashed += 1
                self.log.info("trashed {hash} on {uuid}", hash=item.hash, uuid=v.uuid)
            else:
                self.skipped += 1


# -- the empty-trash timer ----------------------------------------------------------


class EmptyTrashService(PeriodicService):
    """Every ``interval`` seconds, ``empty_trash(now)`` on every volume
    ``volumes()`` returns (the node's local directory and S3 volumes), one
    volume at a time; a volume that fails is logged and the others still
    run (the round guarantees are :class:`PeriodicService`'s).
    """

    def __init__(
        self,
        volumes: Callable[[], Sequence[Any]],
        *,
        clock: IReactorTime,
        interval: float,
    ) -> None:
        super().__init__(EMPTY_TRASH_SERVICE_NAME, clock=clock, interval=interval)
        self._volumes = volumes
        self.deleted = 0

    async def run_round(self) -> int:
        return await self.empty_all()

    async def empty_all(self) -> int:
        """One round now: how many trashed blocks were deleted."""
        self.rounds += 1
        now = self._clock.seconds()
        total = 0
        for v in self._volumes():
            try:
                total += await v.empty_trash(now)
            except Exception:
                self.log.failure("emptying the trash of {uuid} failed", uuid=v.uuid)
        self.deleted += total
        if total:
            self.log.info("emptied the trash: {n} block(s) deleted for good", n=total)
        return total

