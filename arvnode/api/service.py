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
from typing import Any, Awaitable, BinaryIO, Callable, Mapping, cast

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET, Request

from arvnode import ids
from arvnode.api import params as P
from arvnode.api.cache_admin import CACHE_DROP_PATH, drop_cache
from arvnode.api.login import LoginHandler
from arvnode.api.permissions import Access, LevelsCache, PermissionDenied
from arvnode.api.resources import RESOURCE_CLASSES
from arvnode.api.resources.base import Ctx, Deps
from arvnode.api.router import Router
from arvnode.auth.tokens import token_from_request
from arvnode.http.resource import AsyncResource, HTTPError, Limits
from arvnode.http.site import NodeRequest, NodeSite
from arvnode.keep.manifest import ManifestError
from arvnode.remote.client import RemoteTimeout, RemoteUnreachable
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
            # gotLength opened the body file (Twisted declares content = None).
            content = cast(BinaryIO, self.content)
            content.seek(0)
            content.truncate()
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
    # /login, /logout, users/authenticate (set by build_controller_site).
    login: LoginHandler | None = None

    def __init__(self, *, clock: IReactorTime, rng: random.Random, limits: Limits,
                 deps: Deps | None, federation: Any = None) -> None:
        super().__init__(clock=clock, rng=rng, limits=limits)
        self.deps = deps
        # arvnode.api.federation.Federation, or None: no remote is ever asked.
        self.federation = federation
        self.router: Router | None = None
        if deps is not None:
            resources = {cls.resource: cls(deps) for cls in RESOURCE_CLASSES}
            deps.resources = resources
            self.router = Router(resources)
        self._discovery: bytes | None = None

    async def handle(self, request: Request) -> Any:
        method = request.method.decode("ascii", "replace").upper()
        segments = P.path_segments(request.path)
        if self.login is not None and segments in (["login"], ["logout"]):
            # Browser endpoints: no CORS headers (spec 7.1).
            try:
                if segments == ["login"]:
                    return await self.login.login(request, method)
                return await self.login.logout(request, method)
            except StoreUnavailable as e:
                raise HTTPError(503, f"database unavailable: {e}", {"Retry-After": "1"}) from e
        for name, value in _CORS.items():
            request.setHeader(name, value)
        override = request.getHeader(b"x-http-method-override")
        if method == "POST" and override is not None:
            method = override.decode("ascii", "replace").upper()
        if segments == CACHE_DROP_PATH and self.deps is not None:
            return await drop_cache(request, method, self.deps)
        fed = self.federation if self.deps is not None else None
        remote = None
        if fed is not None and segments[:2] == ["arvados", "v1"]:
            remote = fed.path_target(request, segments[2:])
        if method == "OPTIONS" and fed is not None and remote is not None:
            # A CORS preflight carries no credentials: the remote answers it.
            await fed.relay(request, remote, None, None)
            return NOT_DONE_YET
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
        if rest == ["users", "authenticate"] and self.login is not None and method == "POST":
            return await self.login.authenticate(request)
        if rest == ["config"]:
            if method not in ("GET", "HEAD"):
                raise HTTPError(405, f"method {method} is not allowed on /arvados/v1/config",
                                {"Allow": "GET, HEAD"})
            return self._config()
        if remote is not None:
            return await self._federate(request, method, segments, remote)
        parsed = None
        if fed is not None:
            parsed = P.read_params(request, max_size=self.deps.config.api.max_request_size)
            remote = fed.param_target(request, method, rest, parsed[0])
            if remote is not None:
                return await self._federate(request, method, segments, remote)
        params, body = parsed or P.read_params(request,
                                               max_size=self.deps.config.api.max_request_size)
        # POST with a form field _method=GET is a GET (spec 7.1): decide
        # before matching, so a GET-only route (users/current) is not a 405.
        if method == "POST" and str(params.get("_method", "")).upper() == "GET":
            route = self.router.match("GET", rest)
        else:
            route = self.router.match(method, rest)
        identity = await self._authenticate(request, required=not route.public,
                                            remote=_remote_param(method, rest, params))
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
            if fed is not None:
                token = token_from_request(request)
                v2 = _v2_form(token, identity)
                if route.operation == "list":
                    return await fed.list(ctx, lambda c: route.call(c), route.resource.resource,
                                          route.resource.kind.kind, token, v2)
                if route.resource.resource == "collections" and route.operation == "get" \
                        and route.uuid is not None and ids.PDH_RE.match(route.uuid):
                    return await fed.collection_by_pdh(ctx, lambda: route.call(ctx), route.uuid,
                                                       token, v2)
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

    async def _federate(self, request: Request, method: str, segments: list[str],
                        cluster: str) -> Any:
        """Serve a request for a record of ``cluster`` by asking it (arvnode.api.federation).

        The token is checked here first (a bad one is 401 without bothering
        the remote, and a v1 secret needs its v2 form to be salted); the
        remote then applies its own permissions.
        """
        assert self.deps is not None and self.federation is not None
        if getattr(request, "body_too_large", False):
            raise HTTPError(413, "request body is larger than API.MaxRequestSize "
                                 f"({self.deps.config.api.max_request_size} bytes)")
        token = token_from_request(request)
        identity = None
        if token:
            identity = await self._authenticate(request, required=True)
            request.user_uuid = identity.user_uuid  # type: ignore[attr-defined]
            path = "/" + "/".join(segments)
            if not scope_allows(identity.scopes, method, path):
                raise HTTPError(403, f"this token's scopes do not allow {method} {path}")
        v2 = _v2_form(token, identity)
        rest = segments[2:]
        if method == "GET" and len(rest) == 2 and rest[0] == "collections":
            params, _ = P.read_params(request, max_size=self.deps.config.api.max_request_size)
            return await self.federation.collection_get(request, cluster, rest[1], params,
                                                        token, v2)
        await self.federation.relay(request, cluster, token, v2)
        return NOT_DONE_YET

    async def _authenticate(self, request: Request, *, required: bool,
                            remote: str | None = None) -> Any:
        """The caller's Identity, None without a token; 401 for a bad one
        unless the route works without a token (keep_services/accessible).

        ``remote``: the ``remote=<cluster>`` parameter another cluster sends
        when it checks one of our tokens salted for it (spec 3.5)."""
        assert self.deps is not None
        token = token_from_request(request)
        if not token:
            return None
        try:
            identity = await self.deps.authenticator.authenticate(token, remote=remote)
        except StoreUnavailable as e:
            raise HTTPError(503, f"database unavailable: {e}", {"Retry-After": "1"}) from e
        except RemoteTimeout as e:
            # The issuer of this token is too slow: an outage, not a logout.
            raise HTTPError(504, e.message) from e
        except RemoteUnreachable as e:
            raise HTTPError(502, e.message) from e
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


