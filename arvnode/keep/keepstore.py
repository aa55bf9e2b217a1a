"""The keepstore HTTP API (spec arvados-wire.md §5) over a node's local volumes.

Why: a gateway node (arvnode's keepproxy, or Arvados' own) can then use this
node's disks and buckets as one of its keepstores (``Services.Keepstore.
InternalURLs``), so storage grows by adding nodes rather than by growing one.
It speaks keepstore's dialect, not keepproxy's:

* ``PUT /<hash>[+size...]`` needs no token (keepstore trusts its network;
  keepproxy is the gate for outside writes, spec §11 item 21). The body
  streams to one volume per storage class asked (``X-Keep-Storage-Classes``,
  else the cluster's default classes) in rendezvous order, with the same
  pipeline, md5 check and memory bound as the keepproxy's uploads; nothing is
  kept unless the md5 matched. Answers: 200 ``<hash>+<size>[+A...]\\n``
  signed for the request's token when there is one, ``X-Keep-Replicas-Stored``
  (sum of the volumes' Replication), ``X-Keep-Storage-Classes-Confirmed``;
  411 no ``Content-Length``; 400 size hint ≠ ``Content-Length`` or md5 ≠ hash;
  413 over 64 MiB; 507 ``insufficient storage`` when every volume tried was
  full (ENOSPC/EDQUOT, or no room for the block at open), 503 ``volume
  unavailable`` when no volume took it and some failed for another reason
  (spec §5.2; keepproxies do not retry a 507 on the same keepstore).
  ``X-Keep-Desired-Replicas`` is ignored, as keepstore does: the keepproxy
  in front decides how many keepstores.
* ``GET``/``HEAD /<locator>``: with ``Collections.BlobSigning`` the ``+A``
  signature is checked for the request's token (``Authorization: Bearer|
  OAuth2``, else ``?api_token=``), like keepstore: no token 401, expired 401,
  missing or invalid 400, malformed locator 400. Unlike keepstore, ``GET``
  without a size hint works (arvnode's upstream volume does not know sizes;
  the keepproxy already serves that superset). Reads stream with the md5
  checked on the way; a corrupt replica aborts the connection and is avoided
  from then on.
* ``GET /index[/<prefix>]`` and ``/index?prefix=``: ``SystemRootToken`` only
  (no token 401, another token 403), lines ``<hash>+<size> <mtime ns>`` and a
  blank line.
* ``Via``: requests from keepproxies carry ``Via: ... keepproxy``; that is
  this API's normal caller, so it is accepted, and the keepstore adds no
  ``Via`` of its own (it never forwards, so it cannot loop). A keepproxy
  whose upstream list wrongly names a keepproxy is stopped there, by that
  keepproxy's own loop check.
* Admin routes (keep-balance's, and arvnode's balancer's), all
  ``SystemRootToken`` only (no token 401, another 403), as Arvados' keepstore:
  ``GET /mounts`` (the local volumes: ``uuid``, ``device_id``, ``read_only``,
  ``allow_write``, ``allow_trash``, ``replication``, ``storage_classes``),
  ``GET /mounts/<uuid>/blocks[/<prefix>|?prefix=]`` (one mount's index),
  ``PUT /trash`` (a JSON list of ``{locator, block_mtime, mount_uuid}``
  replacing the pending one, worked on by ``BlobTrashConcurrency`` workers,
  :mod:`arvnode.keep.trash`), ``PUT /untrash/<locator>`` (200, or 404 when no
  volume had it in its trash), ``TOUCH /<locator>`` (200, 404 absent) and
  ``DELETE /<locator>`` (trash it where it is older than ``BlobSigningTTL``;
  200 if some volume has it, 404 if none, 405 with ``BlobTrash: false``).
  ``PUT /pull`` (keep-balance's pull lists: copy blocks from other
  keepstores, :mod:`arvnode.keep.pull`).
  ``+R`` remote reads are not served: 400 for a ``+R``-only locator.
"""
from __future__ import annotations

