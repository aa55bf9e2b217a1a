"""RemoteTokenRefresh: revalidate cached remote tokens on a timer.

Why: Arvados revalidates a remote token only when it is next used after
``refreshes_at``. arvnode also asks proactively (DESIGN.md §3a), so that a
revoked token or a deactivated user is dropped from the cache within one
``Login.RemoteTokenRefresh`` even if nobody uses it, and so that busy tokens
are rarely revalidated inline on a client's request. The inline path in
:class:`arvnode.auth.remote_tokens.RemoteTokens` stays the guarantee: the
timer may lag (a slow issuer, a loaded node) without extending validity.

Each round drops entries nobody presented for ``idle_intervals`` intervals
(so one-off tokens do not cost an issuer round trip forever), takes the
cached tokens whose last successful check is at least one interval old, and re-asks their issuers with at most ``concurrency``
requests in flight per issuer, each started after a random delay (up to
``jitter`` seconds, from the injected rng) so that many nodes started
together do not hit an issuer in lockstep. An issuer that says "invalid"
drops the token; an issuer that cannot be reached leaves the entry alone
(it goes stale and the next use fails with 502 rather than 401). A round
that fails is logged and the next one runs as usual.
"""
from __future__ import annotations

import random
from typing import Any

from attrs import define
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from arvnode.auth.remote_tokens import CachedToken, RemoteTokens
from arvnode.remote.client import RemoteUnreachable

__all__ = ["RemoteTokenRefresh", "RoundResult", "SERVICE_NAME"]

SERVICE_NAME = "remote-token-refresh"


@define
class RoundResult:
    checked: int = 0
    still_valid: int = 0
    dropped: int = 0
    unreachable: int = 0
    errors: int = 0
    evicted: int = 0  # idle entries dropped without asking


class RemoteTokenRefresh(Service):
    """A named service running :meth:`run_round` every ``interval`` seconds."""

    log = Logger()

    def __init__(
        self,
        tokens: RemoteTokens,
        *,
        clock: IReactorTime,
        rng: random.Random,
        interval: float,
        concurrency: int = 4,
        jitter: float | None = None,
        idle_intervals: float = 3.0,
    ) -> None:
        self.setName(SERVICE_NAME)
        self._tokens = tokens
        self._clock = clock
        self._rng = rng
        self.interval = interval
        self.concurrency = max(1, concurrency)
        # Default: up to a tenth of the interval, at most 10 s, so every
        # round still finishes well inside its interval.
        self.jitter = min(interval / 10.0, 10.0) if jitter is None else max(0.0, jitter)
        # A token nobody used for this many intervals is dropped, not
        # revalidated: its next use simply asks the issuer again.
        self.idle_after = idle_intervals * interval
        self._loop: LoopingCall | None = None
        self._round: Deferred[Any] | None = None
        self.rounds = 0  # rounds started
        self.completed = 0  # rounds finished, failed ones included
        self.last: RoundResult | None = None
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}

    def startService(self) -> None:
        super().startService()
        loop = LoopingCall(self._tick)
        loop.clock = self._clock
        self._loop = loop
        done = loop.start(self.interval, now=False)
        done.addErrback(lambda f: self.log.failure("remote token refresh loop died", f))

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._round is not None:
            self._round.cancel()
        return None

    def _tick(self) -> Deferred[Any]:
        # Never let an error escape: LoopingCall would stop for good.
        d = Deferred.fromCoroutine(self.run_round())
        self._round = d

        def failed(f: Any) -> None:
            self.log.failure("remote token refresh round failed; the next one runs as usual", f)

        def finished(result: Any) -> Any:
            self._round = None
            self.completed += 1
            return result

        d.addErrback(failed)
        d.addBoth(finished)
        return d

    async def run_round(self) -> RoundResult:
        """Revalidate every cached token last checked at least one interval ago."""
        self.rounds += 1
        result = RoundResult()
        now = self._clock.seconds()
        result.evicted = self._tokens.evict_idle(now, self.idle_after)
        due = self._tokens.stale(now)
        by_issuer: dict[str, list[CachedToken]] = {}
        for entry in due:
            by_issuer.setdefault(entry.issuer, []).append(entry)

        def check(issuer: str, entry: CachedToken) -> Deferred[None]:
            return Deferred.fromCoroutine(self._one(issuer, entry, result))

        work = []
        for issuer, entries in by_issuer.items():
            sem = DeferredSemaphore(self.concurrency)
            for entry in entries:
                work.append(sem.run(check, issuer, entry))
        if work:
            await gatherResults(work, consumeErrors=True)
        self.last = result
        if result.checked:
            self.log.info(
                "remote token refresh: {checked} checked, {valid} still valid, {dropped} dropped,"
                " {unreachable} unreachable, {errors} errors",
                checked=result.checked, valid=result.still_valid, dropped=result.dropped,
                unreachable=result.unreachable, errors=result.errors,
            )
        return result

    async def _one(self, issuer: str, entry: CachedToken, result: RoundResult) -> None:
        if self.jitter:
            await deferLater(self._clock, self._rng.uniform(0.0, self.jitter), lambda: None)
        self.in_flight[issuer] = self.in_flight.get(issuer, 0) + 1
        self.max_in_flight[issuer] = max(self.max_in_flight.get(issuer, 0), self.in_flight[issuer])
        result.checked += 1
        try:
            identity = await self._tokens.revalidate(entry)
        except RemoteUnreachable as e:
            result.unreachable += 1
            self.log.warn("remote token refresh: {error}", error=e.message)
        except Exception:
            result.errors += 1
            self.log.failure("remote token refresh: revalidating a token of {issuer} failed", issuer=issuer)
        else:
            if identity is None:
                result.dropped += 1
            else:
                result.still_valid += 1
        finally:
            self.in_flight[issuer] -= 1
