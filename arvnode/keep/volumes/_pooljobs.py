"""Pool jobs whose Deferreds may be cancelled safely.

A job on a thread pool cannot be stopped once it runs. Twisted's usual
answer to ``cancel()`` on such a Deferred (fire ``CancelledError`` at once)
is wrong for file work: the job's result (an open descriptor, a temp file)
would be lost, and an operation serialised behind it (``abort`` closing the
descriptor) would start while the job still uses it. The keepproxy cancels
whenever a client goes away, so these helpers hand out Deferreds that can be
cancelled without touching the job underneath.
"""
from __future__ import annotations

from typing import Callable, TypeVar, Union

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

_T = TypeVar("_T")


def deliver(out: "Deferred[_T]", result: "Union[_T, Failure]", log: Logger) -> None:
    """Fire ``out`` with ``result`` unless the caller cancelled ``out``."""
    if out.called:  # cancelled: nobody is listening any more
        if isinstance(result, Failure) and not isinstance(result.value, CancelledError):
            log.failure("pool job failed after its caller cancelled", result)
        return
    if isinstance(result, Failure):
        out.errback(result)
    else:
        out.callback(result)


def detached(
    job: "Deferred[_T]", log: Logger, orphan: Callable[[_T], object] | None = None
) -> "Deferred[_T]":
    """A Deferred that fires with ``job``'s result but whose cancellation does
    not touch ``job``.

    A pool job cannot be stopped; cancelling its Deferred would only make the
    result vanish (leaking an fd or a temp file) or, behind a lock, let the
    next operation run while the job still uses the descriptor. If the caller
    cancelled first, ``orphan`` receives the result to release it.
    """
    out: Deferred[_T] = Deferred()

    def fire(result: "Union[_T, Failure]") -> None:
        if out.called and orphan is not None and not isinstance(result, Failure):
            try:
                orphan(result)
            except Exception:
                log.failure("releasing an orphaned pool result failed")
        deliver(out, result, log)

    job.addBoth(fire)
    return out


class Serial:
    """Runs a writer's operations strictly one after another.

    Unlike :class:`~twisted.internet.defer.DeferredLock`, cancelling a
    Deferred it handed out does not let the next operation start early: the
    next one starts only when the previous pool job has really returned, so
    an ``abort`` never closes a descriptor that a write is still using.
    """

    def __init__(self, log: Logger) -> None:
        self._log = log
        self._tail: Deferred[None] = succeed(None)

    def run(self, op: "Callable[[], Deferred[_T]]") -> "Deferred[_T]":
        out: Deferred[_T] = Deferred()
        prev = self._tail
        mine: Deferred[None] = Deferred()
        self._tail = mine

        def go(_: object) -> None:
            maybeDeferred(op).addBoth(finished)

        def finished(result: "Union[_T, Failure]") -> None:
            deliver(out, result, self._log)
            mine.callback(None)

        prev.addCallback(go)
        return out
