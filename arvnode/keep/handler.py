"""The twisted.web glue shared by the keepproxy and the keepstore API.

Both answer every non-upload route from one ``async def handle(request)``
and shape their own errors (CORS and ``Via`` on the keepproxy, the
keepstore's headers on the keepstore), so the resource that runs the
handler and the site that routes its errors are written once, here.
"""
from __future__ import annotations

from typing import Any, Coroutine, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from arvnode.http.streaming import StreamingRequest, StreamingSite


class Handler(Protocol):
    log: Logger

    def handle(self, request: Any) -> Coroutine[Any, Any, None]: ...

    def send_error(self, request: Any, code: int, message: str) -> None: ...


class HandlerResource(Resource):
    """Leaf resource running ``handler.handle`` for every route it gets.

    A client that goes away cancels the handler; an unexpected exception is
    logged and answered 500 (or the connection aborted, if the body had
    started: a half-sent block must never look complete).
    """

    isLeaf = True

    def __init__(self, handler: Handler, service: str) -> None:
        super().__init__()
        self._handler = handler
        self._service = service

    def render(self, request: Any) -> int:
        d = Deferred.fromCoroutine(self._handler.handle(request))
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _failed(self, f: Failure, request: Any) -> None:
        if f.check(CancelledError) and request._disconnected:
            return
        self._handler.log.failure("{service} request failed", f, service=self._service)
        if request._disconnected or request.finished:
            return
        if request.startedWriting:
            request.channel.transport.abortConnection()
            return
        self._handler.send_error(request, 500, "internal error")


class HandlerSite(StreamingSite):
    """A :class:`StreamingSite` whose own errors (oversized bodies on
    non-upload routes, a failing header hook) carry the handler's headers."""

    handler: Handler

    def send_error(self, request: StreamingRequest, code: int, message: str) -> None:
        self.handler.send_error(request, code, message)