def _remote_param(method: str, rest: list[str], params: Mapping[str, Any]) -> str | None:
    """``remote=<cluster>`` where Arvados honours it: GET users/current,
    api_client_authorizations/current and groups (spec 3.5)."""
    value = params.get("remote")
    if method not in ("GET", "HEAD") or not isinstance(value, str) or not value:
        return None
    if rest in (["users", "current"], ["api_client_authorizations", "current"]) or \
            rest[:1] == ["groups"]:
        return value
    return None


def _v2_form(token: str | None, identity: Any) -> str | None:
    """``v2/<token uuid>/<secret>`` for a v1 secret, so it can be salted (spec 3.4)."""
    if not token or token.startswith("v2/") or identity is None:
        return None
    uuid = getattr(identity, "token_uuid", None)
    return f"v2/{uuid}/{token}" if uuid else None


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
    remote_client: Any = None,
    forwarder: Any = None,
    oidc_provider: Any = None,
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
    federation = None
    if deps is not None and forwarder is not None and remote_client is not None:
        from arvnode.api.federation import Federation

        federation = Federation(forwarder=forwarder, client=remote_client, config=config)
    root = ControllerResource(clock=clock, rng=rng, limits=limits, deps=deps,
                              federation=federation)
    if deps is not None:
        root.login = LoginHandler(deps, remote_client, oidc_provider)
        # LoginCluster satellites forward user get/list there (users.py).
        deps.resources["users"].remote_client = remote_client
    site = NodeSite(
        root, service="controller", clock=clock, rng=rng, metrics=metrics,
        management_token=management_token, health_checks=health_checks, idle_timeout=idle_timeout,
    )
    max_body = config.api.max_request_size if config is not None else ControllerRequest.max_body
    site.requestFactory = cast(
        "type[ControllerRequest]",
        type("ControllerRequest", (ControllerRequest,), {"max_body": max_body}))
    return site
