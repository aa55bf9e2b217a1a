"""The controller's HTTP tree: the Arvados REST API of this node.

One resource serves every path: the discovery document and ``/config``
(no token needed), and ``/arvados/v1/<resource>...`` through one
:class:`Router`. For each API call it reads the parameters (size-limited,
merged), authenticates the token, checks the token's scopes and the
user's state, and runs the route; store and permission errors become the
Arvados JSON error shape here, in one place: NotFound 404, bad input
(QueryError, invalid manifest, name clash) 422, permission 403, database
down 503.
"""
from __future__ import annotations

import json
import random
from typing import Any, Awaitable, Callable, Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET, Request

from arvnode.api import params as P
from arvnode.api.permissions import Access, LevelsCache, PermissionDenied
from arvnode.api.resources import RESOURCE_CLASSES
from arvnode.api.resources.base import Ctx, Deps
from arvnode.api.router import Router
from arvnode.auth.tokens import token_from_request
from arvnode.http.resource import AsyncResource, HTTPError, Limits
from arvnode.http.site import NodeRequest, NodeSite
from arvnode.keep.manifest import ManifestError
from arvnode.store.errors import Conflict, NotFound, StoreUnavailable
from arvnode.store.query import QueryError
from arvnode.web.metrics import NodeMetrics

DISCOVERY = ["discovery", "v1", "apis", "arvados", "v1", "rest"]
# Clients cache the document on disk (httplib2 follows Cache-Control); keep
# it short so a changed rootUrl or keep port reaches them soon.
DISCOVERY_CACHE_CONTROL = "public, max-age=60"

_CORS = {
    b"Access-Control-Allow-Origin": b"*",
    b"Access-Control-Allow-Methods": b"GET, HEAD, OPTIONS, PUT, POST, PATCH, DELETE",
    b"Access-Control-Allow-Headers": b"Authorization, Content-Type, Range, X-Http-Method-Override",
    b"Access-Control-Expose-Headers": b"Content-Range",
    b"Access-Control-Max-Age": b"86486400",
}


class ControllerRequest(NodeRequest):
    """A request whose body stops being kept once it passes ``max_body``.

    twisted.web spools the whole body before ``render``; beyond
    ``API.MaxRequestSize`` the bytes are counted and dropped (memory and
    disk stay bounded) and the handler answers 413.
    """

    max_body = 134217728
    body_too_large = False

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        if length is not None and length > self.max_body:
            self.body_too_large = True

    def handleContentChunk(self, data: bytes) -> None:
        if not self.body_too_large and self.bytes_in + len(data) > self.max_body:
            self.body_too_large = True
            self.content.seek(0)
            self.content.truncate()
        if self.body_too_large:
            self.bytes_in += len(data)
            return
        super().handleContentChunk(data)


def advertised_url(service: Any, listener: Any) -> str:
    """``Services.X.ExternalURL`` with a trailing slash; the bound port if it says 0."""
    url = getattr(service, "external_url", None)
    if url is not None and url.port != 0:
        text = str(url)
    else:
        scheme = url.scheme if url is not None else listener.scheme
        host = url.host if url is not None else listener.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        text = f"{scheme}://{host}:{listener.port}{url.path if url is not None else ''}"
    return text if text.endswith("/") else text + "/"


def scope_allows(scopes: tuple[str, ...], method: str, path: str) -> bool:
    """Arvados token scopes: ``all``, or ``METHOD /path`` (a trailing ``/`` = prefix)."""
    if method == "HEAD":
        method = "GET"
    for scope in scopes:
        if scope == "all":
            return True
        smethod, _, spath = scope.partition(" ")
        if smethod != method:
            continue
        if spath == path or (spath.endswith("/") and path.startswith(spath)):
            return True
    return False


