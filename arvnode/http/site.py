"""The HTTP plumbing both services share: request ids, access log, in-flight
tracking for graceful shutdown, metrics, and the management endpoints.

Why a Site subclass and not a wrapper resource: the access log line, the
request id and the in-flight count must cover *every* response, including
the ones the keepproxy sends from its streaming request before any resource
is rendered (411/413/403 at header time). ``Site.log`` and
``Request.process``/``finish`` are the hooks that see all of them.
"""
from __future__ import annotations

import random
import re
from typing import Awaitable, Callable, Mapping, cast
from urllib.parse import parse_qsl, unquote, urlencode

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from arvnode.web.management import ManagementResource
from arvnode.web.metrics import NodeMetrics

_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"
# Incoming ids are echoed and logged: keep them short and printable.
_REQUEST_ID_RE = re.compile(rb"^[!-~]{1,128}$")

HealthCheck = Callable[[], Awaitable[None]]


def new_request_id(rng: random.Random) -> str:
    """``req-`` + 20 base-36 characters, as Arvados services generate."""
    return "req-" + "".join(rng.choice(_BASE36) for _ in range(20))


_SIGNATURE = re.compile(r"\+A[0-9a-fA-F]{40}@")


def loggable_uri(uri: bytes) -> str:
    """The request URI with any ``api_token`` query parameter (and a
    ``/login`` ``code``) removed and
    block permission signatures (``+A<40 hex>@``) masked.

    A signature is useless without the token it was made for, but the
    audit line never shows one, and the access log follows the same rule.
    """
    text = uri.decode("latin-1")
    path, sep, query = text.partition("?")
    path = _SIGNATURE.sub("+A-@", path)
    if not sep:
        return path
    # On /login, an OpenID Connect authorization code is as good as a token
    # until it is used: not logged either. The controller routes by decoded
    # segments (``//login``, ``/%6Cogin`` are /login too), so match the same way.
    # ``reader_tokens`` is a JSON list of tokens.
    secret: tuple[str, ...] = ("api_token", "reader_tokens")
    if [unquote(s) for s in path.split("/") if s] == ["login"]:
        secret += ("code",)
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in secret]
    return path + ("?" + urlencode(kept) if kept else "")


class NodeRequest(Request):
    """A request that knows its id, its start time and (once known) its user.

    Subclasses (the keepproxy's streaming request) keep these semantics.
    """

    request_id: str = ""
    started: float = 0.0
    user_uuid: str | None = None
    bytes_in: int = 0
    _counted = False

    @property
    def channel_site(self) -> NodeSite:
        """The site that built this request's channel, known before
        ``process()`` sets ``self.site``. ``Site.buildProtocol`` sets
        ``channel.site``; Twisted's HTTPChannel does not declare it."""
        return cast(NodeSite, getattr(self.channel, "site"))

    def gotLength(self, length: int | None) -> None:
        self.started = self.channel_site.clock.seconds()
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self.bytes_in += len(data)
        super().handleContentChunk(data)

    def assign_request_id(self) -> None:
        """Honour a sane incoming ``X-Request-Id``, else make one; echo it.

        Idempotent, so header-time code may call it before ``process``.
        """
        if self.request_id:
            return
        incoming = self.getHeader(b"x-request-id")
        if incoming is not None and _REQUEST_ID_RE.match(incoming):
            self.request_id = incoming.decode("ascii")
        else:
            self.request_id = new_request_id(self.channel_site.rng)
        self.setHeader(b"X-Request-Id", self.request_id.encode("ascii", "replace"))

    def track(self) -> None:
        """Count this request as in flight until it finishes or its client
        goes away; called once, as early as the request is known."""
        if self._counted:
            return
        self._counted = True
        site = self.channel_site  # self.site is set only in process()
        site.request_started(self)
        self.notifyFinish().addBoth(lambda _: site.request_ended(self))

    def process(self) -> None:
        if not self.started:
            self.started = self.channel_site.clock.seconds()
        self.assign_request_id()
        self.track()
        super().process()


class NodeSite(Site):
    """A Site for one arvnode service (``controller`` or ``keepproxy``).

    Requests under ``/_health/`` and ``/metrics`` go to the management
    resource; everything else to the service's own resource.
    """

    requestFactory = NodeRequest

    def __init__(
        self,
        resource: IResource,
        *,
        service: str,
        clock: IReactorTime,
        rng: random.Random,
        metrics: NodeMetrics,
        management_token: str,
        health_checks: Mapping[str, HealthCheck],
        idle_timeout: float = 60.0,
    ) -> None:
        # reactor=clock: HTTPChannel idle timeouts run on the injected clock.
        super().__init__(resource, timeout=idle_timeout, reactor=clock)
        # An instance attribute: a class-level Logger takes the class's name
        # as namespace whatever it was given.
        self.log_ = Logger(namespace="arvnode.access")
        self.service = service
        self.clock = clock
        self.rng = rng
        self.metrics = metrics
        self.management = ManagementResource(
            management_token=management_token, metrics=metrics, checks=health_checks
        )
        self.inflight: set[NodeRequest] = set()
        self._drained: list[Deferred[None]] = []

    def getResourceFor(self, request: Request) -> IResource:
        path = request.path
        if path.startswith(b"/_health/") or path in (b"/metrics", b"/metrics.json"):
            request.prepath = []
            request.postpath = path.split(b"/")[1:]
            return self.management
        return super().getResourceFor(request)

    # --- in-flight tracking, for graceful shutdown -------------------------

    def request_started(self, request: NodeRequest) -> None:
        self.inflight.add(request)
        self.metrics.inflight.labels(service=self.service).inc()

    def request_ended(self, request: NodeRequest) -> None:
        if request in self.inflight:
            self.inflight.discard(request)
            self.metrics.inflight.labels(service=self.service).dec()
        if not self.inflight:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def drained(self) -> Deferred[None]:
        """Fires when no request is in flight."""
        if not self.inflight:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        return d

    def abort_inflight(self) -> None:
        """Cut every connection still serving a request (grace period over)."""
        for request in list(self.inflight):
            transport = getattr(request.channel, "transport", None)
            if transport is not None:
                transport.abortConnection()

    # --- access log ---------------------------------------------------------

    def log(self, request: http.Request) -> None:
        """One structured line per request; never a token (see loggable_uri)."""
        now = self.clock.seconds()
        started = getattr(request, "started", 0.0) or now
        duration = max(0.0, now - started)
        method = request.method.decode("ascii", "replace")
        code = str(request.code)
        self.metrics.requests.labels(service=self.service, method=method, code=code).inc()
        self.metrics.request_duration.labels(
            service=self.service, method=method, code=code
        ).observe(duration)
        peer = request.getClientAddress()
        self.log_.info(
            "{service} {request_id} {client} {method} {path} {status} in={bytes_in} "
            "out={bytes_out} {duration:.6f}s user={user}",
            service=self.service,
            request_id=getattr(request, "request_id", ""),
            client=getattr(peer, "host", "-"),
            method=method,
            path=loggable_uri(request.uri),
            status=request.code,
            bytes_in=getattr(request, "bytes_in", 0),
            bytes_out=request.sentLength,
            duration=duration,
            user=getattr(request, "user_uuid", None) or "-",
        )
