"""A named service that runs one round of work every ``interval`` seconds.

Why one class: the trash sweeper, the empty-trash timer and the balancer all
need the same guarantees, and each got them slightly differently when
written alone. Rounds run on an injected clock (tests drive it with
``task.Clock``), the first round comes one interval after start (at node
start the store may still be migrating), a round still running when the next
is due makes that tick a no-op instead of piling up, a round that fails is
logged and the next one runs as usual, and stopping waits for a round in
flight so the store and volumes are not closed under it.

Subclasses implement :meth:`run_round`.
"""
from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["PeriodicService"]


class PeriodicService(Service):
    """Calls :meth:`run_round` every ``interval`` seconds on ``clock``."""

    log = Logger()

    def __init__(self, name: str, *, clock: IReactorTime, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"the {name} interval must be positive")
        self.setName(name)
        self._clock = clock
        self.interval = interval
        self._loop: LoopingCall | None = None
        self._round: Deferred[Any] | None = None
        self.rounds = 0    # rounds started
        self.failures = 0  # rounds that raised

    async def run_round(self) -> Any:
        """One round of work now (subclasses count it in ``self.rounds``)."""
        raise NotImplementedError

    def startService(self) -> None:
        super().startService()
        loop = LoopingCall(self._tick)
        loop.clock = self._clock
        self._loop = loop
        done = loop.start(self.interval, now=False)
        done.addErrback(lambda f: self.log.failure("{name} loop died", f, name=self.name))

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

    def _tick(self) -> None:
        if self._round is not None:
            return  # the previous round is still running: skip, do not pile up
        d = Deferred.fromCoroutine(self.run_round())

        def failed(f: Any) -> None:
            self.failures += 1
            self.log.failure("{name} round failed; the next one runs as usual", f, name=self.name)

        def finished(result: Any) -> None:
            self._round = None

        d.addErrback(failed)
        d.addBoth(finished)
        if not d.called:
            self._round = d
