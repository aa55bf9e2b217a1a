"""The keepproxy HTTP API (spec arvados-wire.md §4) over arvnode's own volumes.

Routes: ``GET``/``HEAD /<locator>``, ``PUT /<md5>[+size...]``, ``POST /``,
``OPTIONS``, ``GET /index[/<prefix>]``. Uploads are decided at header time
through the streaming seam (:mod:`arvnode.http.streaming`) by
:mod:`arvnode.keep.put`, so a refused ``Expect: 100-continue`` upload never
sends its body; everything else is this module's leaf resource. This module
also holds what both share: authentication, permissions, headers, audit.

Decisions worth knowing (DESIGN.md §3a; write-ups in the module's tests):

* Every response, errors and 403s included, carries the CORS headers and
  ``Via: HTTP/1.1 keepproxy``; error bodies are ``message\\n`` in
  ``text/plain; charset=utf-8``.
* A request whose ``Via`` already names a keepproxy is answered **508 Loop
  Detected** (Arvados: 500 ``loop detected``). A loop is a configuration
  error; 508 tells it apart from a crash, and the Python SDK does not spend
  minutes retrying it (it retries 500).
* No or bad token: 403, never 401. A failing token store: 503 (an outage is
  not a refusal).
* A body whose md5 differs from the locator: 422 with both hashes (Arvados
  answers 5xx after retries; a 4xx is final and says what is wrong).
* ``PUT /<hash>+<size>`` and ``GET /<hash>`` without a size both work.
* Replicas: writable volumes in rendezvous order (by volume UUID), as many as
  ``X-Keep-Desired-Replicas`` (default ``default_replication``) and every
  class of ``X-Keep-Storage-Classes`` need; ``X-Keep-Storage-Classes-Confirmed``
  gives the true count per class and is sent on every upload answer. Fewer
  replicas than asked but at least one: 503, the stored ones are kept.
* Uploads are refused at header time with 503 + ``Retry-After: 1`` when the
  declared bytes of all uploads in flight would exceed ``max_inflight_bytes``.
* The anonymous token may read blocks signed for it but never upload; a
  token with restricted scopes, or an inactive user, may not upload either.
"""
from __future__ import annotations

import hmac
from typing import Any, Awaitable, Callable, Protocol, Sequence

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from arvnode.auth.identity import Identity
from arvnode.http.streaming import BodySink, StreamingRequest, plain_error
from arvnode.keep.handler import HandlerResource
from arvnode.keep.download import BadReplicas, RelayStats, find_replica, relay_replica
from arvnode.keep.locator import (
    Locator,
    LocatorError,
    SignatureError,
    SignatureExpired,
    SignatureMissing,
    parse_locator,
    sign_locator,
    strip_cluster_hints,
    verify_locator,
)
from arvnode.keep.put import Uploads
from arvnode.keep.upload import InflightBudget, UploadStats
from arvnode.keep.volume import IVolume
from arvnode.keep.wire import (
    CORS_HEADERS,
    FORBIDDEN,
    HASH_PATH_RE,
    INDEX_RE,
    OPTIONS_RE,
    KeepError,
    bearer_token,
    format_classes,
    send_index,
)
from arvnode.web.metrics import NodeMetrics

__all__ = ["KeepProxy", "KeepPermission", "Authenticate"]

Authenticate = Callable[[str | None], Awaitable[Identity | None]]

class KeepPermission(Protocol):
    """``Collections.KeepproxyPermission`` (read-only: the config is frozen)."""

    @property
    def user_download(self) -> bool: ...

    @property
    def user_upload(self) -> bool: ...

    @property
    def admin_download(self) -> bool: ...

    @property
    def admin_upload(self) -> bool: ...


