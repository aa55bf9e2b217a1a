"""``/_health/<check>`` and ``/metrics`` behind the ManagementToken.

Arvados answers a failing check with 200 and leaves ``/metrics`` open when
no token is configured; arvnode answers 503 (load balancers read the status)
and turns both endpoints off (404) without a token (DESIGN §3a).
"""
from __future__ import annotations

import hmac
import json
from typing import Awaitable, Callable, Mapping

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from arvnode.web.metrics import NodeMetrics

HealthCheck = Callable[[], Awaitable[None]]


def _plain(request: Request, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    return (text + "\n").encode()


class ManagementResource(Resource):
    isLeaf = True
    log = Logger()

    def __init__(
        self, *, management_token: str, metrics: NodeMetrics, checks: Mapping[str, HealthCheck]
    ) -> None:
        super().__init__()
        self._token = management_token
        self._metrics = metrics
        self._checks = dict(checks)

    def _authorized(self, request: Request) -> bytes | None:
        """None if the caller may proceed, else the response body to send."""
        if not self._token:
            return _plain(request, 404, "disabled")
        header = request.getHeader(b"authorization")
        if header is None:
            request.setHeader(b"WWW-Authenticate", b"Bearer")
            return _plain(request, 401, "authorization required")
        expected = "Bearer " + self._token
        if not hmac.compare_digest(header, expected.encode()):
            return _plain(request, 403, "authorization error")
        return None

    def render(self, request: Request) -> bytes | int:
        refused = self._authorized(request)
        if refused is not None:
            return refused
        parts = [p.decode("utf-8", "replace") for p in request.postpath or []]
        if parts[:1] == ["metrics"] or parts[:1] == ["metrics.json"]:
            if request.method not in (b"GET", b"HEAD"):
                return _plain(request, 405, "method not allowed")
            request.setHeader(b"Content-Type", self._metrics.content_type.encode())
            return self._metrics.render()
        if len(parts) == 2 and parts[0] == "_health":
            check = self._checks.get(parts[1])
            if check is None:
                return _plain(request, 404, f"no health check named {parts[1]!r}")
            if request.method != b"GET":
                return _plain(request, 405, "method not allowed")
            d = Deferred.fromCoroutine(self._run(check))
            d.addCallback(self._answer, request)
            return NOT_DONE_YET
        return _plain(request, 404, "not found")

    async def _run(self, check: HealthCheck) -> str | None:
        try:
            await check()
        except Exception as e:  # a failing check is the answer, not a 500
            self.log.warn("health check failed: {error}", error=str(e))
            return str(e) or e.__class__.__name__
        return None

    def _answer(self, error: str | None, request: Request) -> None:
        if request._disconnected or request.finished:
            return
        request.setHeader(b"Content-Type", b"application/json")
        if error is None:
            body = {"health": "OK"}
        else:
            request.setResponseCode(503)
            body = {"health": "ERROR", "error": error}
        request.write((json.dumps(body) + "\n").encode())
        request.finish()
