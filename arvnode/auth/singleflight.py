"""One round trip per key, however many callers want its answer at once.

Why: a client that starts many requests with a token nobody has checked yet
(a keepproxy client writing blocks in parallel, say) must cause one check
upstream, not one per request. Shared by remote-token validation
(:mod:`arvnode.auth.remote_tokens`) and OpenID Connect access tokens
(:mod:`arvnode.auth.access_tokens`).
"""
from __future__ import annotations

from typing import Any, Callable, Coroutine, Generic, Hashable, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["SingleFlight"]

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Runs ``start()`` for a key unless a run for that key is in flight,
    in which case the caller waits for that run's result (or failure)."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, list[Deferred[T]]] = {}

    def run(self, key: Hashable, start: Callable[[], Coroutine[Any, Any, T]]) -> Deferred[T]:
        waiter: Deferred[T] = Deferred()
        waiters = self._flights.get(key)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        self._flights[key] = [waiter]

        def deliver(result: Any) -> None:
            for w in self._flights.pop(key, []):
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)

        Deferred.fromCoroutine(start()).addBoth(deliver)
        return waiter

    def __len__(self) -> int:
        """How many keys have a run in flight."""
        return len(self._flights)