class ControllerResource(AsyncResource):
    log = Logger()

    def __init__(self, *, clock: IReactorTime, rng: random.Random, limits: Limits,
                 deps: Deps | None) -> None:
        super().__init__(clock=clock, rng=rng, limits=limits)
        self.deps = deps
        self.router: Router | None = None
        if deps is not None:
            resources = {cls.resource: cls(deps) for cls in RESOURCE_CLASSES}
            deps.resources = resources
            self.router = Router(resources)
        self._discovery: bytes | None = None

    async def handle(self, request: Request) -> Any:
        for name, value in _CORS.items():
            request.setHeader(name, value)
        method = request.method.decode("ascii", "replace").upper()
        override = request.getHeader(b"x-http-method-override")
        if method == "POST" and override is not None:
            method = override.decode("ascii", "replace").upper()
        segments = P.path_segments(request.path)
        if method == "OPTIONS":
            request.setResponseCode(200)
            request.setHeader(b"Content-Length", b"0")
            request.finish()
            return NOT_DONE_YET
        if segments == DISCOVERY:
            return self._send_discovery(request, method)
        if segments[:2] != ["arvados", "v1"] or self.deps is None or self.router is None:
            raise HTTPError(404, f"Path not found: {request.path.decode('utf-8', 'replace')}")
        rest = segments[2:]
        if rest == ["config"]:
            if method not in ("GET", "HEAD"):
                raise HTTPError(405, f"method {method} is not allowed on /arvados/v1/config",
                                {"Allow": "GET, HEAD"})
            return self._config()
        route = self.router.match(method, rest)
        params, body = P.read_params(request, max_size=self.deps.config.api.max_request_size)
        if method == "POST" and str(params.get("_method", "")).upper() == "GET":
            route = self.router.match("GET", rest)
        identity = await self._authenticate(request, required=not route.public)
        if identity is None and not route.public:
            raise HTTPError(401, "Not logged in: this request needs a valid API token "
                                 "(Authorization: Bearer <token>)")
        if identity is not None:
            request.user_uuid = identity.user_uuid  # type: ignore[attr-defined]
            path = "/" + "/".join(segments)
            if not route.public and not scope_allows(identity.scopes, method, path):
                raise HTTPError(403, f"this token's scopes do not allow {method} {path}")
            if method not in ("GET", "HEAD") and not identity.is_active and not route.public:
                raise HTTPError(403, f"user {identity.user_uuid} is not active: an admin must "
                                     "activate the account before it can change anything")
        access = Access(self.deps.store, identity, self.deps.cluster_id, self.deps.levels)
        ctx = Ctx(request=request, identity=identity, params=params, body=body, access=access,
                  deps=self.deps)
        try:
            return await route.call(ctx)
        except NotFound as e:
            raise HTTPError(404, str(e) or "not found") from e
        except (QueryError, ManifestError) as e:
            raise HTTPError(422, str(e)) from e
        except Conflict as e:
            # 422, not 409: clients retry 409 for minutes; a name clash is final.
            raise HTTPError(422, str(e)) from e
        except PermissionDenied as e:
            raise HTTPError(403, str(e)) from e
        except StoreUnavailable as e:
            raise HTTPError(503, f"database unavailable: {e}", {"Retry-After": "1"}) from e

    async def _authenticate(self, request: Request, *, required: bool) -> Any:
        """The caller's Identity, None without a token; 401 for a bad one
        unless the route works without a token (keep_services/accessible)."""
        assert self.deps is not None
        token = token_from_request(request)
        if not token:
            return None
        try:
            identity = await self.deps.authenticator.authenticate(token)
        except StoreUnavailable as e:
            raise HTTPError(503, f"database unavailable: {e}", {"Retry-After": "1"}) from e
        if identity is None and required:
            raise HTTPError(401, "Not logged in: the API token is invalid, expired or revoked")
        return identity

    def _send_discovery(self, request: Request, method: str) -> Any:
        if method not in ("GET", "HEAD"):
            raise HTTPError(405, "method not allowed on the discovery document",
                            {"Allow": "GET, HEAD"})
        if self._discovery is None:
            if self.deps is None:
                raise HTTPError(404, "discovery document not available")
            try:
                from arvnode.api.discovery import discovery_document
            except ImportError as e:
                raise HTTPError(404, f"discovery document not available: {e}") from e
            doc = discovery_document(self.deps.config)
            root = self.deps.controller_url()
            doc["rootUrl"] = root
            doc["baseUrl"] = root + str(doc.get("servicePath", "arvados/v1/"))
            self._discovery = json.dumps(doc).encode()
        data = self._discovery
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", DISCOVERY_CACHE_CONTROL.encode())
        request.setHeader(b"Content-Length", str(len(data)).encode())
        request.write(data)
        request.finish()
        return NOT_DONE_YET

    def _config(self) -> dict[str, Any]:
        assert self.deps is not None
        try:
            from arvnode.api.config_export import exported_config
        except ImportError:
            return {"ClusterID": self.deps.cluster_id}
        exported = exported_config(self.deps.config)
        services = exported.get("Services")
        if isinstance(services, dict):
            for name, url in (("Controller", self.deps.controller_url),
                              ("Keepproxy", self.deps.keepproxy_url)):
                if isinstance(services.get(name), dict):
                    services[name]["ExternalURL"] = url()
        return exported


def build_controller_site(
    *,
    clock: IReactorTime,
    rng: random.Random,
    metrics: NodeMetrics,
    management_token: str,
    health_checks: Mapping[str, Callable[[], Awaitable[None]]],
    max_concurrent: int,
    max_queued: int,
    request_timeout: float,
    idle_timeout: float = 300.0,
    store: Any = None,
    authenticator: Any = None,
    config: Any = None,
    keepproxy_url: Callable[[], str] | None = None,
    controller_url: Callable[[], str] | None = None,
) -> NodeSite:
    """The controller's site. Without ``config``/``store`` it answers 404 to every API path.

    ``keepproxy_url``/``controller_url`` return the advertised URLs; they
    are callables because with port 0 the port is known only after the
    listeners bind.
    """
    limits = Limits(clock, max_concurrent=max_concurrent, max_queued=max_queued, timeout=request_timeout)
    deps: Deps | None = None
    if config is not None and store is not None and authenticator is not None:
        deps = Deps(
            store=store, authenticator=authenticator, config=config, clock=clock,
            levels=LevelsCache(clock, ttl=float(config.arvnode.token_cache_ttl)),
            keepproxy_url=keepproxy_url or (lambda: str(config.services.keepproxy.external_url)),
            controller_url=controller_url or (lambda: str(config.services.controller.external_url)),
        )
    root = ControllerResource(clock=clock, rng=rng, limits=limits, deps=deps)
    site = NodeSite(
        root, service="controller", clock=clock, rng=rng, metrics=metrics,
        management_token=management_token, health_checks=health_checks, idle_timeout=idle_timeout,
    )
    max_body = config.api.max_request_size if config is not None else ControllerRequest.max_body
    site.requestFactory = type("ControllerRequest", (ControllerRequest,), {"max_body": max_body})
    return site