import hmac
import json
import socket
from typing import Any, Callable, Sequence

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from arvnode.http.streaming import BodySink, StreamingRequest, plain_error
from arvnode.keep.download import BadReplicas, RelayStats, find_replica, relay_replica
from arvnode.keep.locator import (
    EMPTY_BLOCK_HASH,
    MAX_BLOCK_SIZE,
    Locator,
    LocatorError,
    SignatureExpired,
    SignatureError,
    parse_locator,
    sign_locator,
    verify_locator,
)
from arvnode.keep.pull import Puller
from arvnode.keep.rendezvous import sort_services
from arvnode.keep.trash import TrashListWorker, TrashPolicy, parse_trash_list
from arvnode.keep.upload import (
    HashMismatch,
    InflightBudget,
    NoReplicas,
    UploadPipeline,
    UploadResult,
    UploadStats,
    abort_quietly,
    all_full,
    confirmed_classes,
    open_replicas,
)
from arvnode.keep.volume import IVolume
from arvnode.keep.volumes.upstream import UpstreamKeepstore
from arvnode.keep.handler import HandlerResource, HandlerSite
from arvnode.keep.wire import CORS_HEADERS, KeepError, format_classes, requested_classes, send_index
from arvnode.web.metrics import NodeMetrics

__all__ = ["Keepstore", "KeepstoreSite", "RoleError", "build_keepstore_site", "keepstore_role"]

#: Largest trash or pull list accepted (about 600,000 entries).
ADMIN_LIST_LIMIT = 64 << 20


def request_token(request: Any) -> str | None:
    """The token keepstore checks signatures with: ``Authorization: Bearer|OAuth2``,
    then ``?api_token=`` (spec §2.5), verbatim."""
    header = request.getHeader(b"authorization")
    if header:
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme in ("Bearer", "OAuth2") and token:
            return token
    values = request.args.get(b"api_token") if request.args else None
    if values and values[0]:
        return values[0].decode("latin-1")
    return None


