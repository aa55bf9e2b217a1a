# -*- test-case-name: tests.auth.test_refresh -*-
"""The RemoteTokenRefresh timer (:mod:`arvnode.auth.refresh`), driven by a fake clock.

The issuer is :mod:`tests.remote.fakecluster` (a loopback TLS server standing
in for a remote Arvados cluster); timers run on :class:`Clock`, the network
on the real reactor.
"""
from __future__ import annotations

import random

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from arvnode.auth.refresh import SERVICE_NAME, RemoteTokenRefresh
from tests.auth.test_remote_tokens import INTERVAL, RemoteTokenSetup
from tests.helpers import wait_for


class RefreshTests(RemoteTokenSetup, TestCase):
    async def refresher(self, *, concurrency: int = 4, jitter: float = 0.0, seed: int = 1,
                        idle_intervals: float = 3.0) -> RemoteTokenRefresh:
        service = RemoteTokenRefresh(
            self.remote, clock=self.clock, rng=random.Random(seed), interval=INTERVAL,
            concurrency=concurrency, jitter=jitter, idle_intervals=idle_intervals,
        )
        service.startService()
        self.addCleanup(service.stopService)
        return service

    async def tokens(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            user = self.fake.add_user()
            presented = self.salted(self.fake.add_token(user["uuid"]).v2)
            self.assertIsNotNone(await self.auth.authenticate(presented))
            out.append(presented)
        return out

    async def round(self, service: RemoteTokenRefresh, advance: float = INTERVAL) -> None:
        done = service.completed
        self.clock.advance(advance)
        await wait_for(lambda: service.completed > done)

    async def test_named_service(self) -> None:
        await self.build()
        service = await self.refresher()
        self.assertEqual(service.name, SERVICE_NAME)
        self.assertEqual(SERVICE_NAME, "remote-token-refresh")

    async def test_revoked_token_dropped_within_one_interval(self) -> None:
        """Nobody uses the token; the round one interval later asks the issuer
        and drops it, so the next use is refused."""
        await self.build(activate=True)
        service = await self.refresher()
        [presented] = await self.tokens(1)
        token_uuid = presented.split("/")[1]
        self.fake.revoke(token_uuid)
        await self.round(service)
        self.assertEqual(service.last.dropped, 1)
        self.assertEqual(len(self.remote), 0)
        self.assertIsNone(await self.auth.authenticate(presented))

    async def test_deactivated_user_seen_within_one_interval(self) -> None:
        await self.build(activate=True)
        service = await self.refresher()
        [presented] = await self.tokens(1)
        user_uuid = (await self.auth.authenticate(presented)).user_uuid
        self.fake.deactivate(user_uuid)
        await self.round(service)
        calls = len(self.fake.calls)
        identity = await self.auth.authenticate(presented)
        self.assertFalse(identity.is_active)
        self.assertEqual(len(self.fake.calls), calls)  # answered from the refreshed cache

    async def test_valid_tokens_are_refreshed_and_used_without_inline_checks(self) -> None:
        """After a round, a use just past the old deadline needs no round trip."""
        await self.build(activate=True)
        service = await self.refresher()
        presented = await self.tokens(3)
        await self.round(service)
        self.assertEqual(service.last.still_valid, 3)
        calls = len(self.fake.calls)
        self.clock.advance(1)
        for p in presented:
            self.assertIsNotNone(await self.auth.authenticate(p))
        self.assertEqual(len(self.fake.calls), calls)

    async def test_failed_round_then_recovery(self) -> None:
        """Issuer down during a round: logged, entry kept (stale → inline check
        fails with 502, not 401); the next round refreshes it again. A round
        that blows up does not stop the timer either."""
        await self.build(activate=True)
        service = await self.refresher(idle_intervals=10)
        [presented] = await self.tokens(1)
        self.fake.fail_status = 500
        await self.round(service)
        self.assertEqual(service.last.unreachable, 1)
        self.assertEqual(len(self.remote), 1)

        original = self.remote.stale
        self.remote.stale = lambda now, age=None: 1 / 0  # type: ignore[method-assign]
        await self.round(service)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.remote.stale = original  # type: ignore[method-assign]

        self.fake.fail_status = None
        await self.round(service)
        self.assertEqual(service.last.still_valid, 1)
        calls = len(self.fake.calls)
        self.assertIsNotNone(await self.auth.authenticate(presented))
        self.assertEqual(len(self.fake.calls), calls)

    async def test_concurrency_bounded_per_issuer(self) -> None:
        """Ten due tokens, concurrency 2: never more than 2 checks in flight."""
        await self.build(activate=True)
        service = await self.refresher(concurrency=2)
        await self.tokens(10)
        gate: Deferred[None] = Deferred()
        self.fake.gate = gate
        calls = len(self.fake.calls)
        done = service.completed
        self.clock.advance(INTERVAL)
        await wait_for(lambda: len(self.fake.calls) == calls + 2)
        self.assertEqual(service.in_flight[self.fake.cluster_id], 2)
        self.fake.gate = None
        gate.callback(None)
        await wait_for(lambda: service.completed > done)
        self.assertEqual(service.max_in_flight[self.fake.cluster_id], 2)
        self.assertEqual(service.last.still_valid, 10)

    async def test_jitter_delays_each_check(self) -> None:
        """With jitter, no check starts until its random delay has passed."""
        await self.build(activate=True)
        service = await self.refresher(jitter=20.0, seed=4)
        await self.tokens(2)
        calls = len(self.fake.calls)
        done = service.completed
        self.clock.advance(INTERVAL)
        self.assertEqual(len(self.fake.calls), calls)
        self.assertEqual(service.completed, done)
        self.clock.advance(20.0)
        await wait_for(lambda: service.completed > done)
        self.assertEqual(service.last.still_valid, 2)

    async def test_lagging_timer_inline_revalidation(self) -> None:
        """The timer has not run (stopped); a use after the deadline asks the
        issuer inline, so a revoked token is still refused in time."""
        await self.build(activate=True)
        service = await self.refresher()
        service.stopService()
        [presented] = await self.tokens(1)
        self.fake.revoke(presented.split("/")[1])
        self.clock.advance(INTERVAL)
        self.assertIsNone(await self.auth.authenticate(presented))

    async def test_idle_tokens_evicted_not_revalidated(self) -> None:
        """A token nobody presents for three intervals is dropped without a
        round trip; its next use asks the issuer again and works."""
        await self.build(activate=True)
        service = await self.refresher()
        [idle, busy] = await self.tokens(2)
        for _ in range(3):
            self.assertIsNotNone(await self.auth.authenticate(busy))
            await self.round(service)
        self.assertEqual(service.last.evicted, 1)
        self.assertEqual(len(self.remote), 1)
        calls = len(self.fake.calls)
        self.assertIsNotNone(await self.auth.authenticate(idle))
        self.assertGreater(len(self.fake.calls), calls)
