"""The trash sweeper: delete for good what is past its ``delete_at``.

Why a timer at all when reads already hide such records
(:meth:`arvnode.store.objects.ObjectsMixin.get_object`)? Hiding is what
makes the behaviour correct at any moment, however late the timer runs;
the sweep frees the rows (manifests can be large), and drops the links
that point at deleted records so that no grant outlives its object. This
is Arvados' ``Collections.TrashSweepInterval`` job (default 60 s).

One round is one write transaction (:meth:`purge_deleted`). A round that
fails (database down, store not started yet) is logged and the next one
runs as usual; rounds never overlap, and stopping waits for a round in
flight so the store is not closed under it.
"""
from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["DEFAULT_INTERVAL", "SERVICE_NAME", "TrashSweeper"]

SERVICE_NAME = "trash-sweeper"
DEFAULT_INTERVAL = 60.0  # Arvados' Collections.TrashSweepInterval default


class TrashSweeper(Service):
    """A named service calling ``store.purge_deleted()`` every ``interval`` seconds."""

    log = Logger()

    def __init__(self, store: Any, *, clock: IReactorTime,
                 interval: float = DEFAULT_INTERVAL) -> None:
        if interval <= 0:
            raise ValueError("the trash sweep interval must be positive")
        self.setName(SERVICE_NAME)
        self._store = store
        self._clock = clock
        self.interval = interval
        self._loop: LoopingCall | None = None
        self._round: Deferred[Any] | None = None
        self.rounds = 0      # rounds started
        self.failures = 0    # rounds that raised
        self.deleted = 0     # rows deleted over all rounds
        self.last: dict[str, int] | None = None  # per-table counts of the last good round

    def startService(self) -> None:
        super().startService()
        loop = LoopingCall(self._tick)
        loop.clock = self._clock
        self._loop = loop
        # Not at once: at node start the store is still migrating.
        done = loop.start(self.interval, now=False)
        done.addErrback(lambda f: self.log.failure("trash sweeper loop died", f))

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return self.idle()

    def idle(self) -> Deferred[Any]:
        """Fires when no round is in flight (at once if none is)."""
        if self._round is None:
            return succeed(None)
        d: Deferred[Any] = Deferred()

        def release(result: object) -> object:
            d.callback(None)
            return result

        self._round.addBoth(release)
        return d

    def _tick(self) -> Deferred[Any] | None:
        if self._round is not None:
            return None  # the previous round is still running: skip, do not pile up
        d = Deferred.fromCoroutine(self.sweep())

        def failed(f: Any) -> None:
            self.failures += 1
            self.log.failure("trash sweep failed; the next one runs as usual", f)

        def finished(result: Any) -> None:
            self._round = None

        d.addErrback(failed)
        d.addBoth(finished)
        if not d.called:
            self._round = d
        return None  # LoopingCall keeps its schedule whatever a round does

    async def sweep(self) -> dict[str, int]:
        """One round now: what was deleted, per table."""
        self.rounds += 1
        counts = await self._store.purge_deleted()
        self.last = dict(counts)
        total = sum(counts.values())
        self.deleted += total
        if total:
            self.log.info(
                "trash sweep deleted {collections} collections, {groups} projects, "
                "{workflows} workflows, {links} links past their delete_at", **counts)
        return counts
