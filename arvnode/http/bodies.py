"""Reading a (small) HTTP client response body whole, with a size bound.

For documents and error messages only — JSON from another cluster, a
keepstore's error text or index — never for block data, which is streamed.
The bound keeps a misbehaving peer from making the node hold an arbitrary
answer in memory: past ``limit`` bytes the connection is dropped and the
read says so (``truncated``).
"""
from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

__all__ = ["BoundedBody", "read_bounded"]


class BoundedBody(Protocol):
    """Collects a body up to ``limit`` bytes; beyond that it stops the
    transport, sets ``truncated`` and fires ``done`` with what it kept."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.truncated = False
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if self.truncated:
            return
        self._size += len(data)
        if self._size > self._limit:
            self.truncated = True
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        if self.done.called:
            return
        if self.truncated or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)


def read_bounded(response: IResponse, limit: int) -> "tuple[BoundedBody, Deferred[bytes]]":
    """Start collecting ``response``'s body; (the collector, its Deferred)."""
    proto = BoundedBody(limit)
    response.deliverBody(proto)
    return proto, proto.done