class Keepstore:
    """The keepstore API's behaviour; :func:`build_keepstore_site` wires it."""

    log = Logger()

    def __init__(
        self,
        *,
        reactor: IReactorFromThreads,
        clock: IReactorTime,
        volumes: Sequence[IVolume],
        signing_key: str,
        signing_ttl: float,
        blob_signing: bool,
        default_classes: Sequence[str],
        system_root_token: str,
        metrics: NodeMetrics,
        hash_pool: ThreadPool,
        upload_window: int,
        max_inflight_bytes: int,
        idle_timeout: float,
        blob_trash: bool = True,
        trash_concurrency: int = 4,
        puller: Any = None,
        tls_policy: Any = None,
    ) -> None:
        self.reactor = reactor
        self.clock = clock
        self.volumes = list(volumes)
        self.signing_key = signing_key
        self.signing_ttl = signing_ttl
        self._blob_signing = blob_signing
        self._default_classes = list(default_classes) or ["default"]
        self._root_token = system_root_token
        self.metrics = metrics
        self.hash_pool = hash_pool
        self.batch_size = max(64 * 1024, upload_window // 2)
        self.budget = InflightBudget(max_inflight_bytes)
        self.idle_timeout = idle_timeout
        self.upload_stats = UploadStats()
        self.relay_stats = RelayStats()
        self.bad_replicas = BadReplicas()
        self.resource = HandlerResource(self, "keepstore")
        self.blob_trash = blob_trash
        self.trash_worker = TrashListWorker(
            volumes=self.trashable, policy=TrashPolicy(enabled=blob_trash, signing_ttl=signing_ttl),
            clock=clock, concurrency=trash_concurrency,
        )
        self._tls_policy = tls_policy
        #: Works on ``PUT /pull`` lists (arvnode/keep/pull.py).
        self.puller = puller if puller is not None else Puller(
            volumes=self.trashable, source=self._pull_source, clock=clock,
            concurrency=trash_concurrency,
        )

    def _pull_source(self, url: str) -> Any:
        """Another keepstore to pull from, with SystemRootToken and locators
        signed for it (as Arvados' pull worker does)."""
        return UpstreamKeepstore(
            "pull-source", url, reactor=self.reactor, clock=self.clock, token=self._root_token,
            signing_key=self.signing_key, signing_ttl=self.signing_ttl,
            tls_policy=self._tls_policy if url.startswith("https:") else None,
        )

    def trashable(self) -> list[IVolume]:
        """The mounts that may trash, touch and untrash: the writable ones,
        by UUID (Arvados' ``AllowTrash`` without ``AllowTrashWhenReadOnly``)."""
        return sorted((v for v in self.volumes if not v.read_only), key=lambda v: v.uuid)

    # -- shared --------------------------------------------------------------

    def send_error(self, request: Any, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        if request.finished or request._disconnected:
            return
        for name, value in CORS_HEADERS.items():
            request.setHeader(name, value)
        for key, text in (headers or {}).items():
            request.setHeader(key.encode(), text.encode())
        plain_error(request, code, message)

    def _now(self) -> float:
        return self.clock.seconds()

    # -- PUT (header time) ---------------------------------------------------

    def header_hook(self, request: StreamingRequest) -> Any:
        if request.method == b"PUT" and _block_path(request.path) is not None:
            return self._put_headers(request)
        if request.method == b"PUT" and request.path in (b"/trash", b"/pull"):
            return self._list_headers(request)
        return None

    async def _list_headers(self, request: StreamingRequest) -> BodySink | None:
        """``PUT /trash`` and ``PUT /pull``: the token is checked before
        the body is read, and the body (JSON, up to :data:`ADMIN_LIST_LIMIT`)
        is collected by a sink rather than the site's small buffer."""
        try:
            self._require_root(request)
            if (
                request.content_length_invalid
                or request.getHeader(b"content-length") is None
                or request.declared_length is None
            ):
                raise KeepError(411, "Length Required")
            if request.declared_length > ADMIN_LIST_LIMIT:
                raise KeepError(413, f"list larger than {ADMIN_LIST_LIMIT} bytes")
            if request.path == b"/pull" and self.puller is None:
                raise KeepError(501, "pull lists are not implemented by this keepstore")
        except KeepError as e:
            self.send_error(request, e.code, e.message, e.headers)
            return None
        return _ListSink(self, request)

    def list_received(self, request: StreamingRequest, body: bytes) -> None:
        """A whole ``PUT /trash`` or ``/pull`` body arrived: act, answer."""
        try:
            try:
                data = json.loads(body)
            except ValueError as e:
                raise KeepError(400, f"the body is not JSON: {e}") from e
            except RecursionError as e:  # "[[[[..." deeper than the parser's stack
                raise KeepError(400, "the body is not a trash or pull list (nested too deeply)") from e
            try:
                if request.path == b"/trash":
                    self.trash_worker.set_list(parse_trash_list(data))
                else:
                    self.puller.set_list(data)
            except ValueError as e:
                raise KeepError(400, str(e)) from e
        except KeepError as e:
            self.send_error(request, e.code, e.message, e.headers)
            return
        self._ok(request)

    def _ok(self, request: Any, body: bytes = b"", content_type: bytes = b"text/plain; charset=utf-8") -> None:
        if request.finished or request._disconnected:
            return
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(b"Content-Length", str(len(body)).encode())
        if body:
            request.write(body)
        request.finish()

    def _require_root(self, request: Any) -> None:
        """Admin routes: SystemRootToken only (no token 401, another 403)."""
        token = request_token(request)
        if token is None:
            raise KeepError(401, "no token provided in Authorization header")
        if not self._root_token or not hmac.compare_digest(token.encode(), self._root_token.encode()):
            raise KeepError(403, "Forbidden")

    async def _put_headers(self, request: StreamingRequest) -> BodySink | None:
        try:
            return await self._accept_put(request)
        except KeepError as e:
            self.send_error(request, e.code, e.message, e.headers)
            return None

    async def _accept_put(self, request: StreamingRequest) -> BodySink:
        text = _block_path(request.path)
        assert text is not None
        try:
            locator = parse_locator(text)
        except LocatorError as e:
            raise KeepError(400, "invalid locator") from e
        if (
            request.content_length_invalid
            or request.getHeader(b"content-length") is None
            or request.declared_length is None
        ):
            raise KeepError(411, "Length Required")
        length = request.declared_length
        if length > MAX_BLOCK_SIZE:
            raise KeepError(413, f"Exceeded maximum block size ({MAX_BLOCK_SIZE})")
        if locator.size is not None and locator.size != length:
            raise KeepError(400, "Locator size hint does not match Content-Length header")
        classes = requested_classes(request) or list(self._default_classes)
        if not self.budget.try_acquire(length):
            raise KeepError(503, "too many uploads in flight; try again", {"Retry-After": "1"})
        released: list[bool] = []

        def release(_: object = None) -> None:
            if not released:
                released.append(True)
                self.budget.release(length)

        request.notifyFinish().addBoth(release)
        try:
            hash = locator.hash
            ordered = sort_services(hash, self.volumes, key=lambda v: v.uuid)
            writable = [v for v in ordered if not v.read_only]
            errors: list[BaseException] = []
            replicas = await open_replicas(
                hash, length, writable, 1, classes, self.log,
                request_id=request.request_id, errors=errors,
            )
            if not replicas:
                raise self._no_volume(writable, classes, errors)
            if request.gone:
                for r in replicas:
                    abort_quietly(r.writer)
                raise CancelledError("client went away")
            pipeline = UploadPipeline(
                request=request,
                reactor=self.reactor,
                hash_pool=self.hash_pool,
                batch_size=self.batch_size,
                length=length,
                expected_hash=hash,
                replicas=replicas,
                stats=self.upload_stats,
            )
        except BaseException:
            release()
            raise
        pipeline.done.addBoth(self._put_done, request, text, classes)
        pipeline.done.addErrback(lambda f: self.log.failure("answering a keepstore PUT failed", f))
        return pipeline

    def _no_volume(
        self, writable: Sequence[IVolume], classes: Sequence[str], errors: Sequence[BaseException]
    ) -> KeepError:
        served = {c for v in writable for c in v.storage_classes}
        missing = [c for c in classes if c not in served]
        if missing:
            return KeepError(503, f"volume unavailable: no writable volume of class {', '.join(missing)}")
        if all_full(errors):
            return KeepError(507, "insufficient storage")
        return KeepError(503, "volume unavailable")

    def _put_done(
        self, result: UploadResult | Failure, request: StreamingRequest, text: str, classes: list[str]
    ) -> None:
        if isinstance(result, Failure):
            error = result.value
            if request.gone:
                return
            if isinstance(error, HashMismatch):
                self.send_error(
                    request, 400,
                    f"content hash {error.actual} did not match specified locator {text}",
                )
            elif isinstance(error, NoReplicas) and error.full:
                self.send_error(request, 507, "insufficient storage")
            else:
                self.send_error(request, 503, "volume unavailable")
            return
        self.metrics.bytes.labels(direction="in").inc(result.size)
        for v in result.committed:
            self.bad_replicas.discard(v.uuid, result.hash)
        if request.gone:
            return
        counts = {c: n for c, n in confirmed_classes(result.committed, []).items() if n > 0}
        token = request_token(request) or ""
        body = sign_locator(
            f"{result.hash}+{result.size}", token, self.signing_key, self.signing_ttl, self._now()
        ) + "\n"
        data = body.encode()
        for name, value in CORS_HEADERS.items():
            request.setHeader(name, value)
        request.setResponseCode(200)
        request.setHeader(b"X-Keep-Replicas-Stored", str(result.replicas).encode())
        request.setHeader(b"X-Keep-Storage-Classes-Confirmed", format_classes(counts).encode())
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Content-Length", str(len(data)).encode())
        request.write(data)
        request.finish()

    # -- everything else (render time) ---------------------------------------

    async def handle(self, request: Any) -> None:
        try:
            await self._route(request)
        except KeepError as e:
            self.send_error(request, e.code, e.message, e.headers)

    async def _route(self, request: Any) -> None:
        for name, value in CORS_HEADERS.items():
            request.setHeader(name, value)
        method, path = request.method, request.path
        if method == b"OPTIONS":
            request.setResponseCode(200)
            request.setHeader(b"Content-Length", b"0")
            request.finish()
            return
        if path == b"/index" or path.startswith(b"/index/"):
            if method != b"GET":
                raise KeepError(400, "Bad Request")
            prefix = path[len(b"/index/"):].decode("ascii", "replace") if path != b"/index" else ""
            if not prefix and request.args.get(b"prefix"):
                prefix = request.args[b"prefix"][0].decode("ascii", "replace")
            await self._index(request, prefix)
            return
        if path == b"/mounts" or path.startswith(b"/mounts/"):
            if method != b"GET":
                raise KeepError(400, "Bad Request")
            await self._mounts(request, path)
            return
        if path in (b"/trash", b"/pull"):
            raise KeepError(400, "Bad Request")  # PUT is taken at header time
        if path.startswith(b"/untrash/"):
            text = _block_path(path[len(b"/untrash"):])
            if method != b"PUT" or text is None:
                raise KeepError(400, "Bad Request")
            self._require_root(request)
            await self._untrash(request, text)
            return
        text = _block_path(path)
        if text is None:
            raise KeepError(400, "Bad Request")
        if method == b"TOUCH":
            self._require_root(request)
            await self._touch(request, text)
            return
        if method == b"DELETE":
            self._require_root(request)
            await self._delete(request, text)
            return
        if method not in (b"GET", b"HEAD"):
            raise KeepError(400, "Bad Request")
        await self._read(request, text)

    # -- admin ---------------------------------------------------------------

    @staticmethod
    def _hash_of(text: str) -> str:
        try:
            return parse_locator(text).hash
        except LocatorError as e:
            raise KeepError(400, "invalid locator") from e

    async def _mounts(self, request: Any, path: bytes) -> None:
        parts = path.split(b"/")  # ["", "mounts", uuid, "blocks", prefix?]
        if len(parts) == 2:
            self._require_root(request)
            mounts = [_mount_json(v) for v in sorted(self.volumes, key=lambda v: v.uuid)]
            self._ok(request, json.dumps(mounts).encode(), b"application/json")
            return
        if len(parts) not in (4, 5) or parts[3] != b"blocks":
            raise KeepError(400, "Bad Request")
        self._require_root(request)
        uuid = parts[2].decode("ascii", "replace")
        prefix = parts[4].decode("ascii", "replace") if len(parts) == 5 else ""
        if not prefix and request.args.get(b"prefix"):
            prefix = request.args[b"prefix"][0].decode("ascii", "replace")
        volume = next((v for v in self.volumes if v.uuid == uuid), None)
        if volume is None:
            raise KeepError(404, "Not Found")
        await self._write_index(request, [volume], prefix)

    async def _untrash(self, request: Any, text: str) -> None:
        """Every writable mount; 200 if one had it in its trash, else 404."""
        hash = self._hash_of(text)
        found, errors = False, []
        for v in self.trashable():
            try:
                found = await v.untrash(hash) or found
            except Exception as e:
                errors.append(f"{v.uuid}: {e}")
        if found:
            self._ok(request)
        elif errors:
            raise KeepError(503, "volume unavailable: " + "; ".join(errors))
        else:
            raise KeepError(404, "Not Found")

    async def _touch(self, request: Any, text: str) -> None:
        hash = self._hash_of(text)
        errors = []
        for v in self.trashable():
            try:
                if await v.touch(hash):
                    self._ok(request)
                    return
            except Exception as e:
                errors.append(f"{v.uuid}: {e}")
        if errors:
            raise KeepError(503, "volume unavailable: " + "; ".join(errors))
        raise KeepError(404, "Not Found")

    async def _delete(self, request: Any, text: str) -> None:
        """Trash the block on every writable mount where it is older than
        BlobSigningTTL (the volume checks); 200 if some mount has it (even
        when too new to trash, as Arvados answers), 404 if none does."""
        if not self.blob_trash:
            raise KeepError(405, "method not allowed")
        hash = self._hash_of(text)
        present, errors = False, []
        for v in self.trashable():
            try:
                if await v.stat(hash) is None:
                    continue
                present = True
                await v.trash(hash)
            except Exception as e:
                errors.append(f"{v.uuid}: {e}")
        if errors:
            raise KeepError(503, "volume unavailable: " + "; ".join(errors))
        if not present:
            raise KeepError(404, "Not Found")
        self._ok(request)

    async def _index(self, request: Any, prefix: str) -> None:
        self._require_root(request)
        await self._write_index(request, sorted(self.volumes, key=lambda v: v.uuid), prefix)

    async def _write_index(self, request: Any, volumes: Sequence[IVolume], prefix: str) -> None:
        await send_index(request, volumes, prefix, failed_status=503)

    def _check_signature(self, request: Any, locator: Locator) -> None:
        if not self._blob_signing:
            return
        token = request_token(request)
        if token is None:
            raise KeepError(401, "no token provided in Authorization header")
        if locator.permission is None and locator.remote is not None:
            raise KeepError(400, "remote (+R) locators are not served by this keepstore")
        try:
            verify_locator(locator, token, self.signing_key, self.signing_ttl, self._now())
        except SignatureExpired as e:
            raise KeepError(401, "expired signature") from e
        except SignatureError as e:
            raise KeepError(400, "invalid signature") from e

    async def _read(self, request: Any, text: str) -> None:
        head = request.method == b"HEAD"
        try:
            locator = parse_locator(text)
        except LocatorError as e:
            raise KeepError(400, "invalid locator") from e
        self._check_signature(request, locator)
        request.setHeader(b"Vary", b"X-Keep-Signature")
        hash = locator.hash
        if hash == EMPTY_BLOCK_HASH:
            request.setResponseCode(200)
            request.setHeader(b"Content-Length", b"0")
            request.finish()
            return
        found = await find_replica(
            self.volumes, hash, self.bad_replicas, head=head, log=self.log,
            request_id=getattr(request, "request_id", ""),
        )
        if found.volume is not None:
            size, reader = found.size, found.reader
            if request.finished or request._disconnected:
                if reader is not None:
                    reader.close()
                return
            request.setResponseCode(200)
            request.setHeader(b"Content-Length", str(size).encode())
            if reader is None:
                request.finish()
                return
            await self._stream(request, found.volume, reader, hash, size)
            return
        errors, skipped_bad = found.errors, found.skipped_bad
        if errors:
            raise KeepError(503, "volume unavailable: " + "; ".join(errors))
        if skipped_bad:
            raise KeepError(502, "checksum mismatch in stored data")
        raise KeepError(404, "Not Found")

    async def _stream(self, request: Any, volume: IVolume, reader: Any, hash: str, size: int) -> None:
        await relay_replica(self, request, volume, reader, hash, size)


def _block_path(path: bytes) -> str | None:
    """The locator text of ``/<locator>`` (also ``//<locator>``), else None."""
    if path.startswith(b"//"):
        path = path[1:]
    if len(path) < 33 or b"/" in path[1:]:
        return None
    try:
        text = path[1:].decode("ascii")
    except UnicodeDecodeError:
        return None
    if not all(c in "0123456789abcdef" for c in text[:32]):
        return None
    return text


def _mount_json(v: IVolume) -> dict[str, Any]:
    """One entry of ``GET /mounts``: Arvados' ``KeepMount`` fields, with both
    the older ``read_only`` and the newer ``allow_write``/``allow_trash``."""
    return {
        "uuid": v.uuid,
        "device_id": getattr(v, "device_id", v.uuid),
        "read_only": bool(v.read_only),
        "allow_write": not v.read_only,
        "allow_trash": not v.read_only,
        "replication": v.replication,
        "storage_classes": {c: True for c in v.storage_classes},
    }


class _ListSink:
    """Collects a ``PUT /trash`` or ``/pull`` body (already size-checked)."""

    def __init__(self, keepstore: Keepstore, request: StreamingRequest) -> None:
        self._keepstore = keepstore
        self._request = request
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._parts.append(bytes(data))

    def finish(self) -> None:
        self._keepstore.list_received(self._request, b"".join(self._parts))

    def fail(self, reason: Failure) -> None:
        self._parts = []


class KeepstoreSite(HandlerSite):
    """The keepstore API's site (errors carry the keepstore headers)."""

    keepstore: Keepstore


async def _ping() -> None:
    """``/_health/ping``: the keepstore answers, so it is alive."""


def build_keepstore_site(
    *,
    reactor: IReactorFromThreads,
    clock: IReactorTime,
    rng: Any,
    volumes: Sequence[IVolume],
    signing_key: str,
    signing_ttl: float,
    blob_signing: bool,
    default_classes: Sequence[str],
    system_root_token: str,
    management_token: str,
    metrics: NodeMetrics,
    hash_pool: ThreadPool,
    upload_window: int,
    max_inflight_bytes: int,
    idle_timeout: float,
    blob_trash: bool = True,
    trash_concurrency: int = 4,
    puller: Any = None,
    tls_policy: Any = None,
) -> KeepstoreSite:
    """The keepstore API as a site (``service="keepstore"``), over ``volumes``.

    Same collaborators as :func:`arvnode.keep.service.build_keepproxy_site`
    minus the token checks (keepstore has none beyond signatures and the
    system root token).
    """
    keepstore = Keepstore(
        reactor=reactor,
        clock=clock,
        volumes=volumes,
        signing_key=signing_key,
        signing_ttl=signing_ttl,
        blob_signing=blob_signing,
        default_classes=default_classes,
        system_root_token=system_root_token,
        metrics=metrics,
        hash_pool=hash_pool,
        upload_window=upload_window,
        max_inflight_bytes=max_inflight_bytes,
        idle_timeout=idle_timeout,
        blob_trash=blob_trash,
        trash_concurrency=trash_concurrency,
        puller=puller,
        tls_policy=tls_policy,
    )
    site = KeepstoreSite(
        keepstore.resource,
        header_hook=keepstore.header_hook,
        service="keepstore",
        clock=clock,
        rng=rng,
        metrics=metrics,
        management_token=management_token,
        health_checks={"ping": _ping},
        idle_timeout=idle_timeout,
    )
    site.handler = site.keepstore = keepstore
    return site


# -- which role a node plays ----------------------------------------------------


class RoleError(ValueError):
    """The config does not say unambiguously which keepstore this node is."""


def _is_local_host(host: str) -> bool:
    """True if ``host`` names an address of this machine (it can be bound).

    Arvados decides the same way (a listen on another host's address fails
    with EADDRNOTAVAIL). Port 0, so nothing already listening is disturbed.
    """
    if host in ("", "0.0.0.0", "::"):
        return True
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, _, _, _, sockaddr in infos:
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.bind((sockaddr[0], 0) + tuple(sockaddr[2:]))
            return True
        except OSError:
            continue
        finally:
            s.close()
    return False


def keepstore_role(
    services: Any,
    *,
    has_local_volumes: bool,
    own_url: str | None = None,
    is_local: Callable[[str], bool] = _is_local_host,
) -> tuple[Any, list[Any]]:
    """``(own, upstreams)`` from ``Services.Keepstore`` (a ``ServiceConfig``).

    The rule (docs/scale-out.md, "Which role a node plays"):

    * ``own_url`` given (the ``ARVADOS_SERVICE_INTERNAL_URL`` of Arvados):
      that entry is this node's keepstore; ``""`` means "none". An entry
      that is not in ``InternalURLs`` is an error.
    * Otherwise a node without local volumes is never a keepstore (it has
      nothing to serve); a node with volumes is the keepstore of the one
      entry whose listen address (``ListenURL``, else the URL) is on this
      host. None: not a keepstore. Several (one host running several
      keepstores, or a gateway with volumes beside keepstores on the same
      host): an error asking for ``own_url``.
    * Every other entry is an upstream keepstore of this node's keepproxy.
    """
    entries = list(services.internal_urls)
    if own_url is not None:
        if own_url == "":
            return None, entries
        for url in entries:
            if str(url).rstrip("/") == own_url.rstrip("/"):
                return url, [u for u in entries if u != url]
        raise RoleError(
            f"Services.Keepstore.InternalURLs has no entry {own_url!r} (the keepstore this node"
            " was told to serve)"
        )
    if not has_local_volumes:
        return None, entries
    local = [u for u in entries if is_local(services.listen_url(u).host)]
    if not local:
        return None, entries
    if len(local) > 1:
        raise RoleError(
            "Services.Keepstore.InternalURLs: several entries are on this host ("
            + ", ".join(str(u) for u in local)
            + "); say which one this node serves (ARVADOS_SERVICE_INTERNAL_URL), or \"\" for none"
        )
    own = local[0]
    return own, [u for u in entries if u != own]


def mounted_here(access_via_hosts: Sequence[Any], own: Any) -> bool:
    """Does this node mount a volume with these ``AccessViaHosts``?

    Empty: every node with volumes does (one node, or buckets shared by all).
    Otherwise only the keepstore whose InternalURL is listed (scheme, host
    and port compared; a trailing ``/`` does not matter).
    """
    if not access_via_hosts:
        return True
    if own is None:
        return False
    key = (own.scheme, own.host, own.port)
    return any((u.scheme, u.host, u.port) == key for u in access_via_hosts)