class KeepProxy:
    """The keepproxy's behaviour; :func:`arvnode.keep.service.build_keepproxy_site`
    wires it into a site (``header_hook`` for uploads, ``resource`` for the rest).
    """

    log = Logger()

    def __init__(
        self,
        *,
        reactor: IReactorFromThreads,
        clock: IReactorTime,
        authenticate: Authenticate,
        volumes: Sequence[IVolume],
        signing_key: str,
        signing_ttl: float,
        blob_signing: bool,
        default_replication: int,
        permission: KeepPermission,
        system_root_token: str,
        metrics: NodeMetrics,
        hash_pool: ThreadPool,
        upload_window: int,
        max_inflight_bytes: int,
        idle_timeout: float,
        default_classes: Sequence[str] = (),
    ) -> None:
        # An instance attribute: as a class attribute, Logger's descriptor
        # would replace the namespace with the class name.
        self.audit = Logger(namespace="arvnode.keep.audit")
        self.reactor = reactor
        self.clock = clock
        self._authenticate = authenticate
        self.volumes = list(volumes)
        self.signing_key = signing_key
        self.signing_ttl = signing_ttl
        self._blob_signing = blob_signing
        self.default_replication = max(1, int(default_replication))
        # Where a PUT without X-Keep-Storage-Classes goes (spec 4.7: the
        # cluster's default classes); empty means any writable volume.
        self.default_classes = list(default_classes)
        self._permission = permission
        self._root_token = system_root_token
        self.metrics = metrics
        self.hash_pool = hash_pool
        # The window bounds what one upload holds: one batch in flight plus
        # one filling up.
        self.batch_size = max(64 * 1024, upload_window // 2)
        self.budget = InflightBudget(max_inflight_bytes)
        self.idle_timeout = idle_timeout
        self.upload_stats = UploadStats()
        self.relay_stats = RelayStats()
        self.bad_replicas = BadReplicas()
        self.uploads = Uploads(self)
        self.resource = HandlerResource(self, "keepproxy")
        # arvnode.remote.keep.RemoteKeep, set by the node wiring when
        # federation is possible: serves +R<cluster>- locators (spec 5.3).
        self.remote_keep: Any = None

    def header_hook(self, request: StreamingRequest) -> Awaitable[BodySink | None] | None:
        """The streaming seam's hook: uploads are decided at header time."""
        return self.uploads.header_hook(request)

    # -- shared helpers --------------------------------------------------------

    def common_headers(self, request: Any) -> None:
        for name, value in CORS_HEADERS.items():
            request.setHeader(name, value)
        proto = request.clientproto if request.clientproto.startswith(b"HTTP/") else b"HTTP/1.1"
        request.setHeader(b"Via", proto + b" keepproxy")

    def send_error(self, request: Any, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        """Plain-text error with the keepproxy headers (also used by the seam)."""
        if request.finished or request._disconnected:
            return
        self.common_headers(request)
        for name, value in (headers or {}).items():
            if value:
                request.setHeader(name.encode(), value.encode())
        plain_error(request, code, message)

    def loop_check(self, request: Any) -> None:
        for via in request.requestHeaders.getRawHeaders(b"via", []):
            if b" keepproxy" in via:
                raise KeepError(508, "loop detected")

    def now(self) -> float:
        return self.clock.seconds()

    async def identify(self, request: Any) -> tuple[str, Identity]:
        token = bearer_token(request)
        if token is None:
            raise KeepError(403, FORBIDDEN)
        try:
            identity = await self._authenticate(token)
        except CancelledError:
            raise
        except Exception as e:
            self.log.warn(
                "{request_id}: token check failed: {error}",
                request_id=getattr(request, "request_id", ""),
                error=e.__class__.__name__ + (f": {e}" if str(e) else ""),
            )
            if getattr(e, "cluster", None) and getattr(e, "message", None):
                # arvnode.remote.client.RemoteUnreachable/RemoteTimeout: the
                # token's home cluster could not be asked; say which one.
                raise KeepError(502, e.message) from e  # type: ignore[attr-defined]
            raise KeepError(503, "could not check the token now; try again") from e
        if identity is None:
            raise KeepError(403, FORBIDDEN)
        request.user_uuid = identity.user_uuid
        return token, identity

    def _may_download(self, identity: Identity) -> bool:
        # A deactivated user (locally, or by its home cluster through the
        # remote-token refresh) reads nothing more, whatever it was signed.
        if not identity.is_active and not identity.is_anonymous:
            return False
        p = self._permission
        return bool(p.admin_download if identity.is_admin else p.user_download)

    def may_upload(self, identity: Identity) -> bool:
        if identity.is_anonymous or not identity.is_active:
            return False
        if tuple(identity.scopes) != ("all",):
            return False
        p = self._permission
        return bool(p.admin_upload if identity.is_admin else p.user_upload)

    def _client(self, request: Any) -> str:
        peer = request.getClientAddress()
        return str(getattr(peer, "host", "-"))

    def audit_transfer(
        self,
        request: Any,
        op: str,
        locator: str,
        *,
        nbytes: int,
        outcome: str,
        replicas: int | None = None,
        classes: dict[str, int] | None = None,
    ) -> None:
        """One line per block transfer. Never a token or a signature."""
        self.audit.info(
            "keep {op} {locator} user={user} bytes={bytes} replicas={replicas}"
            " classes={classes} client={client} request_id={request_id} outcome={outcome}",
            op=op,
            locator=locator,
            user=getattr(request, "user_uuid", None) or "-",
            bytes=nbytes,
            replicas="-" if replicas is None else replicas,
            classes=format_classes(classes) if classes else "-",
            client=self._client(request),
            request_id=getattr(request, "request_id", ""),
            outcome=outcome,
        )

    async def handle(self, request: Any) -> None:
        try:
            await self._route(request)
        except KeepError as e:
            self.send_error(request, e.code, e.message, e.headers)

    async def _route(self, request: Any) -> None:
        self.common_headers(request)
        self.loop_check(request)
        method, path = request.method, request.path
        if method == b"OPTIONS":
            if not OPTIONS_RE.match(path):
                raise KeepError(400, "Bad request")
            request.setResponseCode(200)
            request.setHeader(b"Content-Length", b"0")
            request.finish()
            return
        index = INDEX_RE.match(path)
        if index is not None:
            if method != b"GET":
                raise KeepError(405, "method not allowed")
            await self._index(request, (index.group(1) or b"").decode())
            return
        if HASH_PATH_RE.match(path):
            if method not in (b"GET", b"HEAD"):
                raise KeepError(405, "method not allowed")
            await self._read(request)
            return
        raise KeepError(400, "Bad request")

    async def _index(self, request: Any, prefix: str) -> None:
        token = bearer_token(request)
        if (
            token is None
            or not self._root_token
            or not hmac.compare_digest(token.encode(), self._root_token.encode())
        ):
            raise KeepError(403, FORBIDDEN)
        await send_index(request, sorted(self.volumes, key=lambda v: v.uuid), prefix,
                         failed_status=502)

    async def _read(self, request: Any) -> None:
        head = request.method == b"HEAD"
        op = "head" if head else "get"
        text = request.path[1:].decode("ascii", "replace")
        try:
            locator = parse_locator(strip_cluster_hints(text))
        except LocatorError as e:
            raise KeepError(400, f"invalid locator: {e}") from e
        token, identity = await self.identify(request)
        if not self._may_download(identity):
            raise KeepError(403, FORBIDDEN)
        name = str(locator.without_hints())
        if locator.is_empty_block:
            self._sign_header(request, locator, token, 0)
            request.setResponseCode(200)
            request.setHeader(b"Content-Length", b"0")
            request.finish()
            self.audit_transfer(request, op, name, nbytes=0, outcome="ok")
            return
        if locator.remote is not None and locator.permission is None and self.remote_keep is not None:
            # A remote block (no local +A: spec 2.6 treats +A and +R as local).
            await self.remote_keep.serve(self, request, locator, token, identity)
            return
        if self._blob_signing:
            self._check_signature(locator, token)
        hash = locator.hash
        found = await find_replica(
            self.volumes, hash, self.bad_replicas, head=head, log=self.log,
            request_id=getattr(request, "request_id", ""),
        )
        if found.volume is not None:
            size, reader = found.size, found.reader
            if request.gone:
                if reader is not None:
                    reader.close()
                return
            self._sign_header(request, locator, token, size)
            request.setResponseCode(200)
            request.setHeader(b"Content-Length", str(size).encode())
            if reader is None:
                request.finish()
                self.audit_transfer(request, op, f"{hash}+{size}", nbytes=0, outcome="ok")
                return
            await self._stream(request, found.volume, reader, hash, size)
            return
        found_error, skipped_bad = found.errors, found.skipped_bad
        if found_error:
            raise KeepError(502, f"GET {name} failed: " + "; ".join(found_error))
        if skipped_bad:
            raise KeepError(502, "checksum mismatch in stored data")
        self.audit_transfer(request, op, name, nbytes=0, outcome="not-found")
        raise KeepError(404, "Block not found")

    def _check_signature(self, locator: Locator, token: str) -> None:
        try:
            verify_locator(locator, token, self.signing_key, self.signing_ttl, self.now())
        except SignatureExpired as e:
            raise KeepError(403, "expired signature") from e
        except SignatureMissing as e:
            if locator.remote is not None:
                raise KeepError(
                    403, "remote (+R) locators are not served by this keepproxy"
                ) from e
            raise KeepError(403, "missing signature") from e
        except SignatureError as e:
            raise KeepError(403, "invalid signature") from e

    def _sign_header(self, request: Any, locator: Locator, token: str, size: int) -> None:
        wanted = request.getHeader(b"x-keep-signature")
        if wanted is None or not self.signing_key:
            return
        kind = wanted.decode("latin-1").split(",", 1)[0].strip()
        if kind != "local":
            return
        signed = sign_locator(f"{locator.hash}+{size}", token, self.signing_key, self.signing_ttl, self.now())
        request.setHeader(b"X-Keep-Locator", signed.encode())

    async def _stream(self, request: Any, volume: IVolume, reader: Any, hash: str, size: int) -> None:
        relay = await relay_replica(self, request, volume, reader, hash, size)
        self.audit_transfer(request, "get", f"{hash}+{size}", nbytes=relay.bytes_sent,
                            outcome=relay.outcome)
