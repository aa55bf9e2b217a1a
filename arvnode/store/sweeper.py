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

from twisted.internet.interfaces import IReactorTime

from arvnode.periodic import PeriodicService

__all__ = ["DEFAULT_INTERVAL", "SERVICE_NAME", "TrashSweeper"]

SERVICE_NAME = "trash-sweeper"
DEFAULT_INTERVAL = 60.0  # Arvados' Collections.TrashSweepInterval default


class TrashSweeper(PeriodicService):
    """A named service calling ``store.purge_deleted()`` every ``interval`` seconds."""

    def __init__(self, store: Any, *, clock: IReactorTime,
                 interval: float = DEFAULT_INTERVAL) -> None:
        super().__init__(SERVICE_NAME, clock=clock, interval=interval)
        self._store = store
        self.deleted = 0     # rows deleted over all rounds
        self.last: dict[str, int] | None = None  # per-table counts of the last good round

    async def run_round(self) -> dict[str, int]:
        return await self.sweep()

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
