"""AsyncResource: one way to write an API handler.

Every controller route is an ``async def handle(request)``. This base runs
it, cancels it if the client goes away, bounds concurrency and duration
(``API.MaxConcurrentRequests`` / ``MaxQueuedRequests`` / ``RequestTimeout``),
and funnels every exception through one place that turns it into the
Arvados JSON error shape ``{"errors": [...], "error_token": ...}``.
"""
from __future__ import annotations

import json
import random
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request


class HTTPError(Exception):
    """An answer that is not a success. ``status`` and a message for the user."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_token(clock: IReactorTime, rng: random.Random) -> str:
    """Arvados' error token: ``<unix seconds>+<8 hex>``, for matching logs."""
    return f"{int(clock.seconds())}+{rng.getrandbits(32):08x}"


def write_json(request: Request, status: int, body: Any) -> None:
    if request.finished or getattr(request, "_disconnected", False):
        return
    data = json.dumps(body).encode()
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", str(len(data)).encode())
    request.write(data)
    request.finish()


class Limits:
    """Concurrency and time bounds shared by every API request of a node."""

    def __init__(self, clock: IReactorTime, *, max_concurrent: int, max_queued: int, timeout: float) -> None:
        self.clock = clock
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.timeout = timeout
        self.running = 0
        self.queue: list[Deferred[None]] = []

    def acquire(self) -> Deferred[None] | None:
        """A Deferred that fires when the request may run, or None if the
        queue is full (the caller answers 503). ``max_concurrent`` 0 means
        no limit, as in Arvados (older Arvados defaults ship exactly that)."""
        if self.max_concurrent <= 0 or self.running < self.max_concurrent:
            self.running += 1
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        if len(self.queue) >= self.max_queued:
            return None
        d = Deferred(lambda d: self.queue.remove(d) if d in self.queue else None)
        self.queue.append(d)
        return d

    def release(self) -> None:
        if self.queue:
            self.queue.pop(0).callback(None)
        else:
            self.running -= 1


class AsyncResource(Resource):
    """Leaf resource whose subclasses implement ``async def handle(request)``.

    ``handle`` either returns a JSON-able value (sent with 200) or writes the
    response itself and returns ``NOT_DONE_YET``.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, *, clock: IReactorTime, rng: random.Random, limits: Limits) -> None:
        super().__init__()
        self.clock = clock
        self.rng = rng
        self.limits = limits

    async def handle(self, request: Request) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def render(self, request: Request) -> int:
        slot = self.limits.acquire()
        if slot is None:
            self._send_error(request, HTTPError(503, "server busy: too many requests queued; retry later",
                                               {"Retry-After": "1"}))
            return NOT_DONE_YET
        d = slot.addCallback(lambda _: Deferred.fromCoroutine(self._run(request)))
        timer = self.clock.callLater(self.limits.timeout, d.cancel)
        request.notifyFinish().addErrback(lambda _: d.cancel())

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(done)
        d.addErrback(self._failed, request, timer)
        return NOT_DONE_YET

    async def _run(self, request: Request) -> None:
        try:
            result = await self.handle(request)
        finally:
            self.limits.release()
        if result is not NOT_DONE_YET:
            write_json(request, 200, result)

    def _failed(self, failure: Failure, request: Request, timer: Any) -> None:
        if getattr(request, "_disconnected", False) or request.finished:
            return  # client left: nothing to say, nobody to say it to
        if failure.check(HTTPError):
            self._send_error(request, failure.value)
            return
        if failure.check(CancelledError):
            self._send_error(request, HTTPError(503, f"request timed out after {self.limits.timeout:g}s"))
            return
        self.log.failure("unhandled error in {path}", failure, path=getattr(request, "path", b"").decode("latin-1"))
        if getattr(request, "startedWriting", False):
            # A request being answered has a live TCP (or TLS) transport.
            cast(ITCPTransport, request.channel.transport).abortConnection()
            return
        self._send_error(request, HTTPError(500, "internal error (this is a bug in arvnode)"))

    def _send_error(self, request: Request, err: HTTPError) -> None:
        for name, value in err.headers.items():
            request.setHeader(name.encode(), value.encode())
        token = error_token(self.clock, self.rng)
        # The error token is what a user quotes from a client's message: log
        # it with the request id so the operator can find this answer.
        # (Messages are what the client is told anyway: never a secret.)
        log = self.log.warn if err.status >= 500 else self.log.info
        log("error {status} error_token={error_token} request_id={request_id}: {error}",
            status=err.status, error_token=token,
            request_id=getattr(request, "request_id", "") or "-", error=err.message)
        write_json(request, err.status, {"errors": [err.message], "error_token": token})
